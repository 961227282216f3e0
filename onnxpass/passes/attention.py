"""attention: fuse multi-head scaled dot-product attention, self or cross.

Matches, for Q (B,H,S,d), K (B,H,L,d), V (B,H,L,dv) after the head split, or the batched
(B*H, S, d) forms of all three:

    Y = MatMul(guard(Softmax(scale * Q K^T [masked by Where] [+ bias] [+ mask])), V)

in the forms exporters write:
- K^T as one Transpose of any perm ((0,2,3,1) from (B,S,H,d); (0,1,3,2); the outer of two),
  dynamo's Reshape(-1,L,d)-Transpose-Reshape(..,d,L) (its shapes read from Shape(K), or folded
  to constants equal to K's known dims), or a K given already transposed;
- grouped-query attention (Qwen2, Llama 3, Mistral; std and plugin form): K and V of g heads
  repeated to Q's H = g * n as HF's repeat_kv writes it, x[:, :, None].expand(B, g, n, L, d)
  .reshape(B, H, L, d): Unsqueeze at axis 2, Expand (or Tile: TorchScript's repeat_interleave),
  Reshape. Query head h then reads KV head h // n, as ONNX Attention groups heads: the fused
  node takes K and V un-repeated. What the repeat computes is proven from the shapes of its
  input, Expand/Tile and Reshape outputs: (B, g, L, d) -> (B, g, n, L, d) -> (B, g * n, L, d),
  with g and n known, n the same for K and V, and g * n Q's heads. Anything else (the new axis
  at 1, so head h reads h % g; K and V repeated differently; an Expand that also broadcasts L
  or d; a Reshape that does not merge the head and repeat axes) keeps the repeat, and the
  attention over its result is fused as above. trt form keeps every repeat: TensorRT's chain
  sees Q's heads;
- the scale as Mul or Div by a constant on the scores, on Q, on K (before or after its transpose),
  sqrt(scale) on both (TorchScript's scaled_dot_product_attention), or none: the fused scale is
  the product of them all; a factor per head ((H,1,1), MST++'s learnable rescale) goes onto Q;
- additive terms on the scaled scores (a mask from (1 - m) * -10000, finfo.min or -inf, a
  relative-position bias, or both), and masking as Where(cond, scores, fill) or its inverse;
- Softmax over the last axis (-1 or 3), between Casts or not (softmax in another precision, or
  no-op Casts, up to two on each side);
- dynamo's guard Where(IsNaN(p), 0, p) after the Softmax;
- TorchScript's float16 scaled_dot_product_attention with a float32 mask: the float16 scores
  Cast up to float32 before the mask, V Cast up for P V, the result float32. Every form then
  takes Q, K and V cast up (exact widenings) and computes in float32: the result differs from
  the original only by the original's float16 rounding of Q K^T (trt: Q's projection is then
  not folded).
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
In plugin and trt form an exporter's own 4-D Attention (dynamo at opset 23) is converted too,
grouped-query included (K and V of g heads, g dividing Q's heads): the plugin takes them as they
are, trt repeats them to Q's heads (Unsqueeze-Expand-Reshape, each head n times in a row) in
front of its chain. How each form is written: attention_emit.py.

Edges: a fully masked row (all scores -inf) gives zeros in every form, as the guard and ONNX
Attention do; where the original has no guard, that row was NaN. All other outputs are unchanged.
ONNX Runtime 1.31's Attention zeroes a row whose scores are all float32's lowest value (the spec
and the original give a uniform row), so std raises that value in attn_mask to the next float,
which gives the same scores for any |s| < 2^103. Batch and head dims that shape inference leaves
unknown are taken to be equal (exporters' head splits make them so); a repeat's batch dim left
unknown likewise is taken not to be broadcast (unless the other side is known to be 1).

Refused, with the reason shown by ``onnxpass match --explain``: Q/K/V of unknown rank or not 3-D
or 4-D; a scale that is neither a constant scalar nor one factor per head; Softmax over another
axis; Casts that change the output dtype; a Where fill other than -inf or float32's lowest value
(an additive mask cannot reproduce a finite fill on a fully masked row); and in std and plugin
form batch or head dims that MatMul broadcasts and Attention does not, a mask that broadcasts the
scores to a bigger shape. An exporter's own Attention whose K or V heads neither divide Q's
(equal for K and V) nor are 1 or Q's; of unknown heads or rank other than 4.

Constants: scales are bound (any finite nonzero value, folded exactly as written); the guard's
0 exactly; a constant scale or fill may not broadcast the scores to a bigger shape; K's folded
flat-form shapes exactly K's dims; a repeat's Expand target, Tile repeats and Reshape target are
bound and read through the shapes inferred from them.
Attributes checked: Softmax ``axis`` (bound; the last axis, which at opset < 13 is also what the
2-D coercion normalizes over); Transpose ``perm`` (bound and composed, or [0, 2, 1] / [0, 2, 1, 3]
exactly); Cast ``to`` (bound, checked), ``saturate``/``round_mode`` (irrelevant: float targets);
Shape ``start`` (0) and ``end`` (bound: absent); Concat ``axis`` (0); Reshape ``allowzero``
(bound and re-emitted in the trt form's projection; in K's flat form 0, or 1 where K's dims are
all known nonzero, so that no target entry is 0; in a K/V repeat bound: the output shape it is
inferred with is what is checked); Unsqueeze ``axes`` (bound, attribute or constant input: [2]
or [-3]); Expand, Tile, MatMul, Mul, Div, Add, Where, IsNaN, Slice have none. Native rule:
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
from onnxpass.passes.dims import UnprovenDims, proving_dims
from onnxpass.passes.normalize import FLOATS
from onnxpass.patterns import Alt, Const, Match, MatchFailure, PatternOps, PValue, Rule, Var

SCALES = ("q_scale", "k_scale", "kt_scale", "s_scale")
_LOWEST_F32 = -(2.0 ** 127)  # float32 finfo.min is below this; |s| < 2^103 vanishes against it


def make_pattern(fold_q: bool, gqa: bool, upcast: bool = True
                 ) -> Callable[[PatternOps, PValue, PValue, PValue], PValue]:
    """The attention core; with ``fold_q`` Q may also be matched with its projection, with
    ``gqa`` K and V with their repeat to Q's heads (grouped-query attention)."""

    def attention_pattern(op: PatternOps, q: PValue, k: PValue, v: PValue) -> PValue:
        def scaled(x: PValue, name: str) -> PValue:
            return Alt(mul=op.Mul(x, Const(name)), div=op.Div(x, Const(name)), none=x, tag=name)

        def casts(x: PValue, name: str) -> PValue:  # up to two, to the same type
            return op.Cast(op.Cast(x, to=Var(name)).optional(), to=Var(name)).optional()

        if gqa:
            k = Alt(repeat=repeated(op, "k"), plain=k, tag="k_repeat")
            v = Alt(repeat=repeated(op, "v"), plain=v, tag="v_repeat")
        if fold_q:
            linear = op.MatMul(Var("x_q"), Const("w_q"))
            heads = op.Reshape(op.Add(linear, Const("b_q")) | linear, Var("q_heads"),
                               allowzero=Var("q_allowzero"))
            q = Alt(proj=op.Transpose(heads, perm=[0, 2, 1, 3]), head=q, tag="q_proj")
        k_pre = scaled(k, "k_scale")
        dims = op.Shape(k_pre, start=0, end=Var("k_shape_end"))
        last, second = op.Slice(dims, -1, Const("k_end")), op.Slice(dims, -2, -1)
        flat_shape = op.Concat(-1, second, last, axis=0) | Const("k_flat")  # folded: constant
        flat = op.Reshape(k_pre, flat_shape, allowzero=Var("k_az_flat"))
        lead = op.Slice(dims, Const("k_start"), -2)
        unflat = Alt(op.Concat(lead, last, second, axis=0),
                     op.Concat(lead, Const("k_d"), Const("k_l"), axis=0), Const("k_unflat"))
        k_t = Alt(transpose=op.Transpose(k_pre, perm=Var("k_perm")),
                  flat=op.Reshape(op.Transpose(flat, perm=[0, 2, 1]), unflat,
                                  allowzero=Var("k_az_unflat")),
                  given=k_pre, tag="k_layout")
        scores = scaled(op.MatMul(scaled(q, "q_scale"), scaled(k_t, "kt_scale")), "s_scale")
        if upcast:  # float16 SDPA exports (TorchScript): scores and V cast up for a float32 mask
            scores = op.Cast(scores, to=Var("up")).optional()
            v = op.Cast(v, to=Var("v_up")).optional()
        where = Alt(where=op.Where(Var("cond"), scores, Const("fill")),
                    where_not=op.Where(Var("cond"), Const("fill"), scores), none=scores,
                    tag="where")
        masked = Alt(op.Add(op.Add(where, Var("bias")), Var("mask")), op.Add(where, Var("mask")),
                     where)
        p = casts(op.Softmax(casts(masked, "cast_in"), axis=Var("axis")), "cast_out")
        return op.MatMul(Alt(guard=op.Where(op.IsNaN(p), 0.0, p), none=p, tag="guard"), v)

    return attention_pattern


