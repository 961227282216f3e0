"""Run models in ONNX Runtime and compare outputs: the numerical oracle for every rewrite.

:func:`error_stats` is the one tolerance helper onnxpass uses (CLI, golden tests, real-model tests);
``--verify`` picks its tolerance by the precision the rewritten model computes in
(:data:`VERIFY_TOLERANCES`). Feeds are checked against a model's inputs before anything runs
(:func:`check_feeds`, :func:`check_same_inputs`, :func:`check_dims`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import onnx
from onnx import helper

from onnxpass.errors import OnnxpassError, VerificationError

if TYPE_CHECKING:
    import onnxruntime as ort

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
    problem: str | None = None  # what makes the numbers meaningless, e.g. a changed shape

    def line(self) -> str:
        if self.problem:
            return f"{self.name}: {self.problem}; MISMATCH"
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
        return ErrorStats(name, nan, nan, nan, nan, nan, nan, False,
                          f"shape {_shape_text(e.shape)} != {_shape_text(a.shape)}")
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


def _shape_text(shape: tuple[int, ...]) -> str:
    return f"({','.join(map(str, shape))})"


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


# --verify's default tolerance by the lowest float precision the rewritten graph computes in:
# (rtol, atol); atol None means rtol times the output's scale (:func:`scaled_stats`), since
# float16 error grows with the magnitude of the values. bfloat16 keeps 8 mantissa bits to
# float16's 11, so its rounding error is about 8 times larger; 3e-2 leaves room for that.
# A Q/DQ graph's error is its quantization's: int8 rounds each quantized tensor to 1/254 of its
# range, fp8 E4M3 each value to 3 mantissa bits; errors of a few percent of the output's scale
# are normal there (read `onnxpass compare`'s top-k agreement for a classifier instead).
VERIFY_TOLERANCES: dict[str, tuple[float, float | None]] = {
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, None),
    "bfloat16": (3e-2, None),
    "int8": (1e-1, None),
    "fp8": (2e-1, None),
}
_REDUCED = {onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.FLOAT16: "float16"}
_FP8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ,
        onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E5M2FNUZ}


def compute_precision(model: onnx.ModelProto) -> str:
    """The lowest precision ``model`` computes in: "fp8" or "int8" (Q/DQ to that type), else
    "bfloat16", "float16" or "float32", from its declared types, initializers, Casts and
    Constants (weights are not read)."""
    g = model.graph
    quantized = {t.data_type for t in g.initializer} | {
        vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.output]}
    if any(n.op_type == "QuantizeLinear" or n.op_type == "DequantizeLinear" for n in g.node):
        if quantized & _FP8:
            return "fp8"
        if quantized & {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}:
            return "int8"
    found = {vi.type.tensor_type.elem_type for vi in [*g.input, *g.output, *g.value_info]}
    found |= {t.data_type for t in g.initializer}
    for n in [*g.node, *(n for f in model.functions for n in f.node)]:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to":
                found.add(a.i)
            elif a.type == onnx.AttributeProto.TENSOR:
                found.add(a.t.data_type)
    return next((_REDUCED[t] for t in _REDUCED if t in found), "float32")


def verify_stats(name: str, expected: np.ndarray, actual: np.ndarray, precision: str,
                 rtol: float | None = None, atol: float | None = None) -> ErrorStats:
    """One output judged with ``rtol``/``atol`` where given, else with
    :data:`VERIFY_TOLERANCES` for ``precision``."""
    default_rtol, default_atol = VERIFY_TOLERANCES[precision]
    rtol = default_rtol if rtol is None else rtol
    if atol is None:
        atol = default_atol if default_atol is not None else rtol * output_scale(expected)
    return error_stats(name, expected, actual, rtol, atol)


def tolerance_text(precision: str, rtol: float | None = None, atol: float | None = None) -> str:
    """The tolerance :func:`verify_stats` applies, in words."""
    default_rtol, default_atol = VERIFY_TOLERANCES[precision]
    r = default_rtol if rtol is None else rtol
    a = f"{atol:g}" if atol is not None else (
        f"{default_atol:g}" if default_atol is not None else f"{r:g} of max |output|")
    return f"rtol={r:g} atol={a}" + ("" if rtol is not None and atol is not None
                                     else f" ({precision} default)")


def session(model: onnx.ModelProto | str | os.PathLike[str]) -> ort.InferenceSession:
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
        raise OnnxpassError(
            f"{what}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}") from None


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
    """The arrays of an ``.npz`` file, by name; one-line errors for anything else."""
    p = Path(path)
    if p.is_dir():
        raise OnnxpassError(f"{p}: is a directory; expected an .npz file of inputs")
    try:
        if p.stat().st_size == 0:
            raise OnnxpassError(f"{p}: is empty; expected an .npz file of inputs (np.savez)")
        with open(p, "rb") as f:
            magic = f.read(6)
        if magic.startswith(b"\x93NUMPY"):
            raise OnnxpassError(f"{p}: a single array (.npy), not an .npz of named inputs; "
                                "save them with np.savez(path, NAME=array, ...)")
        if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # .npz is a zip archive
            raise OnnxpassError(f"{p}: not an .npz file of inputs (not a zip archive); save "
                                "them with np.savez(path, NAME=array, ...)")
        with np.load(p, allow_pickle=False) as data:
            feeds = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise OnnxpassError(f"{p}: no such file") from None
    except PermissionError as e:
        raise OnnxpassError(f"{p}: cannot read: {e.strerror}") from None
    except OnnxpassError:
        raise
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxpassError(f"{p}: not an .npz file of inputs ({text})") from None
    if not feeds:
        raise OnnxpassError(f"{p}: holds no arrays; expected one per model input")
    return feeds


def _inputs(model: onnx.ModelProto) -> tuple[list[onnx.ValueInfoProto], set[str]]:
    """The model's graph inputs and the names of those an initializer backs (optional feeds)."""
    inits = {t.name for t in model.graph.initializer}
    return list(model.graph.input), inits


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Static dim, dim name, or None (unknown) per dim; None for a tensor of unknown rank."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tt.shape.dim]


