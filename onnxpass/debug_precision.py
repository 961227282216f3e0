"""``onnxpass debug precision MODEL --tol T``: which nodes must stay float32.

The float16 model (the ``fp16`` pass, form ``mixed`` or ``all``) runs against the float32 model on
the same feeds; an output is within T when every element satisfies
``|h - f| <= T * |f| + T * max|f|`` (:func:`onnxpass.verify.scaled_stats`: atol at the output's
scale, the max over finite elements; NaNs must sit where the float32 model has them).

Search: while the model fails, binary-search the shortest prefix (in topological order) of the
nodes not yet pinned whose pinning makes it pass; the prefix's last node is needed, so pin it and
go on. Each pin costs about log2(n) runs. The result is a pin list the fp16 pass reads
(``--pins PATH``, ``fp16:pins=PATH``, ``Float16(pins=PATH)`` or ``ONNXPASS_FP16_PINS``): one
``node:NAME`` a line.

``dtype="bf16"`` (``--dtype bf16``) does the same for bfloat16 and the ``bf16`` pass.

``dtype="int8"`` or ``"fp8"`` (``--dtype int8``) searches the layers the ``int8``/``fp8`` pass
quantizes (Conv, MatMul, Gemm, residual Add; :mod:`onnxpass.passes.quantize`) for the ones to
leave unquantized, as LeViT's deployment bisected with ``polygraphy debug precision``. The
activation ranges are calibrated once (``calibration``: the pass's data, ``method`` its
calibrator) and every candidate reuses them; candidates run in ONNX Runtime as written (its
Q/DQ nodes compute the rounding exactly), or in TensorRT with ``runner="tensorrt"``. The pin
list is the one the pass reads (``--pins``).

Runners (``runner=``): ``onnxruntime`` (default) runs :func:`simulate_float16` of the float16
graph: ORT's CPU provider lacks float16 kernels for most ops, runs them in float32 and keeps
float32 values along chains of such nodes, so the float16 graph itself would look far more
accurate than a float16 engine is. ``tensorrt`` (where installed) builds a strongly typed engine
of each candidate graph, whose float16 types TensorRT then follows, and runs it: slower (one
build per run), and what will be deployed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxpass.api import rewrite
from onnxpass.errors import OnnxpassError
from onnxpass.graph import Graph
from onnxpass.passes.base import Pass
from onnxpass.passes.lowprec import BFloat16, Float16, LowPrecision, converted_outputs
from onnxpass.passes.pins import node_key
from onnxpass.passes.quantize import Fp8, Int8, Plan, Quantize, quantized_ops
from onnxpass.verify import random_inputs, run, scaled_stats

if TYPE_CHECKING:
    from onnxpass.calibration import CalibrationData


@dataclass
class PrecisionResult:
    pins: list[str]
    ok: bool                      # within tol with the pins
    runs: int
    worst: dict[str, float] = field(default_factory=dict)  # per output, max err / max |ref|

    def pin_file(self, tol: float, form: str, dtype: str = "fp16") -> str:
        what = f"layers left unquantized by {dtype}" if dtype in QUANTIZED \
            else f"float32 pins for {dtype}={form}"
        head = f"# onnxpass debug precision: {what}, tol {tol:g}\n"
        return head + "".join(f"node:{p}\n" for p in self.pins)


def simulate_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 model computing what the float16 (or bfloat16) ``model`` computes when every
    node rounds its output to its type: each op runs in float32, each float16 or bfloat16 value
    goes through Cast(to its type) -> Cast(to float32), such initializers and Constants are
    widened exactly. ONNX Runtime keeps such Cast pairs; it does not keep the float16 values of
    a float16 graph on CPU, and has no bfloat16 arithmetic there at all."""
    F, REDUCED = onnx.TensorProto.FLOAT, (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    m = onnx.shape_inference.infer_shapes(model)
    half = {v.name: t for v in [*m.graph.value_info, *m.graph.output, *m.graph.input]
            if (t := v.type.tensor_type.elem_type) in REDUCED}
    for t in m.graph.initializer:
        if t.data_type in REDUCED:
            t.CopyFrom(onnx.numpy_helper.from_array(
                onnx.numpy_helper.to_array(t).astype(np.float32), t.name))
    nodes = []
    for n in m.graph.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i in REDUCED:
                a.i = F
            if n.op_type == "Constant" and a.name == "value" and a.t.data_type in REDUCED:
                a.t.CopyFrom(onnx.numpy_helper.from_array(
                    onnx.numpy_helper.to_array(a.t).astype(np.float32)))
        rounded = [o for o in n.output if o in half]
        for o in rounded:
            n.output[list(n.output).index(o)] = o + "__sim"
        nodes.append(n)
        for o in rounded:
            nodes.append(onnx.helper.make_node("Cast", [o + "__sim"], [o + "__simh"],
                                               to=half[o]))
            nodes.append(onnx.helper.make_node("Cast", [o + "__simh"], [o], to=F))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.value_info[:]
    for v in [*m.graph.input, *m.graph.output]:
        if v.type.tensor_type.elem_type in REDUCED:
            v.type.tensor_type.elem_type = F
    return m


def convertible(model: onnx.ModelProto, dtype: str = "fp16") -> list[str]:
    """Keys (name, or first output) of the nodes the ``dtype`` pass would convert, in order."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = Graph(work)
    g.remove_dead()  # as the pipeline runner does before the pass
    g.refresh_types()
    target = pass_class(dtype).target
    return [node_key(n) for n in g.toposort() if converted_outputs(g, n, target)]


DTYPES: dict[str, type[LowPrecision]] = {"fp16": Float16, "bf16": BFloat16}
QUANTIZED: dict[str, type[Quantize]] = {"int8": Int8, "fp8": Fp8}


def pass_class(dtype: str) -> type[LowPrecision]:
    if dtype not in DTYPES:
        raise OnnxpassError(f"dtype {dtype!r}: expected one of {', '.join([*DTYPES, *QUANTIZED])}")
    return DTYPES[dtype]


def quantized_layers(model: onnx.ModelProto, dtype: str) -> tuple[list[str], Plan]:
    """Keys of the layers the ``dtype`` (int8 or fp8) pass quantizes, in order, and its plan."""
    found = quantized_ops(model)
    if found:
        raise OnnxpassError(f"--dtype {dtype}: the model is quantized already ("
                            f"{', '.join(f'{k} {op}' for op, k in sorted(found.items()))}); give "
                            f"debug precision the float model")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = Graph(work)
    g.remove_dead()
    g.refresh_types()
    plan = QUANTIZED[dtype]().plan(g)
    order = {id(n): k for k, n in enumerate(g.toposort())}
    return [node_key(n) for n in sorted(plan.layers, key=lambda n: order[id(n)])], plan


Feeds = dict[str, np.ndarray]
RUNNERS = ("onnxruntime", "tensorrt")


def ort_runner(half: onnx.ModelProto, feeds: Feeds) -> Feeds:
    return run(simulate_float16(half), feeds)


def trt_runner(half: onnx.ModelProto, feeds: Feeds) -> Feeds:
    """Build a strongly typed TensorRT engine of ``half`` for the feeds' shapes and run it."""
    import tempfile

    from onnxpass.trt_build.build import BuildOptions, build
    from onnxpass.trt_build.engine import Engine

    inputs = {i.name for i in half.graph.input}
    shapes = [f"{k}:{'x'.join(map(str, v.shape))}" for k, v in feeds.items() if k in inputs]
    with tempfile.TemporaryDirectory(prefix="onnxpass-precision-") as tmp:
        src, engine = Path(tmp) / "candidate.onnx", Path(tmp) / "candidate.plan"
        onnx.save(half, src)
        build(str(src), str(engine), BuildOptions(shapes=shapes, strongly_typed=True),
              log=lambda _: None)
        return Engine(str(engine)).infer(feeds)


def find_pins(model: onnx.ModelProto, tol: float, feeds: Feeds | None = None,
              form: str = "mixed", progress: Callable[[str], None] | None = None,
              runner: str = "onnxruntime", dtype: str = "fp16", *,
              calibration: str | CalibrationData | None = None, method: str = "max"
              ) -> PrecisionResult:
    """The pins for ``dtype`` (module doc); ``calibration`` (a source or the data made from
    one) and ``method`` for int8/fp8."""
    if dtype in QUANTIZED:
        candidates, plan = quantized_layers(model, dtype)
        if not calibration:
            raise OnnxpassError(f"debug precision --dtype {dtype} needs calibration data: "
                                "--calibration DIR_OR_NPZ (or random)")
        from onnxpass.calibration import calibrate, calibration_data

        data = calibration_data(calibration, model) if isinstance(calibration, str) \
            else calibration
        amax = calibrate(model, plan.activations, data, method, progress=progress)
        if progress:
            progress(f"calibrated {len(amax)} tensors with {method} on {data.describe()}")
        cls = QUANTIZED[dtype]
        make: Callable[[set[str]], Pass] = lambda pins: cls(ranges=amax, keep_nodes=pins)
    else:
        low = pass_class(dtype)
        candidates = convertible(model, dtype)
        make = lambda pins: low(form, keep_nodes=pins)
    if runner not in RUNNERS:
        raise OnnxpassError(f"runner {runner!r}: expected one of {', '.join(RUNNERS)}")
    if runner == "tensorrt":
        from onnxpass.trt_build import import_tensorrt

        import_tensorrt()  # the one-line error before any work
    run_half = trt_runner if runner == "tensorrt" else \
        (run if dtype in QUANTIZED else ort_runner)  # Q/DQ rounds exactly in ONNX Runtime
    feeds = feeds if feeds is not None else random_inputs(model)
    want = run(model, feeds)
    runs = 0
    worst: dict[str, float] = {}

    def passes(pins: set[str]) -> bool:
        nonlocal runs, worst
        runs += 1
        work = onnx.ModelProto()
        work.CopyFrom(model)
        half, _ = rewrite(work, [make(pins)])
        got = run_half(half, feeds)
        ok, errs = True, {}
        for k, e in want.items():
            s, errs[k] = scaled_stats(k, e, got[k], tol)
            ok = ok and s.within
        worst = errs
        return ok

    pins: set[str] = set()
    order: list[str] = []
    if not passes(pins):
        if not passes(set(candidates)):
            return PrecisionResult(sorted(candidates), False, runs, worst)
        while True:
            rest = [c for c in candidates if c not in pins]
            lo, hi = 1, len(rest)  # pinning rest[:hi] passes
            while lo < hi:
                mid = (lo + hi) // 2
                if passes(pins | set(rest[:mid])):
                    hi = mid
                else:
                    lo = mid + 1
            pins.add(rest[hi - 1])
            order.append(rest[hi - 1])
            if progress:
                progress(f"pin {rest[hi - 1]} ({runs} runs)")
            if passes(pins):
                break
    return PrecisionResult(order, True, runs, worst)


def debug_precision(path: str | os.PathLike[str], tol: float, output: str | os.PathLike[str],
                    feeds: Feeds | None = None, form: str = "mixed",
                    progress: Callable[[str], None] | None = None, runner: str = "onnxruntime",
                    dtype: str = "fp16", model: onnx.ModelProto | None = None, *,
                    calibration: str | CalibrationData | None = None, method: str = "max"
                    ) -> PrecisionResult:
    """Find the pins for the model at ``path`` (or ``model``, that file loaded with its
    external data) and write the pin list to ``output``."""
    if model is None:
        from onnx.external_data_helper import load_external_data_for_model

        from onnxpass.graph import load_model

        model = load_model(path)  # external data checked (confined, in bounds) before reading
        load_external_data_for_model(model, str(Path(path).resolve().parent))
    result = find_pins(model, tol, feeds, form, progress, runner, dtype,
                       calibration=calibration, method=method)
    try:
        Path(output).write_text(result.pin_file(tol, form, dtype))
    except OSError as e:
        raise OnnxpassError(f"{output}: cannot write: {e.strerror or e}") from None
    return result