def repeated(op: PatternOps, x: str) -> PValue:
    """HF's repeat_kv: x[:, :, None].expand(b, g, n, L, d).reshape(b, g * n, L, d); Tile for the
    expand is TorchScript's repeat_interleave. What it computes is checked by ``_repeat``."""
    grown = op.Unsqueeze(Var(f"{x}_kv"), axes=Var(f"{x}_axes"))
    wide = op.Expand(grown, Var(f"{x}_reps")) | op.Tile(grown, Var(f"{x}_reps"))
    return op.Reshape(wide, Var(f"{x}_merged"), allowzero=Var(f"{x}_merge_allowzero"))


@proving_dims
def check_attention(m: Match[Core], form: str) -> Core | MatchFailure:
    kv = _kv_inputs(m)
    if isinstance(kv, MatchFailure):
        return kv
    k, v, group = kv
    v_cast = None
    if "v_up" in m and "up" not in m:  # V is cast, the scores are not: the rewrite casts V too
        if group is not None:
            return MatchFailure("V is cast after its repeat to Q's heads, the scores are not")
        v_cast = m.attr("v_up")
    g = m.graph
    q = "q" if m.get("q") else "x_q"
    v_type = v_cast or g.dtype(v)
    if m.dtype(q) not in FLOATS or v_type != m.dtype(q):
        return MatchFailure(f"Q/V dtypes {m.dtype(q)}/{v_type} are not one float type")
    r = g.rank(v)
    if r not in (3, 4) or g.rank(k) != r or (m.rank("q") if m.get("q") else 4) != r:
        return MatchFailure(f"Q/K/V ranks {m.get('q') and m.rank('q')}/{g.rank(k)}/{r}: "
                            f"expected all 3 or all 4")
    if m.attr("axis") not in (-1, r - 1):
        return MatchFailure(f"Softmax over axis {m.attr('axis')}, not the last one")
    scales = _scale(m, r)
    if isinstance(scales, MatchFailure):
        return scales
    scale, head_scale = scales
    k_perm, kt_perm = _k_layout(m, r, g.shape(k))
    if isinstance(k_perm, MatchFailure):
        return k_perm
    if group is not None and k_perm is not None and k_perm[:2] != [0, 1]:
        return MatchFailure(f"K is repeated along its dim 1 but its heads are dim {k_perm[1]}")
    dt = v_type
    up = _upcast(m, dt)
    if isinstance(up, MatchFailure):
        return up
    dt = up or dt
    sdt = m.attr("cast_in") if "cast_in" in m else dt
    out = m.attr("cast_out") if "cast_out" in m else sdt
    if dt is None or sdt is None or out != dt or sdt not in FLOATS:
        return MatchFailure(f"Softmax runs in type {sdt} and returns {out}; Q is {dt}")
    k_in, v_in = (m["k_kv"], m["v_kv"]) if group is not None else (k, v)
    core = Core(r, scale, dt, sdt, k_perm, kt_perm, k_in, v_in, expand_mask=False,
                head_scale=head_scale, kv_group=group, upcast=up is not None, v_cast=v_cast)
    if form == "trt":
        failure = _check_trt(m, core)
        return core if failure is None else failure
    expand_mask = _check_shapes(m, core, g.shape(k), g.shape(v))
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


