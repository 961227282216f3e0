"""Shared by the normalization passes: which axes are normalized, and how per-channel parameters
(gamma, beta) map onto them without changing what the model computes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from onnx import TensorProto, helper

from onnxpass.patterns import Match, MatchFailure, RewriteBuilder

FLOATS = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                    TensorProto.DOUBLE})
_FILL = {"gamma": 1.0, "beta": 0.0}


@dataclass
class NormalizedParams:
    """How to express a normalization over ``axes`` of x as one over ``axis``.. (trailing).

    ``perm`` is set when a single non-trailing axis is normalized (NCHW over C): x is transposed
    to put it last, and back afterwards. ``params`` holds, per parameter, the value to pass:
    an existing value name, a new array, or ("reshape", value, shape)."""

    axis: int
    perm: list[int] | None
    params: dict[str, Any] = field(default_factory=dict)

    def to_layout(self, op: RewriteBuilder, x: str) -> str:
        return x if self.perm is None else op.Transpose(x, perm=self.perm)

    def from_layout(self, op: RewriteBuilder, y: str) -> str:
        if self.perm is None:
            return y
        inverse = [self.perm.index(k) for k in range(len(self.perm))]
        return op.Transpose(y, perm=inverse)

    def get(self, op: RewriteBuilder, name: str, required: bool = False) -> str:
        p = self.params.get(name)
        if p is None and required:
            p = self.params[f"{name}:fill"]
        if p is None:
            return ""
        if isinstance(p, str):
            return p
        if isinstance(p, tuple):
            _, value, shape = p
            return op.Reshape(value, op.const(np.array(shape, dtype=np.int64)))
        return op.const(p, hint=name)

    def gamma(self, op: RewriteBuilder, required: bool = True) -> str:
        return self.get(op, "gamma", required)

    def beta(self, op: RewriteBuilder, required: bool = False) -> str:
        return self.get(op, "beta", required)


def normalized_params(m: Match, axes: Any, names: tuple[str, ...], dtype: int | None = None
                      ) -> NormalizedParams | MatchFailure:
    """Check that ``axes`` are normalizable as one LayerNormalization-style axis and that each bound
    parameter in ``names`` varies only along them; work out how to pass each one. The parameters
    have element type ``dtype`` (default: x's; rmsnorm's gamma may be applied in float32 to a
    float16 x)."""
    shape = m.shape("x")
    rank = None if shape is None else len(shape)
    if axes is None:
        if rank is None:
            return MatchFailure("reduces over all axes of a tensor of unknown rank")
        axes = list(range(rank))
    axes = [int(a) for a in axes]
    if not axes:
        return MatchFailure("reduction over no axes")
    if rank is not None:
        axes = sorted(a + rank if a < 0 else a for a in axes)
        trailing = axes == list(range(rank - len(axes), rank))
    else:
        axes = sorted(axes)
        trailing = axes == list(range(-len(axes), 0))
    if trailing:
        k = len(axes)
        result = NormalizedParams(axis=-k, perm=None)
        norm_positions = set(range(rank - k, rank)) if rank is not None else set(range(-k, 0))
        target = None if shape is None else tuple(shape[rank - k:])  # type: ignore[operator]
    elif len(axes) == 1 and rank is not None and shape is not None:
        a = axes[0]
        perm = [d for d in range(rank) if d != a] + [a]
        result = NormalizedParams(axis=-1, perm=perm)
        norm_positions = {a}
        target = (shape[a],)
    else:
        return MatchFailure(f"normalizes over axes {axes}, which are not the trailing axes")
    if shape is not None:
        shape = _sized_by_params(m, shape, norm_positions, names)
        target = tuple(shape[p] for p in sorted(norm_positions))
    static = target is not None and all(isinstance(d, int) for d in target)
    elem = dtype or m.dtype("x") or TensorProto.FLOAT
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)
    for name in names:
        if m.get(name) is None:
            if static:
                result.params[f"{name}:fill"] = np.full(cast(tuple[int, ...], target),
                                                        _FILL.get(name, 0.0), dtype=np_dtype)
            elif name == "gamma":
                return MatchFailure("no gamma and the normalized dims are not static")
            continue
        got = _param(m, name, shape, rank, norm_positions, target, static, elem)
        if isinstance(got, MatchFailure):
            return got
        result.params[name] = got
    return result


def _sized_by_params(m: Match, shape: Any, norm: set[int], names: tuple[str, ...]) -> Any:
    """Shape inference leaves a normalized dim symbolic after a Reshape to -1 (MobileViT). A
    parameter of size n > 1 along that dim fixes it at n: only then is the decomposition a
    normalization (at size 1 it broadcasts beta up to n). At any other size the fused op fails
    loudly; it never silently computes something else."""
    dims = list(shape)
    for name in names:
        pshape = m.shape(name) if m.get(name) is not None else None
        if pshape is None or len(pshape) > len(dims):
            continue
        for pos, d in zip(range(len(dims) - len(pshape), len(dims)), pshape):
            if pos in norm and not isinstance(dims[pos], int) and isinstance(d, int) and d > 1:
                dims[pos] = d
    return tuple(dims)


def _param(m: Match, name: str, x_shape: Any, rank: int | None, norm: set[int], target: Any,
           static: bool, dtype: int) -> Any:
    pshape = m.shape(name)
    if pshape is None:
        return MatchFailure(f"shape of {name} is unknown")
    if m.dtype(name) != dtype:
        return MatchFailure(f"{name} has dtype {m.dtype(name)}, expected {dtype}")
    n = len(pshape)
    if rank is not None and n > rank:
        return MatchFailure(f"{name} of rank {n} broadcasts x of rank {rank}")
    # Align the parameter's dims with x's (right-aligned) and check each.
    positions = list(range(rank - n, rank)) if rank is not None else list(range(-n, 0))
    kept: list[Any] = []
    for pos, d in zip(positions, pshape):
        if pos in norm:
            xd = x_shape[pos] if x_shape is not None else None
            if d != 1 and xd is not None and d != xd:
                return MatchFailure(f"{name} dim {d} does not match normalized dim {xd}")
            kept.append(d)
        elif d != 1:
            return MatchFailure(f"{name} varies along axis {pos}, which is not normalized")
    want = len(target) if target is not None else len(norm)
    kept = [1] * (want - len(kept)) + kept
    if target is not None and tuple(kept) == tuple(target) and n == len(target):
        return m[name]
    if not static:
        return MatchFailure(f"{name} of shape {pshape} needs reshaping, but the normalized dims "
                            f"are not static")
    assert target is not None  # static implies a known target
    if m.is_const(name):
        value = m.const(name).reshape(kept)
        return np.ascontiguousarray(np.broadcast_to(value, target))
    if tuple(kept) == tuple(target):
        return ("reshape", m[name], list(target))
    return MatchFailure(f"{name} of shape {pshape} broadcasts within the normalized dims and is "
                        f"not constant")
