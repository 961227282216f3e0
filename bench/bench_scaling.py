"""Benchmark: how the time per node of ``onnxpass run`` (the ``default`` pipeline) grows with the
number of nodes, from about 1,000 to 100,000 (issue 12, item 5).

Target (from the issue): microseconds per node flat within 1.5x over the sizes (largest / smallest).

The model is a synthetic deep transformer built directly with ``onnx.helper`` (no torch, fixed
seed), spelled as PyTorch's TorchScript exporter writes a BERT/ViT encoder at opset 14, so that the
default pipeline's passes fire on every layer: decomposed LayerNorm (ReduceMean, Sub, Pow 2,
ReduceMean, Add eps, Sqrt, Div, Mul gamma, Add beta), erf GELU (Div sqrt2, Erf, Add 1, Mul, Mul
0.5), attention (Q/K/V MatMul + bias Add, Reshape to (B, S, H, D) by a constant shape, Transpose,
MatMul, the scale as Div on the scores or Mul on Q and K^T on alternate layers, Softmax, MatMul,
Transpose, Reshape back by a Shape -> Gather -> Unsqueeze -> Concat shape computation), residual
Adds, Constant nodes for every scalar, as the exporter writes them. Hidden size 32, 4 heads, MLP
128: the weights are small, so what is measured is the cost per node. The number of layers is
picked so that the model has about the requested number of nodes (the table shows the real
counts).

For each size the model is saved to a temp folder, then, in this process, each stage of
``Pipeline(SPEC)`` (default ``default``) is timed: ``load_graph`` from the saved file (load +
checker), the runner's initial dead-code removal and shape inference ("prep"), every pass (its
``PassStat.seconds``: the pass itself and, after a pass that changed something, the runner's
dead-code removal, ``to_model``, skeleton, onnx.checker, loadability check and shape inference),
and ``save``. Columns in parentheses split that up again, summed over prep and the passes: shape
inference, the checker, the loadability check, ``to_model``, ``skeleton``, ``remove_dead``, opset
conversion (which contains a ``to_model`` and a shape inference of its own, so the parentheses
overlap), and the garbage collector's pauses (load, passes and save). The table shows
microseconds per input node for the total and the largest stages, and the ratio of the largest
to the smallest total per-node time against the 1.5x target.

The clock is this process's CPU time by default (``--clock wall`` for elapsed time): on a
shared machine elapsed time measures the neighbours too. Even CPU time moves with a busy
neighbour (shared caches and cores), so the sizes run in ``--repeat`` rounds (default 3; sizes
above 50,000 nodes in the first only) and the table keeps each size's fastest run; an untimed
warm-up run first takes the one-time costs (imports, ONNX's schema tables) off the smallest size.

The smallest size is also checked: the fused op counts (LayerNormalization, Gelu, Attention, ...)
are printed, and the output is loaded and run in ONNX Runtime.

    python bench/bench_scaling.py                              # 1k, 3k, 10k, 30k, 100k nodes
    python bench/bench_scaling.py --sizes 1000,3000,10000      # a quicker look
    python bench/bench_scaling.py --passes noop,cse,canonical,layernorm,gelu,attention
    python bench/bench_scaling.py --sizes 1000,10000 --profile 10000  # + cProfile, top 25
    python bench/bench_scaling.py --clock wall --repeat 5      # elapsed time, fastest of 5

The ``fold`` pass is being rewritten (issue 12, item 1); ``--no-fold`` measures the rest of the
default pipeline, the same list without it: ``noop,cse,canonical,tile,const_slice,shape_of,
layernorm,rmsnorm,gelu,rotary,attention,masked_softmax=std,add_bias_transpose,matmul2d,dce``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import os
import pstats
import shlex
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TARGET_RATIO = 1.5
DEFAULT_SIZES = "1000,3000,10000,30000,100000"
SEED = 0
BATCH, SEQ, HIDDEN, HEADS, FFN = 2, 16, 32, 4, 128
HEAD_DIM = HIDDEN // HEADS
NO_FOLD = ("noop,cse,canonical,tile,const_slice,shape_of,layernorm,rmsnorm,gelu,rotary,attention,"
           "masked_softmax=std,add_bias_transpose,matmul2d,dce")
FUSED_OPS = ("LayerNormalization", "Gelu", "Attention", "Gemm", "MatMul", "Softmax", "Erf",
             "ReduceMean", "Shape", "Constant")
TOP_STAGES = 5  # per-stage columns besides load, prep, save and total
INNER = ("shape inference", "onnx.checker", "check_loadable", "to_model", "skeleton", "remove_dead",
         "opset convert", "gc")  # the "of which" columns
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
_clock: list[Callable[[], float]] = [time.process_time]


def clock() -> float:
    """The clock every stage is timed with (``--clock``; the runner's PassStat too)."""
    return _clock[0]()


# ---- the model ----------------------------------------------------------------------------------

class _Layer:
    """Writes one encoder layer's nodes under ``/layers.{i}/``, as TorchScript names them."""

    def __init__(self, builder: _Builder, i: int) -> None:
        self.b = builder
        self.prefix = f"/layers.{i}"
        self.params = f"layers.{i}"
        self.counts: Counter[str] = Counter()

    def node(self, scope: str, op: str, inputs: list[str], **attrs: Any) -> str:
        k = self.counts[scope + op]
        self.counts[scope + op] += 1
        name = f"{self.prefix}/{scope}{op}" + (f"_{k}" if k else "")
        out = f"{name}_output_0"
        self.b.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def const(self, scope: str, value: Any, dtype: Any = np.float32) -> str:
        """A Constant node, as TorchScript writes every scalar and shape."""
        k = self.counts[scope + "Constant"]
        self.counts[scope + "Constant"] += 1
        name = f"{self.prefix}/{scope}Constant" + (f"_{k}" if k else "")
        out = f"{name}_output_0"
        t = numpy_helper.from_array(np.asarray(value, dtype=dtype))
        self.b.nodes.append(helper.make_node("Constant", [], [out], name=name, value=t))
        return out

    def layernorm(self, scope: str, x: str) -> str:
        mean = self.node(scope, "ReduceMean", [x], axes=[-1])
        d = self.node(scope, "Sub", [x, mean])
        sq = self.node(scope, "Pow", [d, self.const(scope, 2.0)])
        var = self.node(scope, "ReduceMean", [sq], axes=[-1])
        ve = self.node(scope, "Add", [var, self.const(scope, 1e-5)])
        std = self.node(scope, "Sqrt", [ve])
        n = self.node(scope, "Div", [d, std])
        p = f"{self.params}.{scope.strip('/')}"
        g = self.node(scope, "Mul", [n, self.b.weight(f"{p}.weight", (HIDDEN,), 1.0)])
        return self.node(scope, "Add", [g, self.b.weight(f"{p}.bias", (HIDDEN,))])

    def linear(self, scope: str, x: str, n_in: int, n_out: int) -> str:
        p = f"{self.params}.{scope.strip('/').replace('/', '.')}"
        w = self.b.weight(f"onnx::MatMul_{self.b.fresh()}", (n_in, n_out))
        y = self.node(scope, "MatMul", [x, w])
        return self.node(scope, "Add", [self.b.weight(f"{p}.bias", (n_out,)), y])

    def attention(self, x: str, scaled_scores: bool) -> str:
        s = "attention/"
        dims = []
        for axis in (0, 1):  # B and S, for the Reshape back (the head split's shape is constant)
            shape = self.node(s, "Shape", [x])
            dims.append(self.node(s, "Gather", [shape, self.const(s, axis, np.int64)], axis=0))
        split = self.const(s, [BATCH, SEQ, HEADS, HEAD_DIM], np.int64)
        heads = {}
        for proj, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            y = self.linear(f"{s}{proj}_proj/", x, HIDDEN, HIDDEN)
            r = self.node(s, "Reshape", [y, split], allowzero=0)
            heads[proj] = self.node(s, "Transpose", [r], perm=perm)
        q, kt, v = heads["q"], heads["k"], heads["v"]
        if scaled_scores:  # BERT: (Q K^T) / sqrt(d)
            scores = self.node(s, "MatMul", [q, kt])
            scores = self.node(s, "Div", [scores, self.const(s, np.sqrt(HEAD_DIM))])
        else:  # scaled_dot_product_attention: sqrt(scale) on Q and on K^T
            root = HEAD_DIM ** -0.25
            q = self.node(s, "Mul", [q, self.const(s, root)])
            kt = self.node(s, "Mul", [kt, self.const(s, root)])
            scores = self.node(s, "MatMul", [q, kt])
        p = self.node(s, "Softmax", [scores], axis=-1)
        ctx = self.node(s, "MatMul", [p, v])
        ctx = self.node(s, "Transpose", [ctx], perm=[0, 2, 1, 3])
        shape = [self.node(s, "Unsqueeze", [d, self.const(s, [0], np.int64)]) for d in dims]
        shape = self.node(s, "Concat", [*shape, self.const(s, [HIDDEN], np.int64)], axis=0)
        merged = self.node(s, "Reshape", [ctx, shape], allowzero=0)
        return self.linear(f"{s}o_proj/", merged, HIDDEN, HIDDEN)

    def gelu(self, x: str) -> str:
        s = "mlp/activation_fn/"
        e = self.node(s, "Erf", [self.node(s, "Div", [x, self.const(s, np.sqrt(2.0))])])
        y = self.node(s, "Mul", [x, self.node(s, "Add", [e, self.const(s, 1.0)])])
        return self.node(s, "Mul", [y, self.const(s, 0.5)])

    def build(self, x: str, i: int) -> str:
        h = self.layernorm("layernorm_before/", x)
        h = self.node("", "Add", [self.attention(h, scaled_scores=i % 2 == 0), x])
        m = self.linear("mlp/fc1/", self.layernorm("layernorm_after/", h), HIDDEN, FFN)
        m = self.linear("mlp/fc2/", self.gelu(m), FFN, HIDDEN)
        return self.node("", "Add", [m, h])


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self._count = 0

    def fresh(self) -> int:
        self._count += 1
        return self._count

    def weight(self, name: str, shape: tuple[int, ...], center: float = 0.0) -> str:
        scale = 1.0 / np.sqrt(shape[0]) if len(shape) == 2 else 0.02
        w = (center + scale * self.rng.standard_normal(shape)).astype(np.float32)
        self.inits.append(numpy_helper.from_array(w, name))
        return name


def layer_nodes() -> int:
    """Nodes one encoder layer has."""
    b = _Builder(SEED)
    _Layer(b, 0).build("x", 0)
    return len(b.nodes)


def transformer(layers: int, seed: int = SEED) -> onnx.ModelProto:
    """A ``layers``-deep encoder on x: (BATCH, SEQ, HIDDEN) float32, opset 14."""
    b = _Builder(seed)
    x = "hidden_states"
    for i in range(layers):
        x = _Layer(b, i).build(x, i)
    b.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="/Identity"))
    graph = helper.make_graph(
        b.nodes, "main_graph",
        [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [BATCH, SEQ, HIDDEN])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                       [BATCH, SEQ, HIDDEN])],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)],
                              producer_name="pytorch", producer_version="2.13.0")
    model.ir_version = 7
    return model


