"""Benchmark: what each constant folder costs and what it folds (issue 12, item 1).

Folders, each run as a pipeline's first pass on a freshly loaded model:

- ``fold`` (onnxpass/passes/fold.py, ONNX Runtime evaluates), ``fold:evaluator=reference``
  (ONNX's reference evaluator) and ``fold_graphsurgeon`` (the folding before ``fold``: the whole
  model through onnx-graphsurgeon and polygraphy): ``load_graph(path)``, ``remove_dead()``,
  ``refresh_types()`` (the runner's preparation, timed as "load"), then ``pass.run(ctx)`` and
  ``remove_dead()`` (as the runner does after a pass that changed something; timed as "fold").
  ``load_graph`` leaves the data of big initializers in the file (in place), as ``onnxpass run``
  does.
- ``NAME@inline``: the same pass on ``Graph(onnx.load(path))``, every weight decoded, as the
  pipeline loaded models before in-place loading (``fold_graphsurgeon`` reads the weights left
  in place into memory before GraphSurgeon sees them: it folds the same either way).
- ``onnxscript``: onnxscript 0.7.2's ``onnxscript.optimizer.fold_constants`` (default limits:
  inputs of at most 8192 elements except Transpose, outputs of at most 512*512, ConstantOfShape
  kept) on ``onnx_ir.load(path)``, then ``onnxscript.optimizer.remove_unused_nodes`` (the folder
  leaves the nodes it replaced in place); "load" is ``onnx_ir.load``, "total" includes it.
  ``onnxscript:big`` raises both limits to 4M elements (16 MiB of float32, ``fold``'s
  ``MAX_BYTES``).

Columns: the model's node count in the file; per folder the median seconds of load and fold
and their sum, the nodes removed (node count after dead-code removal before, minus after) and
of those the non-Constant ones ("ops": computations folded; a Constant node that becomes an
initializer counts in "removed" only), and the peak resident memory the fold adds over the RSS
after loading (VmHWM, reset through /proc/self/clear_refs just before the fold). Every run is a
fresh interpreter (``--child``), as ``onnxpass run`` is: nothing is warm, nothing is cached
between folders; ``--repeat`` runs of each, interleaved.

Models: the CLIP ViT-B/32 vision export at /dev/shm/onnxpass-bench/clip_vit_b32_vision_op14.onnx
(bench_run_models.py makes it; 333 MB, TorchScript opset 14) and small random-weight exports
made from the tests' builders, exported once into the cache folder (default
/tmp/onnxpass-foldbench) and reused. A model key is ``clip``, a path to an .onnx file,
``models/NAME/EXPORTER[-fp16]`` (tests/models.py: torchscript, torchscript16, dynamo,
dynamo18), ``heldout/NAME/EXPORTER`` (tests/models_heldout.py's EXPORTERS) or
``exporters/paddle`` / ``exporters/tf2onnx`` (tests/models_exporters.py).

    python bench/bench_fold.py                      # CLIP + the default small models, 3 runs
    python bench/bench_fold.py --models clip --repeat 5
    python bench/bench_fold.py --folders fold,onnxscript --models heldout/gpt2/ts17-dyn
    python bench/bench_fold.py --export-only --models models/vit/dynamo   # just make the export
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP = Path("/dev/shm/onnxpass-bench/clip_vit_b32_vision_op14.onnx")
CACHE = Path("/tmp/onnxpass-foldbench")
MODELS = ["clip", "models/bert/torchscript", "models/vit/dynamo", "models/detr/torchscript",
          "heldout/gpt2/ts17-dyn", "heldout/llama/ts14-static",
          "heldout/whisper/ts16-fp16-static", "exporters/paddle", "exporters/tf2onnx"]
FOLDERS = ["fold", "fold:evaluator=reference", "fold_graphsurgeon", "onnxscript",
           "onnxscript:big"]
BIG = 4 << 20  # elements: 16 MiB of float32, fold.MAX_BYTES


# ---- models -------------------------------------------------------------------------------------

def model_path(key: str, cache: Path = CACHE) -> Path:
    """The .onnx file of model ``key`` (see the module docstring), exported on first use."""
    if key == "clip":
        if not CLIP.exists():
            raise SystemExit(f"{CLIP} is missing: python bench/bench_run.py "
                             f"/dev/shm/onnxpass-bench makes it")
        return CLIP
    if key.endswith(".onnx"):
        return Path(key)
    path = cache / (key.replace("/", "-") + ".onnx")
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial.onnx")
        t0 = time.perf_counter()
        export(key, tmp)
        tmp.rename(path)
        print(f"exported {key} -> {path} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return path


def export(key: str, path: Path) -> None:
    """Export model ``key`` to ``path`` with the tests' builders."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    source, _, rest = key.partition("/")
    if source == "exporters":
        import onnx

        from tests.models_exporters import BUILDERS

        onnx.save(BUILDERS[rest]().model, str(path))
        return
    name, _, exporter = rest.partition("/")
    if source == "models":
        from tests import models

        fp16 = exporter.endswith("-fp16")
        built = models.MODELS[name]()
        models.export(models.half(built) if fp16 else built, exporter.removesuffix("-fp16"),
                      path)
    elif source == "heldout":
        from tests import models as base, models_heldout as held

        built = held.MODELS[name]()
        if held.EXPORTERS[exporter][1]:
            built = base.half(built)
        held.export(built, exporter, path)
    else:
        raise SystemExit(f"unknown model {key!r}: clip, PATH.onnx, models/NAME/EXPORTER, "
                         f"heldout/NAME/EXPORTER or exporters/paddle|tf2onnx")


