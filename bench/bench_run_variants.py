"""What bench_run.py times: each variant end to end (load, work, save), as a user calls it.

A variant is named by a key, a string that a fresh interpreter can run again (``fresh_run``):

- ``onnx``: ``onnx.save(onnx.load(src), out)``, external data (``OUT.data``) when the input has
  it -- the baseline every ratio is taken to.
- ``onnxpass:PASSES``: ``onnxpass run --passes PASSES SRC -o OUT -q`` through
  ``onnxpass.cli.main`` (load, checker, passes, shape inference, save).
- ``ort:MODEL_TYPE:OPT_LEVEL``: ONNX Runtime's transformers optimizer,
  ``optimize_model(src, model_type, num_heads=0, hidden_size=0, opt_level)`` (0 and 0: detected
  from the graph) then ``save_model_to_file(out, use_external_data_format=<input has external
  data>)``. At opt_level 0 only its Python fusions run; at >= 1 an ONNX Runtime CPU session first
  applies its graph optimizations (constant folding and the like) and writes the model to a
  temporary folder, which the fusions then load; OPT_LEVEL ``default`` is the model type's own
  default (1 for clip and vit, as ``python -m onnxruntime.transformers.optimizer`` runs it).
  Nothing needs the network.
- ``onnxscript``: ``onnx_ir.load``, ``onnxscript.rewriter.ort_fusions.optimize_for_ort``,
  ``onnx_ir.save`` (with ``external_data="OUT.data"`` when the input has external data).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path


def label(key: str) -> str:
    kind, _, arg = key.partition(":")
    if kind == "onnx":
        return "onnx.load + onnx.save"
    if kind == "onnxpass":
        return f"onnxpass run {arg}"
    if kind == "ort":
        model_type, _, level = arg.partition(":")
        return f"ORT optimizer {model_type} opt_level={level}"
    if kind == "onnxscript":
        return "onnxscript optimize_for_ort"
    raise ValueError(f"unknown variant {key!r}")


def import_variant(key: str) -> None:
    """Import what variant ``key`` runs (so a fresh process's baseline can be read before it)."""
    kind = key.partition(":")[0]
    import onnx  # noqa: F401  (every variant)

    if kind == "onnxpass":
        import onnxpass.cli  # noqa: F401
    elif kind == "ort":
        import onnxruntime.transformers.optimizer  # noqa: F401
    elif kind == "onnxscript":
        import onnx_ir  # noqa: F401
        import onnxscript.rewriter.ort_fusions  # noqa: F401


def run_variant(key: str, src: Path, out: Path, external: bool) -> None:
    """Run variant ``key`` on ``src``, writing ``out`` (and ``OUT.data`` if ``external``)."""
    kind, _, arg = key.partition(":")
    with contextlib.redirect_stdout(io.StringIO()):  # onnxpass's per-pass table, ORT's prints
        if kind == "onnx":
            import onnx

            m = onnx.load(str(src))
            if external:
                onnx.save(m, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                          location=out.name + ".data", size_threshold=1024)
            else:
                onnx.save(m, str(out))
        elif kind == "onnxpass":
            from onnxpass.cli import main

            rc = main(["run", "--passes", arg, str(src), "-o", str(out), "-q"])
            if rc != 0:
                raise RuntimeError(f"onnxpass run --passes {arg} failed with exit code {rc}")
        elif kind == "ort":
            from onnxruntime.transformers.optimizer import optimize_model

            model_type, _, level = arg.partition(":")
            opt = optimize_model(str(src), model_type=model_type, num_heads=0, hidden_size=0,
                                 opt_level=None if level == "default" else int(level))
            opt.save_model_to_file(str(out), use_external_data_format=external)
        elif kind == "onnxscript":
            import onnx_ir as ir
            from onnxscript.rewriter.ort_fusions import optimize_for_ort

            model, _ = optimize_for_ort(ir.load(str(src)))
            ir.save(model, str(out), external_data=out.name + ".data" if external else None)
        else:
            raise ValueError(f"unknown variant {key!r}")


# ---- files --------------------------------------------------------------------------------------

def out_path(outdir: Path, key: str) -> Path:
    return outdir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".onnx")


