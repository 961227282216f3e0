"""canonical: small exact rewrites that put exporters' spellings of one computation into one form.

Every pattern pass sees the canonical graph: the pipeline runner runs this pass once before the
first pattern pass of a list that does not name it (``onnxpass run --passes attention`` runs
``canonical,attention``), and the ``default`` and ``plugins`` pipelines name it after ``noop`` and
``cse``. So a spelling handled here needs no alternative in any pattern. Each rule returns the
value bit for bit unless its entry says otherwise, and looks only at the node it is rooted at and
its producers (one walk of the graph, rules indexed by root op).

Matches
- ``cast-round-trip``: Cast(Cast(x: T, to=W), to=T) -> x, where W holds every value of T exactly:
  float16 -> float, double; bfloat16 -> float, double; float -> double; an integer type -> a wider
  integer type, or a float type whose significand holds it (int8/uint8 -> float16, bfloat16;
  16-bit -> float; 32-bit -> double); bool -> any number type. TorchScript writes float16
  ``softmax(dtype=float32).to(float16)`` as Softmax -> Cast(float) -> Cast(float16). The inner
  Cast stays for its other users, if any. A narrowing pair (float -> float16 -> float) rounds:
  never removed.
- ``cast``, ``castlike``: a Cast or CastLike to the type x already has -> x (handed over from
  ``noop``; its shape check: x's shape, all static, unchanged, not a graph output).
- ``transpose-pair``: Transpose(Transpose(x, p), q) -> x when the permutations cancel.
- ``reshape-pair``: Reshape(Reshape(x, a), b) -> x when the result provably has x's shape: from
  static or symbolic dims (const_slice's proof), or b computed from Shape(x) (Shape, Slice with
  step 1, Gather, Concat, Unsqueeze, Squeeze, Cast of shape values), entry by entry x's own dims.
  Decoder self-attention on (B*heads, T, d) tensors writes attn.view(B, heads, T, S) then
  .view(B*heads, T, S) between the Softmax and the value MatMul. (const_slice merges the pairs
  that are not an identity, and cancels these too when it runs.)
- ``add-in-reshape-pair``: Reshape(Reshape(x, a) + t, b) -> x + Reshape(Expand(t, a), b) when
  the pair gives x's shape back (the reshape-pair proof), t does not broadcast the sum beyond
  Reshape(x, a)'s shape, and a holds no 0 entry, nor a -1 where t is broadcast (a -1 becomes 1
  in the Expand target, which keeps t's own dim there; dynamo writes view(-1, heads, T, S)): a
  Reshape only re-indexes, so adding the term re-indexed alike to x is the same sum, element for
  element. BART-style decoder
  self-attention (Whisper) adds its causal mask so: scores (B*heads, T, S) viewed as (B, heads,
  T, S), + mask (B, 1, T, S), viewed back; the attention pattern then sees an additive term on
  the 3-D scores.
- ``sum-to-mean``: ReduceSum(x, axes) / N or ReduceSum(x, axes) * (1/N), N the static product of
  the reduced dims -> ReduceMean(x, axes) (tf2onnx's mean). ReduceMean is the sum divided by N,
  so the Div form is bit-exact. The Mul form (tf2onnx's spelling) multiplies by 1/N rounded to
  x's dtype: it is accepted when the constant is exactly that rounding (0 ULP, a normal number),
  as the matcher accepts a constant an exporter computed; it is then bit-exact when N is a power
  of two and otherwise differs from the sum / N of ReduceMean by that rounding of 1/N at most.
  A 0.3 that is not 1/N never matches.
- ``pool-to-mean``: GlobalAveragePool(x) -> ReduceMean(x, axes 2..rank-1, keepdims 1), the
  same mean (tf2onnx writes Keras 3's LayerNorm moments over the last axis of a rank-3 x so).
- ``expand-scalar``: op(Expand(c, shape), y) or op(y, Expand(c, shape)) (or Tile) for a
  one-element constant c and a broadcasting binary op (Add, Sub, Mul, Div, Pow, Max, Min, Mod,
  comparisons, And, Or, Xor) -> op(c, y) in the same order, when the Expand cannot change the
  result's shape: tile's broadcast rule and proof (y has every dim the Expand makes, at the same
  size; a shape built at run time from Shape(y), Gather and Concat is read entry by entry).
  tf2onnx broadcasts scalar constants (LayerNorm's eps) to run-time shapes so. The Expand stays
  for its other users, if any.
- ``sub-neg``: Sub(a, Neg(b)) -> Add(a, b) (a - (-b) is a + b in IEEE and in wrapping integers).
- ``div-pow2``: Div(x, c), c a float constant whose every element is a power of two with an
  exactly representable reciprocal (not 1: ``noop`` drops x / 1) -> Mul(x, 1/c): x / 2^k and
  x * 2^-k round the same real number. Div by sqrt 2 (GELU) or by 3 stays a Div.

Never fires when a dtype or a shape the proof needs is unknown, a pair's result is a graph output
(returning x would only move the name, through an Identity), the expanded constant has more than
one element or the Expand makes a dim y lacks, the reduced dims are not static, or the constant
is not exactly N, 1/N (rounded) or a power of two.

Constants: 1/N (0 ULP in its dtype, and normal) and N (exactly) for the mean; powers of two
exactly (checked, not matched); c of ``expand-scalar`` is bound (one element, any value).
Attributes checked: Cast ``to`` (bound, checked), ``saturate``/``round_mode`` (irrelevant: they
act on float8 targets only, and no pair here has one); CastLike's the same; Transpose ``perm``
(bound and composed; absent means reversed); Reshape ``allowzero`` (bound; with 0, a 0 entry
copies a dim, which the proof resolves); ReduceSum ``axes`` (bound, attribute or input,
constant), ``keepdims`` (bound and re-emitted), ``noop_with_empty_axes`` (the default unless axes
are given); in shape values, Shape ``start``/``end`` (bound), Gather and Concat ``axis`` (0 or
-1), Slice's inputs (constant, step 1), Unsqueeze/Squeeze ``axes`` (0 or -1); Expand, Tile, Sub,
Neg, Div and Mul have none; the binary op of ``expand-scalar`` keeps its attributes (Mod's
``fmod``), copied.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from onnx import TensorProto

from onnxpass.graph import NOT_CONSTANT, Dim, Graph, shape_range
from onnxpass.passes.base import PatternPass, register
from onnxpass.passes.cleanup import cast_noop_rules
from onnxpass.passes.const_slice import check_transpose_pair
from onnxpass.passes.dims import proving_dims, reshape_dims, same, same_shape
from onnxpass.passes.normalize import FLOATS
from onnxpass.passes.tile import broadcast_pattern, check_broadcast, emit_broadcast
from onnxpass.patterns import (
    Alt,
    Const,
    Match,
    MatchFailure,
    PatternOps,
    PValue,
    RewriteBuilder,
    Rule,
    Var,
)

_F16, _BF16, _F32, _F64 = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT,
                           TensorProto.DOUBLE)
_I8, _I16, _I32, _I64 = TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64
_U8, _U16, _U32, _U64 = (TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32,
                         TensorProto.UINT64)
_NUMBERS = {_F16, _BF16, _F32, _F64, _I8, _I16, _I32, _I64, _U8, _U16, _U32, _U64}

# T -> the types W such that Cast(Cast(x: T, W), T) is x for every x (W holds each value of T).
EXACT_WIDER: dict[int, frozenset[int]] = {
    _F16: frozenset({_F32, _F64}),
    _BF16: frozenset({_F32, _F64}),
    _F32: frozenset({_F64}),
    _I8: frozenset({_I16, _I32, _I64, _F16, _BF16, _F32, _F64}),
    _U8: frozenset({_I16, _I32, _I64, _U16, _U32, _U64, _F16, _BF16, _F32, _F64}),
    _I16: frozenset({_I32, _I64, _F32, _F64}),
    _U16: frozenset({_I32, _I64, _U32, _U64, _F32, _F64}),
    _I32: frozenset({_I64, _F64}),
    _U32: frozenset({_I64, _U64, _F64}),
    TensorProto.BOOL: frozenset(_NUMBERS),
}


def _not_an_output(m: Match[Any]) -> MatchFailure | None:
    """A rule that returns x itself leaves a graph output's producer alone (as noop does): the
    rewrite would only move the name, through an Identity."""
    if m.graph.is_output(m.outputs[0]):
        return MatchFailure(f"{m.outputs[0]!r} is a graph output")
    return None


# ---- casts ----------------------------------------------------------------------------------

def cast_round_trip(op: PatternOps, x: PValue) -> PValue:
    return op.Cast(op.Cast(x, to=Var("wide")).shared(), to=Var("back"))


def check_cast_round_trip(m: Match[None]) -> MatchFailure | None:
    if (failure := _not_an_output(m)) is not None:
        return failure
    t, wide, back = m.dtype("x"), m.attr("wide"), m.attr("back")
    if t is None or back != t:
        return MatchFailure(f"casts {t} to {wide} and then to {back}, not back to x's type")
    if wide not in EXACT_WIDER.get(t, ()):
        return MatchFailure(f"type {wide} does not hold every value of {t}: the pair rounds")
    return None


# ---- transpose and reshape pairs ------------------------------------------------------------

def transpose_pair(op: PatternOps, x: PValue) -> PValue:
    return op.Transpose(op.Transpose(x, perm=Var("inner")).shared(), perm=Var("outer"))


def check_transpose_identity(m: Match[list[int]]) -> MatchFailure | None:
    if (failure := _not_an_output(m)) is not None:
        return failure
    perm = check_transpose_pair(m)
    if isinstance(perm, MatchFailure):
        return perm
    if perm != list(range(len(perm))):
        return MatchFailure(f"the pair permutes by {perm}, not the identity (const_slice "
                            f"merges it)")
    return None


def reshape_pair(op: PatternOps, x: PValue) -> PValue:
    mid = op.Reshape(x, Var("a"), allowzero=Var("allowzero_a")).shared()
    return op.Reshape(mid, Var("b"), allowzero=Var("allowzero_b"))


def _dims_in_doubt(m: Match[None]) -> bool:
    """The pair's result may be x's shape but a dim of either is not known as an int (proving
    symbolic dims costs seconds on a big model: not for pairs that change the rank)."""
    x, y = m.graph.shape(m["x"]), m.graph.shape(m.outputs[0])
    return x is not None and y is not None and len(x) == len(y) and not all(
        isinstance(d, int) for d in (*x, *y))


@functools.partial(proving_dims, doubt=lambda m: _dims_in_doubt(m))
def check_reshape_identity(m: Match[None]) -> MatchFailure | None:
    """The pair gives x's own shape: every dim the same int or symbol (const_slice's proof), or
    the second target is x's dims read back from Shape(x)."""
    if (failure := _not_an_output(m)) is not None:
        return failure
    mid = m.graph.producer[m.outputs[0]].inputs[0]  # the first Reshape's result
    return _pair_gives_x(m, mid, mid)