def _upcast(m: Match[Core], dt: int | None) -> int | None | MatchFailure:
    """TorchScript's float16 scaled_dot_product_attention adds a float32 mask: the scores are
    cast up to float32 after Q K^T, V is cast up for P V, and the attention returns float32.
    Returns that wider type (the fused op then takes Q, K, V cast up: exact widenings), None
    where nothing is cast up."""
    up, v_up = (m.attr(n) if n in m else None for n in ("up", "v_up"))
    if up is None:
        return None
    if v_up != up:
        return MatchFailure(f"the scores are cast to {up} and V to {v_up}: not one wider type")
    if up not in _WIDER.get(dt or 0, ()):
        return MatchFailure(f"the scores of type {dt} are cast to {up}, which is not wider")
    return int(up)


_WIDER: dict[int, tuple[int, ...]] = {
    TensorProto.FLOAT16: (TensorProto.FLOAT, TensorProto.DOUBLE),
    TensorProto.BFLOAT16: (TensorProto.FLOAT, TensorProto.DOUBLE),
    TensorProto.FLOAT: (TensorProto.DOUBLE,)}


def _kv_inputs(m: Match[Core]) -> tuple[str, str, int | None] | MatchFailure:
    """K and V as the MatMuls see them, and where both are repeated to Q's heads as HF's
    repeat_kv does it (each of g heads n times in a row), n: the fused op takes them
    un-repeated. None: they are taken as they are (a repeat stays in front of the fused op)."""
    tags = [m.tag(f"{x}_repeat") if f"{x}_repeat" in m else "plain" for x in "kv"]
    if tags == ["plain", "plain"]:
        return m["k"], m["v"], None
    if tags[0] != tags[1]:
        return MatchFailure(f"{'K' if tags[0] == 'repeat' else 'V'} is repeated to Q's heads, "
                            f"{'V' if tags[0] == 'repeat' else 'K'} is not")
    k, v = _repeat(m, "k"), _repeat(m, "v")
    if isinstance(k, MatchFailure):
        return k
    if isinstance(v, MatchFailure):
        return v
    if k[1:] != v[1:]:
        return MatchFailure(f"K repeats {k[1]} heads {k[2]} times, V {v[1]} heads {v[2]} times")
    heads = (m.shape("q") or (None, None))[1]
    if heads != k[1] * k[2]:
        return UnprovenDims(f"Q has {heads} heads, K and V {k[1]} repeated {k[2]} times")
    return k[0], v[0], k[2]


