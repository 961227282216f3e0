"""Run models in ONNX Runtime and compare outputs: the numerical oracle for every rewrite.

:func:`error_stats` is the one tolerance helper onnxpass uses (CLI, golden tests, real-model tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxpass.errors import OnnxpassError, VerificationError

DEFAULT_DIM = 2


@dataclass
class ErrorStats:
    """Per-output error of ``actual`` against ``expected``."""

    name: str
    abs_mean: float
    abs_median: float
    abs_max: float
    rel_mean: float
    rel_median: float
    rel_max: float
    within: bool

    def line(self) -> str:
        return (f"{self.name}: abs mean {self.abs_mean:.3g} median {self.abs_median:.3g} max "
                f"{self.abs_max:.3g}; rel mean {self.rel_mean:.3g} median {self.rel_median:.3g} "
                f"max {self.rel_max:.3g}; {'ok' if self.within else 'MISMATCH'}")


def error_stats(name: str, expected: np.ndarray, actual: np.ndarray, rtol: float = 1e-5,
                atol: float = 1e-6) -> ErrorStats:
    """Absolute and relative error statistics; ``within`` is elementwise
    ``|a - e| <= atol + rtol * |e|`` with matching shapes and NaN positions."""
    e = np.asarray(expected)
    a = np.asarray(actual)
    if e.shape != a.shape:
        nan = float("nan")
        return ErrorStats(name, nan, nan, nan, nan, nan, nan, False)
    if e.dtype.kind not in "fc":
        ok = bool(np.array_equal(e, a))
        diff = (e != a).astype(np.float64)
        return ErrorStats(name, float(diff.mean()) if diff.size else 0.0, 0.0,
                          float(diff.max()) if diff.size else 0.0, 0.0, 0.0, 0.0, ok)
    e64, a64 = e.astype(np.float64), a.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: judged by `finite` below
        return _float_stats(name, e64, a64, rtol, atol)


def _float_stats(name: str, e64: np.ndarray, a64: np.ndarray, rtol: float, atol: float
                 ) -> ErrorStats:
    same_nan = np.array_equal(np.isnan(e64), np.isnan(a64))
    finite = np.isfinite(e64) & np.isfinite(a64)
    d = np.abs(a64 - e64)[finite]
    rel = d / np.maximum(np.abs(e64[finite]), np.finfo(np.float64).tiny)
    within = same_nan and bool(np.all(d <= atol + rtol * np.abs(e64[finite]))) and bool(
        np.array_equal(e64[~finite & ~np.isnan(e64)], a64[~finite & ~np.isnan(e64)]))
    if d.size == 0:
        return ErrorStats(name, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, within)
    return ErrorStats(name, float(d.mean()), float(np.median(d)), float(d.max()),
                      float(rel.mean()), float(np.median(rel)), float(rel.max()), within)


def output_scale(expected: np.ndarray) -> float:
    """max |x| over the finite elements of a float output (1.0 when none or all zero): the
    scale of tolerances relative to an output, where elementwise relative error means nothing
    for elements near zero. NaNs are left to :func:`error_stats`, which wants them to match."""
    e = np.asarray(expected)
    if e.dtype.kind not in "fc" or e.size == 0:
        return 1.0
    finite = np.abs(e[np.isfinite(e)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def scaled_stats(name: str, expected: np.ndarray, actual: np.ndarray, tol: float
                 ) -> tuple[ErrorStats, float]:
    """:func:`error_stats` with ``rtol = tol`` and ``atol = tol * output_scale``, and the max
    error over that scale (what "within 1e-2 relative" of a float16 graph means here)."""
    scale = output_scale(expected)
    s = error_stats(name, expected, actual, rtol=tol, atol=tol * scale)
    return s, s.abs_max / scale


def session(model: onnx.ModelProto | str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # The oracle runs the graph as written: no ORT fusions that could hide or cause differences.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        what = "model" if isinstance(model, onnx.ModelProto) else str(model)
        raise OnnxpassError(f"{what}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}")


def random_inputs(model: onnx.ModelProto, seed: int = 0, dims: dict[str, int] | None = None
                  ) -> dict[str, np.ndarray]:
    """Random feeds for every graph input that is not an initializer. Symbolic dims take
    ``dims[name]`` or 2; integer inputs draw from [0, 16) (ids and masks stay in range)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (dims or {}).get(d.dim_param,
                                                                             DEFAULT_DIM)
                 for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) > 0.3
        elif np.issubdtype(dtype, np.integer):
            high = 2 if "mask" in vi.name.lower() else 16
            feeds[vi.name] = rng.integers(0, high, size=shape).astype(dtype)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def load_inputs(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    p = Path(path)
    try:
        with np.load(p) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise OnnxpassError(f"{p}: no such file") from None
    except Exception as e:
        raise OnnxpassError(f"{p}: not an .npz file of inputs ({e})") from None


def run(model: onnx.ModelProto | str | os.PathLike[str], feeds: dict[str, np.ndarray]
        ) -> dict[str, np.ndarray]:
    s = session(model)
    names = [o.name for o in s.get_outputs()]
    wanted = {i.name for i in s.get_inputs()}
    return dict(zip(names, s.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def compare_models(original: onnx.ModelProto | str | os.PathLike[str],
                   rewritten: onnx.ModelProto | str | os.PathLike[str],
                   feeds: dict[str, np.ndarray], rtol: float = 1e-5, atol: float = 1e-6
                   ) -> list[ErrorStats]:
    want = run(original, feeds)
    got = run(rewritten, feeds)
    missing = set(want) - set(got)
    if missing:
        raise VerificationError(f"rewritten model lacks outputs {sorted(missing)}")
    return [error_stats(k, want[k], got[k], rtol, atol) for k in want]