def layers_for(nodes: int) -> int:
    return max(1, round((nodes - 1) / layer_nodes()))


# ---- timing -------------------------------------------------------------------------------------

class Stopwatch:
    """Seconds spent in wrapped functions, by label (a call inside another of the same label is
    not counted twice)."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self._depth: Counter[str] = Counter()

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._depth[label] += 1
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[label] -= 1
                if not self._depth[label]:
                    self.seconds[label] += clock() - t0
        return timed


@contextlib.contextmanager
def gc_timed(watch: Stopwatch) -> Iterator[None]:
    """Time the cyclic garbage collector's pauses (as "gc", all generations)."""
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(clock())
        elif started:
            watch.seconds["gc"] += clock() - started.pop()

    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)


@contextlib.contextmanager
def instrumented(watch: Stopwatch) -> Iterator[None]:
    """Time, inside the passes, the runner's steps after a pass (the names ``manager`` calls),
    every shape inference and every opset conversion. A name the code no longer has is left
    out (its column then shows nothing)."""
    from onnxpass import graph as graph_mod
    from onnxpass.passes import base, manager

    targets = [
        (graph_mod.Graph, "refresh_types", "shape inference"),
        (graph_mod.Graph, "to_model", "to_model"),
        (graph_mod.Graph, "remove_dead", "remove_dead"),
        (manager, "skeleton", "skeleton"),
        (manager, "check_loadable", "check_loadable"),
        (onnx.checker, "check_model", "onnx.checker"),
        (base, "convert_opset", "opset convert"),
    ]
    patches: list[tuple[Any, str, Any]] = [(obj, name, watch.wrap(label, getattr(obj, name)))
                                           for obj, name, label in targets if hasattr(obj, name)]
    # The runner times its passes with time.perf_counter: give it this benchmark's clock.
    clocked = {k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    patches.append((manager, "time", types.SimpleNamespace(**{**clocked, "perf_counter": clock})))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, fn in patches:
            setattr(obj, name, fn)
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


def run_size(nodes_wanted: int, spec: str, folder: Path, profile: bool = False
             ) -> dict[str, Any]:
    from onnxpass.passes.manager import Pipeline, load_graph

    layers = layers_for(nodes_wanted)
    model = transformer(layers)
    nodes = len(model.graph.node)
    src, out = folder / f"deep_{nodes}.onnx", folder / f"deep_{nodes}.out.onnx"
    onnx.save(model, str(src))
    del model
    gc.collect()

    pipeline = Pipeline(spec)
    watch = Stopwatch()
    prof = cProfile.Profile() if profile else None
    times: dict[str, float] = {}
    with instrumented(watch), gc_timed(watch):
        if prof:
            prof.enable()
        t0 = clock()
        graph = load_graph(src)
        times["load"] = clock() - t0
        inside_load = dict(watch.seconds)
        t0 = clock()
        result = pipeline.run(graph)
        run_s = clock() - t0
        after_run = dict(watch.seconds)
        t0 = clock()
        result.save(out)
        times["save"] = clock() - t0
        if prof:
            prof.disable()
    passes: dict[str, float] = {}
    for s in result.stats:
        passes[s.name] = passes.get(s.name, 0.0) + s.seconds
    times["prep"] = run_s - sum(passes.values())
    inner = {k: v - inside_load.get(k, 0.0) for k, v in after_run.items() if k != "gc"}
    inner["gc"] = watch.seconds["gc"]  # load, passes and save
    return {"layers": layers, "nodes": nodes, "times": times, "passes": passes, "inner": inner,
            "total": run_s + times["load"] + times["save"], "result": result, "out": out,
            "rounds": result.rounds, "nodes_after": len(result.graph.nodes), "prof": prof}


# ---- checks -------------------------------------------------------------------------------------

def check_output(path: Path, nodes_before: int) -> bool:
    import onnxruntime as ort

    m = onnx.load(str(path))
    counts = Counter(n.op_type for n in m.graph.node)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    print(f"check ({nodes_before} nodes in, {len(m.graph.node)} out, opset {opset}): " +
          ", ".join(f"{op} {counts.get(op, 0)}" for op in FUSED_OPS))
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(SEED).standard_normal((BATCH, SEQ, HIDDEN)).astype(np.float32)
        y = sess.run(None, {"hidden_states": x})[0]
        print(f"check: ONNX Runtime {ort.__version__} loads and runs the output "
              f"(output {list(y.shape)}, finite: {bool(np.isfinite(y).all())})")
        return bool(np.isfinite(y).all())
    except Exception as e:  # reported, and the run fails
        print(f"check: ONNX Runtime refuses the output: {str(e).splitlines()[0]}")
        return False


# ---- main ---------------------------------------------------------------------------------------

def _us(seconds: float, nodes: int) -> str:
    return f"{1e6 * seconds / nodes:.1f}"


def print_table(rows: list[dict[str, Any]]) -> float:
    # The largest stages over all sizes (by their share at the largest size).
    big = rows[-1]
    stages = sorted(big["passes"], key=lambda k: -big["passes"][k])[:TOP_STAGES]
    inner = [k for k in INNER if any(k in r["inner"] for r in rows)]
    header = ["layers", "nodes", "after", "rounds", "total s", "us/node", "load", "prep",
              *stages, "other passes", "save", *(f"({k})" for k in inner)]
    table = [header]
    for r in rows:
        n = r["nodes"]
        other = sum(v for k, v in r["passes"].items() if k not in stages)
        table.append([str(r["layers"]), str(n), str(r["nodes_after"]), str(r["rounds"]),
                      f"{r['total']:.2f}", _us(r["total"], n), _us(r["times"]["load"], n),
                      _us(r["times"]["prep"], n),
                      *(_us(r["passes"].get(k, 0.0), n) for k in stages), _us(other, n),
                      _us(r["times"]["save"], n),
                      *(_us(r["inner"].get(k, 0.0), n) for k in inner)])
    widths = [max(len(t[i]) for t in table) for i in range(len(header))]
    print("\nmicroseconds per input node, by stage. In parentheses, of which (summed over prep and "
          "the passes; gc: the collector's pauses in load, passes and save)")
    for i, t in enumerate(table):
        print("  ".join(c.rjust(w) for c, w in zip(t, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    per_node = [r["total"] / r["nodes"] for r in rows]
    return max(per_node) / min(per_node)


def print_profile(prof: cProfile.Profile, nodes: int, top: int) -> None:
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    print(f"\n--- cProfile at {nodes} nodes (load, pipeline, save), top {top} by tottime ---")
    print((text[text.index("   ncalls"):] if "   ncalls" in text else text).rstrip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES,
                    help=f"approximate node counts, comma-separated (default {DEFAULT_SIZES})")
    ap.add_argument("--passes", default="default", help="pipeline spec (default: default)")
    ap.add_argument("--no-fold", action="store_true",
                    help="the default pipeline without the fold pass")
    ap.add_argument("--profile", type=int, metavar="N",
                    help="also cProfile one run at size N (untimed), top --top by tottime")
    ap.add_argument("--top", type=int, default=25, help="rows of the profile (default 25)")
    ap.add_argument("--repeat", "-n", type=int, default=3,
                    help="runs per size up to --once-above nodes; the table shows the fastest "
                         "(default 3)")
    ap.add_argument("--once-above", type=int, default=50000, metavar="NODES",
                    help="sizes above this run once (default 50000)")
    ap.add_argument("--clock", choices=CLOCKS, default="cpu",
                    help="cpu: this process's CPU time (default: on a shared machine wall time "
                         "measures the neighbours too); wall: elapsed time")
    ap.add_argument("--dir", help="folder for the models (default: a temp folder, removed)")
    args = ap.parse_args(argv)

    _clock[0] = CLOCKS[args.clock]
    spec = NO_FOLD if args.no_fold else args.passes
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    argv_shown = sys.argv[1:] if argv is None else argv
    print("command: python bench/bench_scaling.py " + " ".join(shlex.quote(a) for a in argv_shown))
    print(f"pipeline: {spec}; model: {layer_nodes()} nodes per layer (+1), hidden {HIDDEN}, "
          f"{HEADS} heads, MLP {FFN}, input ({BATCH}, {SEQ}, {HIDDEN}), opset 14, seed {SEED}; "
          f"clock: {args.clock}, fastest of {args.repeat} (1 above {args.once_above} nodes), "
          f"after an untimed warm-up run; python {sys.version.split()[0]}, "
          f"onnx {onnx.__version__}, {os.cpu_count()} CPUs")

    ok = True
    with contextlib.ExitStack() as stack:
        folder = Path(args.dir) if args.dir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="onnxpass-scaling-")))
        folder.mkdir(parents=True, exist_ok=True)
        # One-time costs (imports, ONNX's schema tables, the first shape inference) would
        # otherwise land on the smallest size.
        run_size(layer_nodes() * 2, spec, folder)["out"].unlink(missing_ok=True)
        best: dict[int, dict[str, Any]] = {}
        # Rounds over all sizes (not each size's repeats in a row): a neighbour's load that
        # comes and goes hits every size alike, and the fastest run of each is kept.
        for rep in range(args.repeat):
            for n in sizes:
                if rep and n > args.once_above:
                    continue
                r = run_size(n, spec, folder)
                print(f"[{rep + 1}] size {n}: {r['layers']} layers, {r['nodes']} nodes -> "
                      f"{r['nodes_after']}, {r['total']:.2f} s "
                      f"({1e6 * r['total'] / r['nodes']:.1f} us/node)"
                      + (f"; notes: {'; '.join(r['result'].notes)}"
                         if r["result"].notes and rep == 0 else ""), flush=True)
                if n == sizes[0] and rep == 0:
                    ok &= check_output(r["out"], r["nodes"])
                r["out"].unlink(missing_ok=True)
                r["result"] = None
                if n not in best or r["total"] < best[n]["total"]:
                    best[n] = r
                gc.collect()
        rows = [best[n] for n in sizes]
        if args.profile:
            r = run_size(args.profile, spec, folder, profile=True)
            print_profile(r["prof"], r["nodes"], args.top)
            r["out"].unlink(missing_ok=True)
    ratio = print_table(rows)
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(f"\n{args.clock} time per node, largest / smallest: {ratio:.2f}x vs target "
          f"<= {TARGET_RATIO}x: {verdict} target")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