def _repeat(m: Match[Core], x: str) -> tuple[str, int, int] | MatchFailure:
    """What the matched repeat of ``x`` computes, from its shapes: (B, g, L, d) -> Unsqueeze at
    2 -> (B, g, 1, L, d) -> Expand or Tile -> (B, g, n, L, d) -> Reshape -> (B, g * n, L, d),
    each head n times in a row (query head h reads head h // n, as ONNX Attention groups them).
    Returns the repeated value, g and n; a batch dim left unknown is taken not to broadcast."""
    name = x.upper()
    axes = [int(a) for a in np.asarray(m.attr(f"{x}_axes")).reshape(-1)]
    if axes not in ([2], [-3]):
        return MatchFailure(f"{name}'s repeat adds axis {axes}, not 2 (after the heads): it "
                            f"is not a repeat of each head in a row")
    wide = _fed(m, ("Expand", "Tile"), _fed(m, ("Unsqueeze",), m[f"{x}_kv"]))
    merged = _fed(m, ("Reshape",), wide)
    s, e, r = m.shape(f"{x}_kv"), m.graph.shape(wide), m.graph.shape(merged)
    if s is None or e is None or r is None or (len(s), len(e), len(r)) != (4, 5, 4):
        return UnprovenDims(f"{name}'s repeat {s} -> {e} -> {r}: shapes unknown or not 4-D "
                            f"-> 5-D -> 4-D")
    g, n = s[1], e[2]
    if not (isinstance(g, int) and isinstance(n, int) and e[1] == g
            and _same(s[0], e[0], batch=True) and _same(s[2], e[3]) and _same(s[3], e[4])):
        return UnprovenDims(f"{name}'s Expand/Tile {list(s[:2])} + [1] + {list(s[2:])} -> "
                            f"{list(e)} does not only repeat each head")
    if not (r[1] == g * n and _same(e[0], r[0], batch=True) and _same(e[3], r[2])
            and _same(e[4], r[3])):
        return UnprovenDims(f"{name}'s Reshape {list(e)} -> {list(r)} does not merge the head "
                            f"and repeat axes")
    return merged, g, n


