"""How the attention pass writes each form (see attention.py for what it matches and refuses)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from onnxpass.patterns import Match, RewriteBuilder

TERMS = ("bias", "mask")


@dataclass(frozen=True)
class Core:
    """What the check worked out for the rewrite."""

    rank: int
    scale: float
    dtype: int                   # Q's element type
    softmax_dtype: int
    k_perm: list[int] | None     # applied to k gives (B, H, L, d); None: k already is
    kt_perm: list[int] | None    # applied to k gives K^T; None: k already is
    k: str                       # the K and V the fused op takes (un-repeated where
    v: str                       #   kv_group is set)
    expand_mask: bool            # std: attn_mask's last two dims are not known to be (S, L)
    raise_lowest: bool = False   # std: attn_mask may hold the dtype's lowest value (see emit)
    head_scale: np.ndarray | None = None  # (1, H, 1, 1): one more factor per head, put on Q
    kv_group: int | None = None  # query heads per K/V head where the repeat is folded in
    upcast: bool = False         # the scores and V were cast up to dtype: Q, K, V are cast too
    v_cast: int | None = None    # V alone was cast (to dtype) inside the match: cast it again


def emit_fused(op: RewriteBuilder, m: Match[Core], form: str) -> str:
    """std: Attention(Q, K, V, attn_mask); plugin: AttentionPlugin(q, k, v, mask). 4-D; K and
    V with fewer heads than Q where the check folded their repeat (both take that)."""
    c = m.facts
    q, k, v = m["q"], c.k, c.v
    if c.upcast:  # widening Casts are exact: the fused op computes in the type the graph did
        q, k, v = (op.Cast(x, to=c.dtype) for x in (q, k, v))
    elif c.v_cast is not None:
        v = op.Cast(v, to=c.v_cast)
    if c.head_scale is not None:
        q = op.Mul(q, op.const(c.head_scale.astype(helper.tensor_dtype_to_np_dtype(c.dtype))))
    k = k if c.k_perm is None else op.Transpose(k, perm=c.k_perm)
    mask = _additive_mask(op, m, raise_lowest=form == "std")
    one = op.const(np.array([1], np.int64))
    if c.rank == 3:  # (B*H, S, d) -> (B*H, 1, S, d)
        q, k, v = (op.Unsqueeze(x, one) for x in (q, k, v))
        if mask and max(m.rank(n) or 0 for n in (*TERMS, "cond") if m.get(n)) == 3:
            mask = op.Unsqueeze(mask, one)
    if form == "std":
        if mask and c.raise_lowest:  # ONNX Runtime 1.31 zeroes rows of all-lowest scores
            low = lowest(c.dtype)
            mask = op.Where(op.Equal(mask, op.const(low)), op.const(_next_up(low)), mask)
        if mask and c.expand_mask:
            mask = op.Expand(mask, _mask_shape(op, m))
        y = op.Attention(q, k, v, mask or "", scale=c.scale,
                         softmax_precision=c.softmax_dtype if c.softmax_dtype != c.dtype else None)
    else:
        y = op.plugin("AttentionPlugin", q, k, v, mask or op.const(_np(c.dtype, 0.0)),
                      scale=c.scale, softmax_precision=c.softmax_dtype, has_mask=int(bool(mask)))
    return op.Squeeze(y, one) if c.rank == 3 else y


def emit_trt(op: RewriteBuilder, m: Match[Core]) -> str:
    """MatMul(Q', K^T) [-> masks] -> Softmax -> MatMul(p, V), all of the scale in Q'."""
    c = m.facts
    if m.tag("q_proj") == "proj":
        q = op.MatMul(m["x_q"], op.const(m.const("w_q") * _np(c.dtype, c.scale)))
        if m.get("b_q"):
            q = op.Add(q, op.const(m.const("b_q") * _np(c.dtype, c.scale)))
        q = op.Transpose(op.Reshape(q, m["q_heads"], allowzero=m.attr("q_allowzero")),
                         perm=[0, 2, 1, 3])
    else:  # Q, K, V cast up where the graph cast the scores and V up (exact widenings)
        q = op.Cast(m["q"], to=c.dtype) if c.upcast else m["q"]
        if c.head_scale is not None:
            factor = (c.head_scale * c.scale).astype(helper.tensor_dtype_to_np_dtype(c.dtype))
            q = op.Mul(q, op.const(factor))
        elif c.scale != 1.0:
            q = op.Mul(q, op.const(_np(c.dtype, c.scale)))
    k, v = (op.Cast(x, to=c.dtype) if c.upcast else x for x in (c.k, c.v))
    if c.v_cast is not None:
        v = op.Cast(v, to=c.v_cast)
    s = op.MatMul(q, k if c.kt_perm is None else op.Transpose(k, perm=c.kt_perm))
    if m.tag("where") == "where":
        s = op.Where(m["cond"], s, m["fill"])
    elif m.tag("where") == "where_not":
        s = op.Where(m["cond"], m["fill"], s)
    for name in TERMS:
        if m.get(name):
            s = op.Add(s, m[name])
    masked = [n for n in (*TERMS, "cond") if m.get(n)]
    guard = m.tag("guard") == "guard" and not all(
        n != "cond" and m.is_const(n) and np.isfinite(m.const(n)).all() for n in masked)
    return _softmax_matmul(op, s, v, c.dtype, c.softmax_dtype, guard)


def _softmax_matmul(op: RewriteBuilder, s: str, v: str, dt: int, sdt: int, guard: bool) -> str:
    """Softmax(s) in type sdt, times V; with ``guard``, rows that came out NaN become zeros
    (a fully masked row: its probabilities are all NaN, so its output row is)."""
    p = op.Softmax(s if sdt == dt else op.Cast(s, to=sdt), axis=-1)
    y = op.MatMul(p if sdt == dt else op.Cast(p, to=dt), v)
    return op.Where(op.IsNaN(y), op.const(_np(dt, 0.0)), y) if guard else y


def _additive_mask(op: RewriteBuilder, m: Match[Core], raise_lowest: bool) -> str | None:
    """The sum of every additive term, the Where mask turned into Where(cond, 0, fill)."""
    terms = [m[n] for n in TERMS if m.get(n)]
    if m.tag("where") != "none":
        fill = m.const("fill").reshape(())
        zero = op.const(np.zeros((), fill.dtype))
        if raise_lowest and fill == np.finfo(fill.dtype).min:
            fill = op.const(_next_up(fill))
        else:
            fill = m["fill"]
        keep, drop = (zero, fill) if m.tag("where") == "where" else (fill, zero)
        terms.append(op.Where(m["cond"], keep, drop))
    total = terms[0] if terms else None
    for t in terms[1:]:
        total = op.Add(total, t)
    return total


def _mask_shape(op: RewriteBuilder, m: Match[Core]) -> str:
    """(1, 1, S, L): S is Q's dim -2, L is V's; a constant when both are known."""
    values = (m["q"], m.facts.v)
    dims = [(m.graph.shape(x) or (None, None))[-2] for x in values]
    if all(isinstance(d, int) for d in dims):
        return op.const(np.array([1, 1, *dims], np.int64))
    parts = []
    for x in values:
        rank = m.graph.rank(x)
        assert rank is not None  # a value with a dim -2 has a rank
        parts.append(op.Shape(x, start=rank - 2, end=rank - 1))
    return op.Concat(op.const(np.ones(2, np.int64)), *parts, axis=0)


def lowest(dtype: int) -> np.ndarray:
    return np.array(np.finfo(helper.tensor_dtype_to_np_dtype(dtype)).min)


def _next_up(low: np.ndarray) -> np.ndarray:
    """The float after the lowest: s + it equals it wherever s + lowest equals lowest."""
    return np.nextafter(low, np.zeros((), low.dtype))


def _np(dtype: int, value: float) -> np.ndarray:
    return np.array(value, helper.tensor_dtype_to_np_dtype(dtype))


def _native(op: RewriteBuilder, m: Match[None]) -> tuple[int, float, int, str | None]:
    """An exporter's own Attention: Q's dtype, the scale, the softmax dtype, the additive mask."""
    dt = m.dtype("q")
    assert dt is not None  # _check_native: Q is a float type
    scale = m.attr("scale")
    scale = 1 / math.sqrt(m.shape("q")[-1]) if scale is None else scale  # type: ignore[index]
    sdt = m.attr("softmax_precision") or dt
    mask = m.get("attn_mask")
    if mask and m.dtype("attn_mask") == TensorProto.BOOL:  # True takes part
        mask = op.Where(mask, op.const(_np(dt, 0.0)), op.const(_np(dt, -math.inf)))
    return dt, scale, sdt, mask  # type: ignore[return-value]


def native_plugin_args(op: RewriteBuilder, m: Match[None]) -> tuple[list[str], dict[str, Any]]:
    """An exporter's own Attention as AttentionPlugin's inputs and attributes."""
    dt, scale, sdt, mask = _native(op, m)
    return ([m["q"], m["k"], m["v"], mask or op.const(_np(dt, 0.0))],
            {"scale": scale, "softmax_precision": sdt, "has_mask": int(bool(mask))})


def emit_native_trt(op: RewriteBuilder, m: Match[None]) -> str:
    """An exporter's own Attention as the trt chain; K and V of fewer heads than Q (but more
    than one, which MatMul broadcasts) repeated to Q's heads in front of it."""
    dt, scale, sdt, mask = _native(op, m)
    heads = (m.shape("q") or (None, None))[1]
    assert isinstance(heads, int)  # _check_native: 4-D, heads known
    k, v = (repeat_heads(op, m[x], heads) for x in ("k", "v"))
    q = m["q"] if scale == 1.0 else op.Mul(m["q"], op.const(_np(dt, scale)))
    s = op.MatMul(q, op.Transpose(k, perm=[0, 1, 3, 2]))
    return _softmax_matmul(op, op.Add(s, mask) if mask else s, v, dt, sdt, guard=bool(mask))


def repeat_heads(op: RewriteBuilder, x: str, heads: int) -> str:
    """x (B, g, L, d) with each head repeated heads / g times in a row (HF's repeat_kv, the
    grouping of ONNX Attention); x itself where g is 1 or ``heads``."""
    dims = op.graph.shape(x)
    assert dims is not None and isinstance(dims[1], int)  # _check_native: 4-D, heads known
    g = dims[1]
    if g in (1, heads):
        return x
    wide = op.Expand(op.Unsqueeze(x, op.const(np.array([2], np.int64))),
                     op.const(np.array([1, 1, heads // g, 1, 1], np.int64)))
    if all(isinstance(d, int) for d in dims):
        shape = op.const(np.array([dims[0], heads, *dims[2:]], np.int64))
    else:
        shape = op.Concat(op.Shape(x, end=1), op.const(np.array([heads], np.int64)),
                          op.Shape(x, start=2), axis=0)
    return op.Reshape(wide, shape)