def _pair_gives_x(m: Match[None], mid: str, into: str) -> MatchFailure | None:
    """Reshape(x, a) -> ``mid``, and the second Reshape (to b) of ``into`` (``mid``, or a value
    of ``mid``'s shape) gives x's shape."""
    g, x = m.graph, m["x"]
    mid_dims = reshape_dims(g, x, m["a"], mid, m.attr("allowzero_a") or 0)
    out = reshape_dims(g, into, m["b"], m.outputs[0], m.attr("allowzero_b") or 0,
                       in_dims=mid_dims)
    if same_shape(out, g.shape(x)):
        return None
    return _reshaped_to_own_shape(m, mid_dims or [])


def _reshaped_to_own_shape(m: Match[None], mid_dims: list[Dim]) -> MatchFailure | None:
    """b reads back x's dims entry by entry (built from Shape(x)). With allowzero 0, a dim that
    may be 0 at run time makes the Reshape copy the middle value's dim there instead; that
    changes nothing where the middle value has x's dim, and where only one dim is in doubt the
    original raises (its element count would not be 0) whenever the result is not x's shape."""
    g, x = m.graph, m["x"]
    rank, b = g.rank(x), shape_value(g, m["b"])
    if rank is None or b is None or len(b) != rank:
        return MatchFailure(f"the result is not provably x's shape {g.shape(x)} (second "
                            f"target: {b})")
    own = [dim_of(g, x, i) for i in range(rank)]
    if any(not _same_entry(e, d) for e, d in zip(b, own)):
        return MatchFailure(f"the second target {b} differs from x's dims {own}")
    if m.attr("allowzero_b"):
        return None
    doubt = [i for i, d in enumerate(own) if not (isinstance(d, int) and d > 0) and not (
        i < len(mid_dims) and isinstance(d, int | str) and same(mid_dims[i], d))]
    if len(doubt) > 1:
        return MatchFailure(f"dims {doubt} of x may be 0, which the second Reshape (allowzero 0) "
                            f"would copy from the first one's result")
    return None