def describe_input(vi: onnx.ValueInfoProto) -> str:
    """``name float[batch,8]``: an input as the model declares it, in ONNX text syntax."""
    tt = vi.type.tensor_type
    dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower() if vi.type.HasField(
        "tensor_type") else "non-tensor"
    dims = _dims(vi)
    shape = "" if dims is None else f"[{','.join('?' if d is None else str(d) for d in dims)}]"
    return f"{vi.name} {dtype}{shape}"


def describe_inputs(model: onnx.ModelProto) -> str:
    vis, inits = _inputs(model)
    return ", ".join(describe_input(vi) for vi in vis if vi.name not in inits) or "none"


def check_feeds(model: onnx.ModelProto, feeds: dict[str, np.ndarray], source: object) -> None:
    """Refuse feeds that do not fit ``model``'s inputs (names, dtypes, ranks, static dims),
    naming the input and what the model expects, before anything runs."""
    vis, inits = _inputs(model)
    by_name = {vi.name: vi for vi in vis}
    if not feeds:
        raise OnnxpassError(f"{source}: holds no arrays; the model's inputs: "
                            f"{describe_inputs(model)}")
    unknown = [k for k in feeds if k not in by_name]
    if unknown:
        raise OnnxpassError(f"{source}: {', '.join(map(repr, unknown))} "
                            f"{'is not an input' if len(unknown) == 1 else 'are not inputs'} "
                            f"of the model; its inputs: {describe_inputs(model)}")
    missing = [vi for vi in vis if vi.name not in feeds and vi.name not in inits]
    if missing:
        raise OnnxpassError(f"{source}: lacks input{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(describe_input(vi) for vi in missing)}")
    for name, value in feeds.items():
        vi = by_name[name]
        if not vi.type.HasField("tensor_type"):
            continue
        want = vi.type.tensor_type.elem_type
        a = np.asarray(value)
        try:
            got = helper.np_dtype_to_tensor_dtype(a.dtype)
        except (KeyError, ValueError, TypeError):
            got = None
        if want and got != want:
            raise OnnxpassError(f"{source}: input {name!r} is {a.dtype}, the model expects "
                                f"{describe_input(vi).split(' ', 1)[1]}")
        dims = _dims(vi)
        if dims is None:
            continue
        if a.ndim != len(dims):
            raise OnnxpassError(f"{source}: input {name!r} has shape {_shape_text(a.shape)} "
                                f"(rank {a.ndim}), the model expects "
                                f"{describe_input(vi).split(' ', 1)[1]} (rank {len(dims)})")
        for k, (d, n) in enumerate(zip(dims, a.shape)):
            if isinstance(d, int) and d != n:
                raise OnnxpassError(f"{source}: input {name!r} has shape {_shape_text(a.shape)}, "
                                    f"the model expects {describe_input(vi).split(' ', 1)[1]}: "
                                    f"dim {k} must be {d}")