def remove_output(out: Path) -> None:
    """Remove ``out`` and its data files (``OUT.data``, onnxpass's ``OUT.<hex>.data``)."""
    out.unlink(missing_ok=True)
    pattern = re.compile(re.escape(out.name) + r"(\.[0-9a-f]{8})?\.data")
    if out.parent.is_dir():
        for f in out.parent.iterdir():
            if pattern.fullmatch(f.name):
                f.unlink(missing_ok=True)


def has_external_data(path: Path) -> bool:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)


def model_bytes(path: Path) -> tuple[int, int]:
    """(bytes of the .onnx file, bytes of the external data files it names)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    files = {next((e.value for e in t.external_data if e.key == "location"), "")
             for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    return path.stat().st_size, sum((path.parent / f).stat().st_size for f in files if f)


def weight_bytes(path: Path) -> int:
    """Bytes of the initializers' data, inline or external."""
    import numpy as np
    import onnx
    from onnx import helper

    m = onnx.load(str(path), load_external_data=False)
    total = 0
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next(e.value for e in t.external_data if e.key == "length"))
        else:
            n = int(np.prod(t.dims)) if t.dims else 1
            with contextlib.suppress(KeyError, TypeError):
                n *= helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            total += n
    return total


def op_counts(path: Path) -> tuple[collections.Counter[str], int, int]:
    """Per-op-type node counts (``ms:op`` for com.microsoft, ``domain:op`` for other domains),
    node count and ai.onnx opset."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    short = {"": "", "ai.onnx": "", "com.microsoft": "ms:"}
    counts = collections.Counter(short.get(n.domain, f"{n.domain}:") + n.op_type
                                 for n in m.graph.node)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    return counts, len(m.graph.node), opset


def filesystem(path: Path) -> str:
    """'tmpfs on /dev/shm (tmpfs), 18.0 GiB free' for the mount ``path`` lies on."""
    real = os.path.realpath(path)
    best = ("", "?", "?")
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype = (s.replace("\\040", " ") for s in line.split()[:3])
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and \
                    len(mnt) >= len(best[0]):  # the longest mount point; the last of equals
                best = (mnt, fstype, dev)
    st = os.statvfs(path)
    return (f"{best[1]} ({best[2]} mounted on {best[0]}), "
            f"{st.f_bavail * st.f_frsize / 2**30:.1f} GiB free")


def fstype(path: Path) -> str:
    return filesystem(path).split(" ", 1)[0]


# ---- memory -------------------------------------------------------------------------------------

_CHILD = """
import json, sys, time
sys.path[:] = json.loads(sys.argv[1])
from pathlib import Path
import bench_run_variants as v

def hwm():
    with open('/proc/self/status') as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith('VmHWM:'))

key = sys.argv[2]
v.import_variant(key)
start = hwm()
t0, c0 = time.perf_counter(), time.process_time()
v.run_variant(key, Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5] == '1')
print(json.dumps([start, hwm(), time.perf_counter() - t0, time.process_time() - c0]))
"""


def fresh_run(key: str, src: Path, out: Path, external: bool) -> tuple[float, float, float, float]:
    """Run variant ``key`` once in a fresh interpreter: (MiB after its imports, peak MiB, wall s,
    CPU s), the times of the variant's call alone (imports excluded).

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child started from
    this (big) process would report this process's peak.
    """
    path = json.dumps([str(Path(__file__).resolve().parent), *sys.path])  # this process's imports
    res = subprocess.run([sys.executable, "-c", _CHILD, path, key, str(src), str(out),
                          "1" if external else "0"], capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{label(key)} failed in a fresh process: {tail}")
    start, peak, wall, cpu = json.loads(res.stdout.strip().splitlines()[-1])
    return start / 1024, peak / 1024, wall, cpu