def add_in_reshape_pair(op: PatternOps, x: PValue, t: PValue) -> PValue:
    mid = op.Reshape(x, Var("a"), allowzero=Var("allowzero_a"))
    return op.Reshape(op.Add(mid, t), Var("b"), allowzero=Var("allowzero_b"))


@functools.partial(proving_dims, doubt=lambda m: _dims_in_doubt(m))
def check_add_in_reshape_pair(m: Match[None]) -> MatchFailure | None:
    """The pair gives x's shape back, t does not broadcast the sum beyond the middle value's
    shape (the sum has that shape, as shape inference states it), and a is that shape entry by
    entry (no 0 or -1 for the Reshape to resolve: the rewrite expands t to a)."""
    g = m.graph
    mid = next(n.outputs[0] for n in m.nodes if n.op_type == "Reshape" and n.inputs[0] == m["x"])
    added = g.producer[m.outputs[0]].inputs[0]
    ms, ss, ts = g.shape(mid), g.shape(added), g.shape(m["t"])
    if ms is None or ts is None or len(ts) > len(ms) or ss is None or not same_shape(ss, ms):
        return MatchFailure(f"the term of shape {ts} may broadcast the middle value {ms} up "
                            f"(the sum is {ss})")
    a = shape_value(g, m["a"])
    if a is None or any(isinstance(e, int) and e == 0 for e in a) or (
            -1 in a and not m.is_const("a")) or any(
            e == -1 and not _keeps_dim(ts, ms, k - len(a)) for k, e in enumerate(a)):
        return MatchFailure(f"the first target {a} is not a shape t expands to (a 0, or a -1 "
                            f"where t's dim is not the middle value's)")
    return _pair_gives_x(m, mid, added)