def _fed(m: Match[Core], op_types: tuple[str, ...], value: str) -> str:
    """The output of the matched node of one of ``op_types`` whose first input is ``value``."""
    return next(n.outputs[0] for n in m.nodes if n.op_type in op_types and n.inputs[0] == value)


def _same(a: Any, b: Any, batch: bool = False) -> bool:
    """Dims known equal (ints or one symbol); with ``batch``, also one unknown and neither 1."""
    if a is not None and a == b:
        return True
    return batch and (a is None or b is None) and 1 not in (a, b)


def _k_layout(m: Match, r: int, ks: Any) -> tuple[Any, list[int] | None]:
    swap = [*range(r - 2), r - 1, r - 2]
    layout = m.tag("k_layout")
    if layout == "flat":
        if not _flat_swaps(m, r, ks):
            why = "K's Reshape-Transpose-Reshape does not swap its last two dims"
            return MatchFailure(why), None
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


def _flat_swaps(m: Match[Core], r: int, ks: Any) -> bool:
    """K's flat form Reshape(K, [-1, L, d]) -> Transpose(0, 2, 1) -> Reshape(K.shape[:-2] + [d,
    L]) swaps K's last two dims: the shapes read whole from Shape(K), or (folded) constants
    equal to K's known dims."""
    def value(name: str) -> list[Any] | None:  # None: the match did not bind it
        return m.const(name).reshape(-1).tolist() if name in m else None

    start, end = value("k_start"), value("k_end")
    if ("k_shape_end" in m and m.attr("k_shape_end") is not None) or (
            start is not None and not (len(start) == 1 and (start[0] == 0 or start[0] <= -r))) \
            or (end is not None and not (len(end) == 1 and end[0] >= r)):
        return False
    *lead, length, d = list(ks) if ks is not None and len(ks) == r else [None] * r
    known = [x for x in lead if isinstance(x, int)]
    rows = math.prod(known) if len(known) == len(lead) else None
    folded = {"k_flat": ([-1, length, d], [rows, length, d]), "k_d": ([d],), "k_l": ([length],),
              "k_unflat": ([*lead, d, length],)}
    return all(value(n) is None or any(value(n) == w and None not in w for w in ws)
               for n, ws in folded.items())


def _check_shapes(m: Match[Core], core: Core, ks: Any, vs: Any) -> bool | MatchFailure:
    """Batch and head dims of Q and of K and V (``ks``, ``vs``: as the MatMuls see them) must
    agree where MatMul would broadcast them (Attention does not); masks must not broadcast the
    scores up. Unknown dims are taken to agree. Returns whether the mask must be expanded to
    (.., S, L)."""
    qs = m.shape("q") if m.get("q") else None
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
    if m.tag("q_proj") == "proj" and core.upcast:
        return MatchFailure("the scores are cast up: Q's projection is not folded (its weights "
                            "are of the narrower type)")
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
        "cast_out" in m and core.softmax_dtype == core.dtype, core.upcast]
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
        fuse = Rule(name="attention", pattern=make_pattern(fold_q=form == "trt",
                                                            gqa=form != "trt"),
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
    hq, hk, hv = (s[1] for s in shapes)
    if not (isinstance(hq, int) and isinstance(hk, int) and isinstance(hv, int)
            and min(hq, hk, hv) > 0 and (hk in (1, hq) and hv in (1, hq)  # MatMul broadcasts
                                         or hk == hv and hq % hk == 0)):  # grouped-query
        return MatchFailure(f"Q/K/V heads {[hq, hk, hv]}: neither MHA, MQA nor grouped-query "
                            f"attention")
    if m.attr("scale") is None and not isinstance(shapes[0][-1], int):
        return MatchFailure("the default scale needs Q's head size, which is not known")
    mask = m.get("attn_mask")
    if dt not in FLOATS or (mask and m.dtype("attn_mask") not in (TensorProto.BOOL, dt)):
        return MatchFailure(f"Q dtype {dt}, attn_mask dtype {mask and m.dtype('attn_mask')}")
    return None