def check_same_inputs(a: onnx.ModelProto, b: onnx.ModelProto, name_a: object, name_b: object
                      ) -> None:
    """Refuse to run two models on one set of feeds when their inputs differ in names, dtypes,
    ranks or static dims."""
    def required(m: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
        vis, inits = _inputs(m)
        return {vi.name: vi for vi in vis if vi.name not in inits}

    ia, ib = required(a), required(b)
    if set(ia) != set(ib):
        only_a, only_b = sorted(set(ia) - set(ib)), sorted(set(ib) - set(ia))
        parts = ([f"{', '.join(map(repr, only_a))} only in {name_a}"] if only_a else []) + (
            [f"{', '.join(map(repr, only_b))} only in {name_b}"] if only_b else [])
        raise OnnxpassError(f"{name_b}: its inputs differ from {name_a}'s: {'; '.join(parts)}")
    for k, va in ia.items():
        vb = ib[k]
        ta, tb = va.type.tensor_type.elem_type, vb.type.tensor_type.elem_type
        da, db = _dims(va), _dims(vb)
        same_rank = da is None or db is None or len(da) == len(db)
        same_dims = same_rank and (da is None or db is None or all(
            not (isinstance(x, int) and isinstance(y, int) and x != y) for x, y in zip(da, db)))
        if ta != tb or not same_dims:
            raise OnnxpassError(f"{name_b}: input {describe_input(vb)} differs from "
                                f"{name_a}'s {describe_input(va)}")


def symbolic_dims(model: onnx.ModelProto) -> list[str]:
    """Names of the symbolic dims of the model's inputs (what ``--dim NAME=N`` can set)."""
    vis, inits = _inputs(model)
    names = [d for vi in vis if vi.name not in inits for d in (_dims(vi) or [])
             if isinstance(d, str)]
    return list(dict.fromkeys(names))


def check_dims(model: onnx.ModelProto, dims: dict[str, int], flag: str = "--dim") -> None:
    """Refuse ``--dim`` names that no input of the model has."""
    known = symbolic_dims(model)
    for name in dims:
        if name not in known:
            have = f"its symbolic dims: {', '.join(known)}" if known else \
                "it has no symbolic input dims"
            raise OnnxpassError(f"{flag} {name}={dims[name]}: no input of the model has a dim "
                                f"named {name!r}; {have}")


def run(model: onnx.ModelProto | str | os.PathLike[str], feeds: dict[str, np.ndarray]
        ) -> dict[str, np.ndarray]:
    s = session(model)
    names = [o.name for o in s.get_outputs()]
    wanted = {i.name for i in s.get_inputs()}
    try:
        got = s.run(names, {k: v for k, v in feeds.items() if k in wanted})
    except Exception as e:  # feeds are checked beforehand: this is the model failing
        what = "model" if isinstance(model, onnx.ModelProto) else str(model)
        raise OnnxpassError(f"{what}: ONNX Runtime cannot run it: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}"
                            ) from None
    return dict(zip(names, cast(list[np.ndarray], got)))  # dense outputs: arrays


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