def _keeps_dim(t: Any, mid: Any, k: int) -> bool:
    """t's dim k (from the end) is the middle value's: t is not broadcast along it, so an
    Expand target of 1 there keeps it."""
    d = t[k] if -len(t) <= k else 1
    return (isinstance(d, str) or (isinstance(d, int) and d > 1)) and d == mid[k]


def emit_add_outside(op: RewriteBuilder, m: Match[None]) -> str:
    """x + Reshape(Expand(t, a), b): the pair only re-indexes, so the term re-indexed the same
    way is added to x itself (x gets no other user: the fused attention needs that). A -1 in a
    constant a becomes 1 in the Expand target: Expand broadcasts, keeping t's own dim there."""
    target = m["a"]
    if m.is_const("a") and (m.const("a") == -1).any():
        target = op.const(np.where(m.const("a") == -1, 1, m.const("a")).astype(np.int64))
    term = op.Reshape(op.Expand(m["t"], target), m["b"], allowzero=m.attr("allowzero_b"))
    return op.Add(m["x"], term)


# A shape entry: an int, a dim symbol, or (value, i) for "dim i of value", unknown but itself.
Entry = int | str | tuple[str, int]


def dim_of(graph: Graph, value: str, i: int) -> Entry:
    shape = graph.shape(value)
    d = shape[i] if shape is not None and -len(shape) <= i < len(shape) else None
    return (value, i % len(shape) if shape else i) if d is None else d


def _same_entry(a: Entry, b: Entry) -> bool:
    return a == b and not (isinstance(a, int) and a <= 0)  # 0 and -1 are no dims