# ---- one measurement, in a fresh interpreter ----------------------------------------------------

def _status(key: str) -> int:
    """VmHWM or VmRSS of this process, in KiB."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(key))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(folder: str, path: Path) -> dict[str, float]:
    """Load ``path`` and run ``folder`` on it, in this process: seconds, node counts, memory."""
    import onnx

    if folder.startswith("onnxscript"):
        import onnx_ir as ir
        from onnxscript import optimizer

        limit = {"input_size_limit": BIG, "output_size_limit": BIG} if folder.endswith(
            ":big") else {}
        t0 = time.perf_counter()
        model = ir.load(str(path))
        load = time.perf_counter() - t0
        nodes = list(model.graph)
        before, ops_before = len(nodes), sum(n.op_type != "Constant" for n in nodes)
        peak_ok = _reset_peak()
        rss = _status("VmRSS:")
        t0 = time.perf_counter()
        optimizer.fold_constants(model, **limit)
        optimizer.remove_unused_nodes(model)
        fold = time.perf_counter() - t0
        nodes = list(model.graph)
        after, ops_after = len(nodes), sum(n.op_type != "Constant" for n in nodes)
    else:
        from onnxpass.graph import Graph
        from onnxpass.passes import builtin  # noqa: F401  (registers the passes)
        from onnxpass.passes.base import PassContext
        from onnxpass.passes.manager import load_graph, parse_pipeline

        spec, _, how = folder.partition("@")
        [p] = parse_pipeline(spec)
        t0 = time.perf_counter()
        graph = Graph(onnx.load(str(path)), str(path.resolve().parent)) if how == "inline" \
            else load_graph(path)
        graph.remove_dead()
        graph.refresh_types()
        load = time.perf_counter() - t0
        before = len(graph.nodes)
        ops_before = sum(n.op_type != "Constant" for n in graph.nodes)
        ctx = PassContext(graph)
        peak_ok = _reset_peak()
        rss = _status("VmRSS:")
        t0 = time.perf_counter()
        p.run(ctx)
        ctx.graph.remove_dead()
        fold = time.perf_counter() - t0
        after = len(ctx.graph.nodes)
        ops_after = sum(n.op_type != "Constant" for n in ctx.graph.nodes)
    peak = (_status("VmHWM:") - rss) / 1024 if peak_ok else float("nan")
    return {"load": load, "fold": fold, "removed": before - after, "ops": ops_before - ops_after,
            "peak_mib": peak}


def measure_fresh(folder: str, path: Path) -> dict[str, float]:
    """:func:`measure` in a fresh interpreter (its stderr, third-party warnings, discarded)."""
    res = subprocess.run([sys.executable, __file__, "--child", folder, str(path)],
                         capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{folder} on {path}: {tail}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---- the table ----------------------------------------------------------------------------------

def node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated model keys")
    ap.add_argument("--folders", default=",".join(FOLDERS), help="comma-separated folders")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each (model, folder)")
    ap.add_argument("--cache", type=Path, default=CACHE, help="where exports are kept")
    ap.add_argument("--export-only", action="store_true", help="make the exports, time nothing")
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        print(json.dumps(measure(args.child[0], Path(args.child[1]))))
        return 0
    keys = [k for k in args.models.split(",") if k]
    folders = [f for f in args.folders.split(",") if f]
    paths = {k: model_path(k, args.cache) for k in keys}
    if args.export_only:
        return 0
    print("command: python " + " ".join([os.path.relpath(__file__, ROOT),
                                         *(argv if argv is not None else sys.argv[1:])]))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; median of "
          f"{args.repeat} runs, each in a fresh interpreter")
    header = ["model", "nodes", "folder", "load s", "fold s", "total s", "removed", "ops",
              "peak MiB"]
    print_row(header)
    for key in keys:
        path = paths[key]
        runs: dict[str, list[dict[str, float]]] = {f: [] for f in folders}
        for r in range(args.repeat):
            order = folders[r % len(folders):] + folders[:r % len(folders)]  # rotate the order
            for folder in order:
                try:
                    runs[folder].append(measure_fresh(folder, path))
                except RuntimeError as e:
                    print(f"  failed: {e}", file=sys.stderr)
        nodes = str(node_count(path))
        for folder in folders:
            got = runs[folder]
            if not got:
                print_row([key, nodes, folder, *["failed"] * 6])
                nodes = key = ""
                continue
            med = {k: statistics.median(g[k] for g in got) for k in got[0]}
            counts = {(g["removed"], g["ops"]) for g in got}
            removed = "/".join(str(int(c[0])) for c in sorted(counts))  # runs must agree
            ops = "/".join(str(int(c[1])) for c in sorted(counts))
            print_row([key, nodes, folder, f"{med['load']:.2f}", f"{med['fold']:.2f}",
                       f"{med['load'] + med['fold']:.2f}", removed, ops, f"{med['peak_mib']:.0f}"])
            nodes = key = ""
    return 0


WIDTHS = [32, 6, 26, 7, 7, 8, 8, 6, 9]


def print_row(cells: list[str]) -> None:
    print("  ".join(c.ljust(w) if k < 3 else c.rjust(w)
                    for k, (c, w) in enumerate(zip(cells, WIDTHS))), flush=True)


if __name__ == "__main__":
    sys.exit(main())
