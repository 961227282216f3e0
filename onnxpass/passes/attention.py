"""attention: fuse multi-head scaled dot-product attention, self or cross.

Matches, for Q (B,H,S,d), K (B,H,L,d), V (B,H,L,dv) after the head split, or the batched
(B*H, S, d) forms of all three:

    Y = MatMul(guard(Softmax(scale * Q K^T [masked by Where] [+ bias] [+ mask])), V)

in the forms exporters write:
- K^T as one Transpose of any perm ((0,2,3,1) from (B,S,H,d); (0,1,3,2); the outer of two),
  dynamo's Reshape(-1,L,d)-Transpose-Reshape(..,d,L), or a K given already transposed;
- the scale as Mul or Div by a constant on the scores, on Q, on K (before or after its transpose),
  sqrt(scale) on both (TorchScript's scaled_dot_product_attention), or none: the fused scale is
  the product of them all; a factor per head ((H,1,1), MST++'s learnable rescale) goes onto Q;
- additive terms on the scaled scores (a mask from (1 - m) * -10000, finfo.min or -inf, a
  relative-position bias, or both), and masking as Where(cond, scores, fill) or its inverse;
- Softmax over the last axis (-1 or 3), between Casts or not (softmax in another precision, or
  no-op Casts, up to two on each side);
- dynamo's guard Where(IsNaN(p), 0, p) after the Softmax.
The fused node spans Q, K, V (after the head split) through MatMul(p, V): projections, packed
QKV (Slice, Split, Gather/Squeeze), head split and head merge stay ordinary nodes.

Forms:
- ``std`` (default): ONNX Attention (opset 23, raised when needed; TensorRT >= 10.14 imports it).
  Q, K, V go in 4-D as TensorRT needs (the batched form as (B*H, 1, S, d)), the scale explicitly,
  the additive terms summed into attn_mask and expanded to (.., S, L) unless its last two dims
  are known to be (S, L) (ONNX Runtime requires them), softmax_precision when the Softmax runs in
  another precision.
- ``plugin``: AttentionPlugin(q, k, v, mask) (see onnxpass/plugins/attention.py).
- ``trt``: the chain TensorRT fuses by itself, MatMul(Q', K^T) -> [mask] -> Softmax -> MatMul(p, V),
  with the whole scale in Q': folded into Q's projection weights when it is a power of two (exact)
  and the projection feeds only this attention, else one Mul on Q. A NaN guard moves after the
  output MatMul, where it zeroes the same rows without splitting the chain.
In plugin and trt form an exporter's own 4-D Attention (dynamo at opset 23) is converted too.
How each form is written: attention_emit.py.

Edges: a fully masked row (all scores -inf) gives zeros in every form, as the guard and ONNX
Attention do; where the original has no guard, that row was NaN. All other outputs are unchanged.
ONNX Runtime 1.31's Attention zeroes a row whose scores are all float32's lowest value (the spec
and the original give a uniform row), so std raises that value in attn_mask to the next float,
which gives the same scores for any |s| < 2^103. Batch and head dims that shape inference leaves
unknown are taken to be equal (exporters' head splits make them so).

Refused, with the reason shown by ``onnxpass match --explain``: Q/K/V of unknown rank or not 3-D
or 4-D; a scale that is neither a constant scalar nor one factor per head; Softmax over another
axis; Casts that change the output dtype; a Where fill other than -inf or float32's lowest value
(an additive mask cannot reproduce a finite fill on a fully masked row); and in std and plugin
form batch or head dims that MatMul broadcasts and Attention does not, a mask that broadcasts the
scores to a bigger shape.

Constants: scales are bound (any finite nonzero value, folded exactly as written); the guard's
0 exactly; a constant scale or fill may not broadcast the scores to a bigger shape.
Attributes checked: Softmax ``axis`` (bound; the last axis, which at opset < 13 is also what the
2-D coercion normalizes over); Transpose ``perm`` (bound and composed, or [0, 2, 1] / [0, 2, 1, 3]
exactly); Cast ``to`` (bound, checked), ``saturate``/``round_mode`` (irrelevant: float targets);
Shape ``start`` (0) and ``end`` (bound: absent); Concat ``axis`` (0); Reshape ``allowzero``
(bound and re-emitted in the trt form's projection; in K's flat form 0, or 1 where K's dims are
all known nonzero, so that no target entry is 0); MatMul, Mul, Div, Add, Where, IsNaN, Slice
have none. Native rule:
Attention ``is_causal`` (0), ``softcap`` (0), ``scale``, ``q_num_heads`` (absent: 4-D only),
``softmax_precision`` (bound); ``kv_num_heads``, ``qk_matmul_output_mode`` and the window sizes
must hold their defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from onnx import TensorProto

from onnxpass.passes.attention_emit import (
    TERMS,
    Core,
    emit_fused,
    emit_native_trt,
    emit_trt,
    lowest,
    native_plugin_args,
)
from onnxpass.passes.base import PatternPass, native_pattern, native_plugin_rule, register
from onnxpass.passes.normalize import FLOATS
from onnxpass.patterns import Alt, Const, Match, MatchFailure, PatternOps, PValue, Rule, Var

SCALES = ("q_scale", "k_scale", "kt_scale", "s_scale")
_LOWEST_F32 = -(2.0 ** 127)  # float32 finfo.min is below this; |s| < 2^103 vanishes against it


def make_pattern(fold_q: bool) -> Callable[[PatternOps, PValue, PValue, PValue], PValue]:
    """The attention core; with ``fold_q`` Q may also be matched with its projection."""

    def attention_pattern(op: PatternOps, q: PValue, k: PValue, v: PValue) -> PValue:
        def scaled(x: PValue, name: str) -> PValue:
            return Alt(mul=op.Mul(x, Const(name)), div=op.Div(x, Const(name)), none=x, tag=name)

        def casts(x: PValue, name: str) -> PValue:  # up to two, to the same type
            return op.Cast(op.Cast(x, to=Var(name)).optional(), to=Var(name)).optional()

        if fold_q:
            linear = op.MatMul(Var("x_q"), Const("w_q"))
            heads = op.Reshape(op.Add(linear, Const("b_q")) | linear, Var("q_heads"),
                               allowzero=Var("q_allowzero"))
            q = Alt(proj=op.Transpose(heads, perm=[0, 2, 1, 3]), head=q, tag="q_proj")
        k_pre = scaled(k, "k_scale")
        dims = op.Shape(k_pre, start=0, end=Var("k_shape_end"))
        last, second = op.Slice(dims, -1, Const("k_end")), op.Slice(dims, -2, -1)
        flat = op.Reshape(k_pre, op.Concat(-1, second, last, axis=0), allowzero=Var("k_az_flat"))
        unflat = op.Concat(op.Slice(dims, Const("k_start"), -2), last, second, axis=0)
        k_t = Alt(transpose=op.Transpose(k_pre, perm=Var("k_perm")),
                  flat=op.Reshape(op.Transpose(flat, perm=[0, 2, 1]), unflat,
                                  allowzero=Var("k_az_unflat")),
                  given=k_pre, tag="k_layout")
        scores = scaled(op.MatMul(scaled(q, "q_scale"), scaled(k_t, "kt_scale")), "s_scale")
        where = Alt(where=op.Where(Var("cond"), scores, Const("fill")),
                    where_not=op.Where(Var("cond"), Const("fill"), scores), none=scores,
                    tag="where")
        masked = Alt(op.Add(op.Add(where, Var("bias")), Var("mask")), op.Add(where, Var("mask")),
                     where)
        p = casts(op.Softmax(casts(masked, "cast_in"), axis=Var("axis")), "cast_out")
        return op.MatMul(Alt(guard=op.Where(op.IsNaN(p), 0.0, p), none=p, tag="guard"), v)

    return attention_pattern


def check_attention(m: Match[Core], form: str) -> Core | MatchFailure:
    q = "q" if m.get("q") else "x_q"
    if m.dtype(q) not in FLOATS or m.dtype("v") != m.dtype(q):
        return MatchFailure(f"Q/V dtypes {m.dtype(q)}/{m.dtype('v')} are not one float type")
    r = m.rank("v")
    if r not in (3, 4) or m.rank("k") != r or (m.rank("q") if m.get("q") else 4) != r:
        return MatchFailure(f"Q/K/V ranks {m.get('q') and m.rank('q')}/{m.rank('k')}/{r}: "
                            f"expected all 3 or all 4")
    if m.attr("axis") not in (-1, r - 1):
        return MatchFailure(f"Softmax over axis {m.attr('axis')}, not the last one")
    scales = _scale(m, r)
    if isinstance(scales, MatchFailure):
        return scales
    scale, head_scale = scales
    k_perm, kt_perm = _k_layout(m, r)
    if isinstance(k_perm, MatchFailure):
        return k_perm
    dt = m.dtype("v")
    sdt = m.attr("cast_in") if "cast_in" in m else dt
    out = m.attr("cast_out") if "cast_out" in m else sdt
    if dt is None or sdt is None or out != dt or sdt not in FLOATS:
        return MatchFailure(f"Softmax runs in type {sdt} and returns {out}; Q is {dt}")
    core = Core(r, scale, dt, sdt, k_perm, kt_perm, expand_mask=False, head_scale=head_scale)
    if form == "trt":
        failure = _check_trt(m, core)
        return core if failure is None else failure
    expand_mask = _check_shapes(m, core)
    if isinstance(expand_mask, MatchFailure):
        return expand_mask
    raise_lowest = _check_fused(m, core, form)
    if isinstance(raise_lowest, MatchFailure):
        return raise_lowest
    return replace(core, expand_mask=expand_mask, raise_lowest=raise_lowest)


def _scale(m: Match, rank: int) -> tuple[float, np.ndarray | None] | MatchFailure:
    """The scalar scale, and a per-head factor (shape (1, H, 1, 1)) where a scale varies only
    along the head axis (MST++'s learnable rescale): folded into Q, it scales each head's scores
    alike. A scale on K before its transpose must be a scalar (its layout is not known here)."""
    scale, head = 1.0, None
    for name in SCALES:
        if m.tag(name) == "none":
            continue
        c = m.const(name).astype(np.float64)
        if not np.isfinite(c).all() or (c == 0).any():
            return MatchFailure(f"{name} {c.reshape(-1)[:4].tolist()} is not finite and nonzero")
        if c.size == 1:
            value = float(c.reshape(-1)[0])
            scale = scale * value if m.tag(name) == "mul" else scale / value
            continue
        per_head = c.reshape((1,) * (4 - c.ndim) + c.shape) if c.ndim <= 4 else None
        if (rank != 4 or name == "k_scale" or per_head is None
                or per_head.shape[0] != 1 or per_head.shape[2:] != (1, 1)):
            return MatchFailure(f"{name} of shape {list(c.shape)} is neither a scalar nor one "
                                f"factor per head")
        factor = per_head if m.tag(name) == "mul" else 1.0 / per_head
        head = factor if head is None else head * factor
    return scale, head


def _k_layout(m: Match, r: int) -> tuple[Any, list[int] | None]:
    swap = [*range(r - 2), r - 1, r - 2]
    layout = m.tag("k_layout")
    if layout == "flat":
        start, end = m.const("k_start").reshape(-1), m.const("k_end").reshape(-1)
        if m.attr("k_shape_end") is not None or start.size != 1 or end.size != 1 or not (
                (start[0] == 0 or start[0] <= -r) and end[0] >= r):
            why = "K's Reshape-Transpose-Reshape does not swap its last two dims"
            return MatchFailure(why), None
        ks = m.shape("k")
        if (m.attr("k_az_flat") or m.attr("k_az_unflat")) and not (
                ks and all(isinstance(d, int) and d > 0 for d in ks)):
            return MatchFailure("K's Reshapes set allowzero and K may have an empty dim"), None
        return None, swap
    if layout == "given":
        return swap, None
    perm = [int(p) for p in m.attr("k_perm")]
    if sorted(perm) != list(range(r)):
        return MatchFailure(f"K's Transpose perm {perm} is not a rank-{r} permutation"), None
    k_perm = [perm[j] for j in swap]
    return (None if k_perm == list(range(r)) else k_perm), perm


def _check_shapes(m: Match[Core], core: Core) -> bool | MatchFailure:
    """Batch and head dims must agree where MatMul would broadcast them (Attention does not);
    masks must not broadcast the scores up. Unknown dims are taken to agree. Returns whether
    the mask must be expanded to (.., S, L)."""
    qs = m.shape("q") if m.get("q") else None
    ks, vs = m.shape("k"), m.shape("v")
    if ks is not None and core.k_perm is not None:
        ks = tuple(ks[p] for p in core.k_perm)
    for axis in range(core.rank - 2):  # batch (or batch*heads), heads: K/V heads may be 1 (MQA)
        want = qs[axis] if qs is not None else None
        for s in (ks, vs):
            d = None if s is None else s[axis]
            if isinstance(d, int) and isinstance(want, int) and d != want and not (
                    axis == 1 and d == 1):
                return MatchFailure(f"Q/K/V dim {axis} is {want} and {d}: MatMul broadcasts "
                                    f"it, Attention does not")
    scores = None if qs is None or vs is None else (*qs[:-1], vs[-2])
    for name in (*TERMS, "cond"):
        if m.get(name) is None:
            continue
        shape = m.shape(name)
        if shape is None or len(shape) > core.rank:
            return MatchFailure(f"{name} has rank {shape and len(shape)}: it may broadcast the "
                                f"rank-{core.rank} scores up")
        if scores is not None and any(isinstance(a, int) and isinstance(b, int) and a not in (1, b)
                                      for a, b in zip(shape[::-1], scores[::-1])):
            return MatchFailure(f"{name} of shape {shape} does not broadcast to scores {scores}")
    return not any(_ends_in(m.shape(n), scores) for n in (*TERMS, "cond") if m.get(n))


def _ends_in(shape: Any, scores: Any) -> bool:
    """shape's last two dims are known to be the scores' (S, L)."""
    return bool(shape and scores and len(shape) >= 2 and all(
        a is not None and a == b for a, b in zip(shape[-2:], scores[-2:])))


def _check_fused(m: Match[Core], core: Core, form: str) -> bool | MatchFailure:
    """Returns whether std's attn_mask may hold the dtype's lowest value (see emit_fused)."""
    if m.tag("where") != "none":
        fill = m.const("fill")
        f = float(fill.reshape(-1)[0]) if fill.size == 1 else math.nan
        if not (f == -math.inf or (f <= _LOWEST_F32 and m.dtype("fill") == TensorProto.FLOAT)):
            return MatchFailure(f"Where fills masked scores with {fill.reshape(-1)[:2].tolist()}: "
                                f"an additive mask gives a fully masked row another result")
    return form == "std" and any(
        not m.is_const(n) or bool((m.const(n) == lowest(core.dtype)).any())
        for n in TERMS if m.get(n))


def _check_trt(m: Match[Core], core: Core) -> MatchFailure | None:
    if m.tag("q_proj") == "proj":
        if core.head_scale is not None:
            return MatchFailure("a per-head scale is not folded into Q's projection")
        if core.scale == 1.0:
            return MatchFailure("no scale to fold into Q's projection")
        if math.frexp(core.scale)[0] != 0.5:
            return MatchFailure(f"scale {core.scale:g} is not a power of two: folding it into "
                                f"Q's projection would not be exact")
        return None
    changes = [m.tag(s) != "none" for s in SCALES[1:]] + [
        m.tag("q_scale") == "div", m.tag("guard") == "guard", m.tag("k_layout") == "flat",
        "cast_in" in m and m.attr("cast_in") == core.dtype,
        "cast_out" in m and core.softmax_dtype == core.dtype]
    if not any(changes):
        return MatchFailure("already TensorRT's canonical MatMul-Softmax-MatMul")
    return None


@register
class Attention(PatternPass):
    name = "attention"
    summary = ("fuse scaled dot-product attention -> Attention (std), AttentionPlugin (plugin) or "
               "TensorRT's canonical MatMul-Softmax-MatMul (trt)")
    forms = ("std", "plugin", "trt")
    default_form = "std"
    required_opset = {"std": 23}

    def rules(self) -> list[Rule]:
        form = self.form or "std"
        rewrite = (lambda op, m: emit_trt(op, m)) if form == "trt" else (
            lambda op, m: emit_fused(op, m, form))
        fuse = Rule(name="attention", pattern=make_pattern(fold_q=form == "trt"),
                    check=lambda m: check_attention(m, form), rewrite=rewrite)
        if form == "std":
            return [fuse]
        if form == "plugin":
            return [fuse, native_plugin_rule("attention-native", "Attention", "AttentionPlugin",
                                             _NATIVE_INPUTS, attrs=_NATIVE_ATTRS, optional=1,
                                             check=_check_native, convert=native_plugin_args)]
        native = native_pattern("Attention", _NATIVE_INPUTS, _NATIVE_ATTRS, optional=1)
        return [fuse, Rule(name="attention-native", pattern=native, check=_check_native,
                           rewrite=emit_native_trt)]


# ---- an exporter's own Attention (dynamo at opset 23), in plugin and trt form -----------------

_NATIVE_INPUTS = ("q", "k", "v", "attn_mask")
_NATIVE_ATTRS = {"is_causal": 0, "softcap": 0.0, "scale": Var("scale"), "q_num_heads": Var("heads"),
                 "softmax_precision": Var("softmax_precision")}


def _check_native(m: Match[None]) -> MatchFailure | None:
    dt = m.dtype("q")
    shapes = [s for s in (m.shape(n) for n in ("q", "k", "v")) if s is not None and len(s) == 4]
    if m.attr("heads") is not None or len(shapes) != 3:
        return MatchFailure("not the 4-D form of Attention")
    heads = [s[1] for s in shapes]
    if not all(isinstance(h, int) for h in heads) or any(h not in (1, heads[0]) for h in heads):
        return MatchFailure(f"Q/K/V heads {heads}: only MHA or MQA is MatMul's broadcast")
    if m.attr("scale") is None and not isinstance(shapes[0][-1], int):
        return MatchFailure("the default scale needs Q's head size, which is not known")
    mask = m.get("attn_mask")
    if dt not in FLOATS or (mask and m.dtype("attn_mask") not in (TensorProto.BOOL, dt)):
        return MatchFailure(f"Q dtype {dt}, attn_mask dtype {mask and m.dtype('attn_mask')}")
    return None