def shape_value(graph: Graph, value: str, depth: int = 0) -> list[Entry] | None:
    """The entries of a shape value (a 1-D int64 tensor, or a scalar of one) where each is
    provable: constants, Shape of a tensor of known rank, and the data movement exporters build
    targets with (Concat, Slice with step 1, Gather, Unsqueeze, Squeeze, Cast, Identity)."""
    c = graph.const_value(value)
    if c is not None:
        return [int(v) for v in c.reshape(-1)] if c.ndim <= 1 and c.dtype.kind in "iu" else None
    node = graph.producer.get(value)
    if node is None or node.domain or depth > 16:
        return None
    ins, op = node.inputs, node.op_type
    if op == "Shape":
        rank = graph.rank(ins[0])
        if rank is None:
            return None
        return [dim_of(graph, ins[0], i) for i in shape_range(node, rank)]
    if op in ("Identity", "Cast", "Squeeze", "Unsqueeze"):
        data = shape_value(graph, ins[0], depth + 1)
        axes = node.attr("axes") if op != "Cast" and op != "Identity" else None
        if op == "Cast" and node.attr("to") not in (_I32, _I64):
            return None
        if axes is NOT_CONSTANT or (axes is not None and list(axes) not in ([0], [-1])):
            return None
        return data if data is not None and (op != "Squeeze" or len(data) == 1) else None
    if op == "Concat" and node.attr("axis") in (0, -1):
        parts = [shape_value(graph, i, depth + 1) for i in ins]
        return None if any(p is None for p in parts) else [e for p in parts for e in p or ()]
    if op == "Gather" and node.attr("axis") in (0, -1):
        data, index = shape_value(graph, ins[0], depth + 1), graph.const_value(ins[1])
        if data is None or index is None or not all(-len(data) <= k < len(data)
                                                    for k in index.reshape(-1)):
            return None
        return [data[int(k)] for k in index.reshape(-1)]
    if op == "Slice" and len(ins) >= 3:
        data = shape_value(graph, ins[0], depth + 1)
        params = [graph.const_value(i) if i else None for i in ins[1:5]]
        if data is None or any(p is None for p in params[:2]):
            return None
        starts, ends = (int(p.reshape(-1)[0]) for p in params[:2])  # type: ignore[union-attr]
        axes, steps = params[2:4] + [None] * (4 - len(params))
        if (axes is not None and axes.reshape(-1).tolist() not in ([0], [-1])) or (
                steps is not None and steps.reshape(-1).tolist() != [1]):
            return None
        return data[slice(*(min(max(v + len(data) if v < 0 else v, 0), len(data))
                            for v in (starts, ends)))]
    return None


# ---- mean -----------------------------------------------------------------------------------

def sum_to_mean(op: PatternOps, x: PValue) -> PValue:
    total = op.ReduceSum(x, axes=Var("axes"), keepdims=Var("keepdims"))
    return Alt(mul=op.Mul(total, Const("scale")), div=op.Div(total, Const("scale")), tag="form")


def check_sum_to_mean(m: Match[list[int]]) -> list[int] | MatchFailure:
    """The reduced axes (normalized, all of them when none are given)."""
    shape, dtype = m.shape("x"), m.dtype("x")
    if dtype not in FLOATS or shape is None:
        return MatchFailure(f"x has dtype {dtype} and shape {shape}: need a float type and a rank")
    axes = m.attr("axes")
    rank = len(shape)
    axes = sorted({a % rank for a in axes} if axes else range(rank))  # none: every axis
    dims = [shape[a] for a in axes]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        return MatchFailure(f"reduced dims {dims} are not all static")
    n = math.prod(d for d in dims if isinstance(d, int))
    c = m.const("scale")
    if c.size != 1:
        return MatchFailure(f"the constant has {c.size} elements, not one")
    if m.tag("form") == "div":
        if float(c.reshape(-1)[0]) != n:
            return MatchFailure(f"divides by {float(c.reshape(-1)[0])!r}, not by N = {n}")
        return axes
    inverse = np.asarray(1.0 / n, dtype=np.float64).astype(c.dtype)
    if not Const(value=1.0 / n).accepts(c) or abs(float(inverse)) < np.finfo(c.dtype).tiny:
        return MatchFailure(f"multiplies by {float(c.reshape(-1)[0])!r}, not by 1/N = 1/{n} "
                            f"rounded to {c.dtype}")
    return axes


def emit_mean(op: RewriteBuilder, m: Match[list[int]]) -> str:
    keep = m.attr("keepdims") if "keepdims" in m else None
    keep = None if keep == 1 else keep
    axes = m.facts
    if m.graph.opset() >= 18:  # ReduceMean's axes became an input
        return op.ReduceMean(m["x"], op.const(np.array(axes, np.int64), hint="axes"),
                             keepdims=keep)
    return op.ReduceMean(m["x"], axes=axes, keepdims=keep)


def pool_to_mean(op: PatternOps, x: PValue) -> PValue:
    return op.GlobalAveragePool(x)


def check_pool_to_mean(m: Match[list[int]]) -> list[int] | MatchFailure:
    """GlobalAveragePool averages every dim after the first two: ReduceMean over those."""
    r = m.rank("x")
    if r is None or r < 3:
        return MatchFailure(f"x of rank {r}: the pooled axes are not known")
    return list(range(2, r))


# ---- Expand of a scalar, Sub of a Neg, Div by a power of two ----------------------------------

def expand_scalar(op: PatternOps, y: PValue) -> PValue:
    return broadcast_pattern(op, Const("x"), y)  # tile's, with x a constant


def check_expand_scalar(m: Match[None]) -> MatchFailure | None:
    size = m.graph.const_size(m["x"])
    if size != 1:
        return MatchFailure(f"the expanded constant has {size} elements, not one")
    return check_broadcast(m)


def sub_neg(op: PatternOps, a: PValue, b: PValue) -> PValue:
    return op.Sub(a, op.Neg(b).shared())


def div_pow2(op: PatternOps, x: PValue) -> PValue:
    return op.Div(x, Const("c"))


def check_div_pow2(m: Match[np.ndarray]) -> np.ndarray | MatchFailure:
    """1/c in c's dtype."""
    c = m.const("c")
    if c.dtype.kind != "f" or c.size == 0:
        return MatchFailure(f"divisor of dtype {c.dtype} is not a float constant")
    wide = c.astype(np.float64)
    if not np.all(np.isfinite(wide)) or np.any(np.frexp(wide)[0] != np.copysign(0.5, wide)):
        return MatchFailure(f"divisor {wide.reshape(-1)[:4].tolist()} is not a power of two")
    if np.all(wide == 1.0):
        return MatchFailure("x / 1 is noop's")
    with np.errstate(over="ignore"):  # 1 / 2^-149 is no float32: inf, refused below
        inverse = (1.0 / wide).astype(c.dtype)
    if np.any(inverse.astype(np.float64) != 1.0 / wide):
        return MatchFailure(f"1/{wide.reshape(-1)[:4].tolist()} is not representable in "
                            f"{c.dtype}")
    return inverse


@register
class Canonical(PatternPass):
    name = "canonical"
    summary = ("exact canonical forms every pattern pass sees: Cast round trips, no-op Reshape and "
               "Transpose pairs, ReduceSum/N, Expand-ed scalars, a-(-b), x/2^k")

    def rules(self) -> list[Rule]:
        return [
            *cast_noop_rules(),
            Rule(name="cast-round-trip", pattern=cast_round_trip, check=check_cast_round_trip,
                 rewrite=lambda op, m: m["x"]),
            Rule(name="transpose-pair", pattern=transpose_pair, check=check_transpose_identity,
                 rewrite=lambda op, m: m["x"]),
            Rule(name="reshape-pair", pattern=reshape_pair, check=check_reshape_identity,
                 rewrite=lambda op, m: m["x"]),
            Rule(name="add-in-reshape-pair", pattern=add_in_reshape_pair,
                 check=check_add_in_reshape_pair, rewrite=emit_add_outside),
            Rule(name="sum-to-mean", pattern=sum_to_mean, check=check_sum_to_mean,
                 rewrite=emit_mean),
            Rule(name="pool-to-mean", pattern=pool_to_mean, check=check_pool_to_mean,
                 rewrite=emit_mean),
            Rule(name="expand-scalar", pattern=expand_scalar, check=check_expand_scalar,
                 rewrite=emit_broadcast),
            Rule(name="sub-neg", pattern=sub_neg, rewrite=lambda op, m: op.Add(m["a"], m["b"])),
            Rule(name="div-pow2", pattern=div_pow2, check=check_div_pow2,
                 rewrite=lambda op, m: op.Mul(m["x"], op.const(m.facts, hint="reciprocal"))),
        ]
