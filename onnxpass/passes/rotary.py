"""rotary: fuse rotary position embeddings (RoPE) applied to a 4-D query or key.

Matches  y = x * cos + rotate(x) * sin  over the last axis of x, (B, H, S, D) or (B, S, H, D), in
the forms exporters write:
- rotate-half (Llama, Qwen2, Mistral, GPT-NeoX; HF ``rotate_half``):
  rotate(x) = Concat(-x[..., D/2:], x[..., :D/2]), the halves by two Slices or one Split, the
  negation as Neg or Mul(-1);
- interleaved (GPT-J, CodeGen; HF ``rotate_every_two``): x1 = x[..., ::2], x2 = x[..., 1::2],
  rotate(x) = Reshape(Concat(Unsqueeze(-x2, -1), Unsqueeze(x1, -1), axis=-1)), the flattening
  of the last two dims (a constant shape or one computed at run time), cos and sin
  repeat-interleaved;
- partial rotation (GPT-NeoX ``rotary_pct``, Phi, GPT-J ``rotary_dim``): the above on
  x[..., :rd], concatenated with x[..., rd:];
- cos and sin broadcast over the head axis, from a constant (a cache, or what folding made of
  it), gathered from one by position ids, or computed in the graph (positions times inv_freq,
  Concat(freqs, freqs), Cos/Sin, maybe Cast, Unsqueeze for the head axis).

The fused op takes rd/2 cache values per position where the graph multiplies by rd: exact only
when the two halves of cos and sin (interleaved: each even and odd dim) are equal. That is
proven from the graph or the match is refused: a constant is compared bit for bit; a computed
value must be Concat(a, a) (interleaved: a flattened Expand/Tile of a value with last dim 1)
reached through ops that keep the last axis element for element (Cast, Cos, Sin, Unsqueeze,
Reshape keeping the last dim, Gather/GatherND/Slice along other axes, elementwise ops whose other
operand is constant along the last axis or itself proven). The cache is then the first half (or
the even dims) of the value the graph multiplies by.

Forms:
- ``std`` (default): ONNX RotaryEmbedding (opset 23, raised when needed), 4-D X (B, H, S, D),
  caches (B, S, rd/2), no position_ids. ONNX Runtime 1.32 requires the caches' batch and
  sequence dims to equal X's (no broadcasting; tested), so a cache of batch 1 is Expanded to
  X's. An (B, S, H, D) input is transposed to (B, H, S, D) and back (next to the head split's own
  Transpose they cancel). TensorRT's IRotaryEmbeddingLayer takes the same 4-D input.
- ``plugin``: a RotaryEmbeddingPlugin node (see onnxpass/plugins/rotary.py; it broadcasts the
  caches itself, so no Expand).
An exporter's own RotaryEmbedding is already fused: both forms leave it as it is. Caches made
from a constant are one initializer for every Q, K and layer that use the same cos and sin.

Refused, with the reason ``onnxpass match --explain`` shows: x not 4-D or of unknown head size;
a split not at the half (or not at even/odd dims), the negation on the other half, Slices that
cut another axis too; cos or sin varying along the head axis or broadcasting x to a bigger
shape; halves (pairs) not provably equal, as for a graph input or Concat(freqs, freqs2); cos and
sin swapped (x multiplied by a value computed by Sin, or rotate(x) by Cos). The swapped form
would compute the same function with the caches exchanged, but it is not a rotation: it is
left as written rather than disguised as one.

Constants: the negation's -1 exactly (0 ULP); Slice starts, ends, axes and steps are bound and
normalized as ONNX clamps them (INT64_MAX or the dim itself as the end), other axes must be
kept whole, steps 1 or 2 as the form needs. They must be constants: TorchScript computes the
half from Shape at run time, which ``fold`` (first in every pipeline) turns into constants.
Attributes checked: Concat ``axis`` (bound: the last axis); Split ``axis`` (last), ``split``
(absent or [rd/2, rd/2]), ``num_outputs`` (absent or 2); Unsqueeze ``axes`` (bound: the new
last axis); Reshape ``allowzero`` (bound, irrelevant: the output's dims are checked to be x's
leading dims and rd, so a 0 in the shape is a 0 of x either way);
Slice, Neg, Mul, Add have none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto

from onnxpass.graph import NOT_CONSTANT, Graph, Node
from onnxpass.passes.base import PatternPass, register
from onnxpass.passes.dims import UnprovenDims, proving_dims
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

_SLICE_INPUTS = ("starts", "ends", "axes", "steps")
_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16})


def _slice(op: PatternOps, x: PValue, name: str) -> PValue:
    """x[...] by one Slice with 3, 4 or 5 inputs; ``{name}_starts`` etc. bind the constants."""
    starts, ends, axes, steps = (Const(f"{name}_{k}") for k in _SLICE_INPUTS)
    return Alt(op.Slice(x, starts, ends, axes, steps), op.Slice(x, starts, ends, axes),
               op.Slice(x, starts, ends))


def _neg(op: PatternOps, v: PValue) -> PValue:
    return op.Neg(v) | op.Mul(v, -1.0)


def _rotated(op: PatternOps, x: PValue) -> PValue:
    halves = op.Concat(_neg(op, _slice(op, x, "hi")), _slice(op, x, "lo"), axis=Var("half_axis"))
    lo, hi = op.Split(x, axis=Var("split_axis"), split=Var("split_sizes"),
                      num_outputs=Var("split_n"), _outputs=2)
    split = op.Concat(_neg(op, hi), lo, axis=Var("split_cat_axis"))
    stack = op.Concat(op.Unsqueeze(_neg(op, _slice(op, x, "odd")), axes=Var("odd_new_axis")),
                      op.Unsqueeze(_slice(op, x, "even"), axes=Var("even_new_axis")),
                      axis=Var("stack_axis"))
    # flattened by a constant shape, or by Shape(stack)[:-2] + [-1] computed at run time
    lead = _slice(op, op.Shape(stack), "flat_lead")
    flat = Alt(given=Var("flat_shape"), computed=op.Concat(lead, Const("flat_last"), axis=0),
               tag="flat")
    pairs = op.Reshape(stack, flat, allowzero=Var("flat_allowzero"))
    return Alt(halves=halves, split=split, pairs=pairs, tag="rotate")


def _rotary(op: PatternOps, x: PValue, cos: PValue, sin: PValue) -> PValue:
    return op.Add(op.Mul(x, cos), op.Mul(_rotated(op, x), sin))


def rotary_pattern(op: PatternOps, x: PValue, cos: PValue, sin: PValue) -> PValue:
    return _rotary(op, x, cos, sin)


def partial_pattern(op: PatternOps, x: PValue, cos: PValue, sin: PValue) -> PValue:
    rotated = _rotary(op, _slice(op, x, "rot"), cos, sin)
    return op.Concat(rotated, _slice(op, x, "pass"), axis=Var("part_axis"))


@dataclass(frozen=True)
class Rotation:
    """What the check proved: rotate ``width`` leading dims of each head of ``x`` (its head
    axis 1 or 2), interleaved or by halves, with the graph values ``cos`` and ``sin``."""

    x: str
    head_axis: int
    width: int
    head_size: int
    interleaved: bool
    cos: str
    sin: str


@proving_dims
def check_rotary(m: Match[Rotation]) -> Rotation | MatchFailure:
    g = m.graph
    if m.dtype("x") not in _TYPES:
        return MatchFailure(f"x has dtype {m.dtype('x')}: RotaryEmbedding takes float, float16 "
                            f"and bfloat16")
    shape = m.shape("x")
    if shape is None or len(shape) != 4 or not isinstance(shape[3], int):
        return UnprovenDims(f"x has shape {shape}: RotaryEmbedding takes 4-D x of known head "
                            f"size")
    d = shape[3]
    width = d
    if "part_axis" in m:  # partial rotation: x[..., :rd] rotated, x[..., rd:] passed through
        rot, kept = _slice_range(m, "rot", shape), _slice_range(m, "pass", shape)
        if isinstance(rot, MatchFailure) or isinstance(kept, MatchFailure):
            return rot if isinstance(rot, MatchFailure) else kept  # type: ignore[return-value]
        if rot.step != 1 or rot.start != 0 or kept != range(rot.stop, d):
            return MatchFailure(f"rotated dims {_show(rot)} and passed dims {_show(kept)} do not "
                                f"split the {d} dims at one point")
        if not _last_axis(m.attr("part_axis"), 4):
            return MatchFailure(f"the partial Concat is on axis {m.attr('part_axis')}")
        width = rot.stop
    if width % 2 or width == 0:
        return MatchFailure(f"{width} rotated dims: not an even number")
    rot_shape = (*shape[:3], width)
    form = _check_rotate(m, rot_shape)
    if isinstance(form, MatchFailure):
        return form
    interleaved = form == "pairs"
    head_axis = _head_axis(m, shape, width)
    if isinstance(head_axis, MatchFailure):
        return head_axis
    for name, trig in (("cos", "Sin"), ("sin", "Cos")):
        if m.dtype(name) != m.dtype("x"):
            return MatchFailure(f"{name} has dtype {m.dtype(name)}, x {m.dtype('x')}")
        why = _paired(g, m[name], "pairs" if interleaved else "halves", 0)
        if why is not None:
            return MatchFailure(f"{name}: {why}, so a cache of {width // 2} values per position "
                                f"cannot reproduce it")
        if _trig_source(g, m[name]) == trig:
            return MatchFailure(f"{'x' if name == 'cos' else 'rotate(x)'} is multiplied by a "
                                f"value computed by {trig}: cos and sin swapped")
    return Rotation(m["x"], head_axis, width, d, interleaved, m["cos"], m["sin"])


def _check_rotate(m: Match[Rotation], shape: tuple[Any, ...]) -> str | MatchFailure:
    """Which rotation the match is, or why it is not one of ``shape[-1]`` dims."""
    width, form = shape[-1], m.tag("rotate")
    h = width // 2
    if form == "halves":
        lo, hi = _slice_range(m, "lo", shape), _slice_range(m, "hi", shape)
        for r in (lo, hi):
            if isinstance(r, MatchFailure):
                return r
        if lo != range(0, h) or hi != range(h, width):
            return MatchFailure(f"rotate-half takes dims {_show(hi)} (negated) and {_show(lo)} of "
                                f"{width}: not the halves")
        axis = m.attr("half_axis")
    elif form == "split":
        sizes, n = m.attr("split_sizes"), m.attr("split_n")
        if not _last_axis(m.attr("split_axis"), 4):
            return MatchFailure(f"Split on axis {m.attr('split_axis')}, not the last")
        if len(m.node("Split").outputs) != 2:
            return MatchFailure(f"Split into {len(m.node('Split').outputs)} parts, not halves")
        if sizes is None and n in (None, 2) and h * 2 == width:
            pass
        elif sizes is None or list(sizes) != [h, h]:
            return MatchFailure(f"Split sizes {sizes} of {width} dims: not the halves")
        axis = m.attr("split_cat_axis")
    else:
        even, odd = _slice_range(m, "even", shape), _slice_range(m, "odd", shape)
        for r in (even, odd):
            if isinstance(r, MatchFailure):
                return r
        if even != range(0, width, 2) or odd != range(1, width, 2):
            return MatchFailure(f"rotate-every-two takes dims {_show(odd)} (negated) and "
                                f"{_show(even)} of {width}: not the odd and even ones")
        for key in ("odd_new_axis", "even_new_axis"):
            if list(m.attr(key) or []) not in ([-1], [4]):
                return MatchFailure(f"Unsqueeze axes {m.attr(key)}, not a new last axis")
        if not _last_axis(m.attr("stack_axis"), 5):
            return MatchFailure(f"the pairs are stacked on axis {m.attr('stack_axis')}")
        if m.tag("flat") == "computed":
            lead, last = _slice_range(m, "flat_lead", (5,)), m.const("flat_last").reshape(-1)
            if lead != range(0, 3) or last.tolist() != [-1]:
                return MatchFailure(f"the stacked pairs are reshaped to Shape(..){_show(lead)} + "
                                    f"{last.tolist()}, not their last two dims flattened")
        else:
            why = _flattens_pairs(m.graph, m.node("Reshape"), shape)
            if why is not None:
                return UnprovenDims(why)
        return "pairs"
    if not _last_axis(axis, 4):
        return MatchFailure(f"the rotated halves are concatenated on axis {axis}")
    return "halves"


def _head_axis(m: Match[Rotation], shape: tuple[Any, ...], width: int) -> int | MatchFailure:
    """The axis of x that cos and sin do not vary along (1: (B, H, S, D), 2: (B, S, H, D)),
    after checking that they broadcast to x's shape and no bigger."""
    axes = {1, 2}
    for name in ("cos", "sin"):
        s = m.shape(name)
        if s is None or len(s) > 4:
            return MatchFailure(f"{name} has shape {s}")
        aligned = (1,) * (4 - len(s)) + tuple(s)
        if aligned[3] != width:
            return MatchFailure(f"{name} has shape {s}, {width} rotated dims")
        for k in range(3):
            if aligned[k] != 1 and (aligned[k] is None or aligned[k] != shape[k]):
                return UnprovenDims(f"{name} of shape {s} may broadcast x of shape {shape} to a "
                                    f"bigger shape")
        axes &= {k for k in (1, 2) if aligned[k] == 1}
    if not axes:
        return MatchFailure("cos and sin vary along both axis 1 and axis 2 of x: no head axis")
    return min(axes)


def _last_axis(axis: Any, rank: int) -> bool:
    return axis in (-1, rank - 1)


def _show(r: range | MatchFailure) -> str:
    if isinstance(r, MatchFailure):
        return "?"
    step = f":{r.step}" if r.step != 1 else ""
    return f"[{r.start}:{r.stop}{step}]"


def _slice_range(m: Match[Rotation], name: str, shape: Sequence[Any]) -> range | MatchFailure:
    """The dims of the last axis Slice ``name`` keeps; it must keep every other axis whole."""
    def const(key: str, default: np.ndarray) -> np.ndarray:
        full = f"{name}_{key}"
        return m.const(full).reshape(-1) if full in m else default

    starts, ends = const("starts", np.zeros(0)), const("ends", np.zeros(0))
    axes = const("axes", np.arange(len(starts)))
    steps = const("steps", np.ones(len(starts), np.int64))
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return MatchFailure(f"Slice {name}: starts, ends, axes and steps differ in length")
    rank = len(shape)
    kept = range(shape[-1])
    seen: set[int] = set()
    for s, e, a, step in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist()):
        axis = a + rank if a < 0 else a
        if not 0 <= axis < rank or axis in seen or step <= 0:
            return MatchFailure(f"Slice {name}: axis {a}, step {step}")
        seen.add(axis)
        dim = shape[axis]
        if axis == rank - 1:
            kept = range(dim)[slice(s, e, step)]
        elif isinstance(dim, int):
            if range(dim)[slice(s, e, step)] != range(dim):
                return MatchFailure(f"Slice {name} also cuts axis {axis}")
        elif not (s == 0 and e >= np.iinfo(np.int32).max and step == 1):
            return MatchFailure(f"Slice {name} may cut axis {axis} (of unknown size)")
    return kept


def _flattens_pairs(g: Graph, reshape: Node, shape: Sequence[Any]) -> str | None:
    """Why ``reshape`` may not flatten the stacked pairs (*shape[:-1], rd/2, 2) into ``shape``
    element for element, or None. Row-major order keeps each element's place when the leading
    dims stay as they are."""
    out = g.shape(reshape.outputs[0])
    if out is None or len(out) != len(shape) or out[-1] != shape[-1]:
        return f"the stacked pairs are reshaped to {out}, not {list(shape)}"
    if any(a is None or a != b for a, b in zip(out[:-1], shape[:-1])):
        return f"the stacked pairs are reshaped to {out}: leading dims of x are {list(shape[:-1])}"
    return None


# ---- proofs about the values cos and sin ---------------------------------------------------

# ops that compute each element from the same element of their (one) input
_UNARY = frozenset({"Cos", "Sin", "Cast", "CastLike", "Identity", "Neg", "Abs", "Exp", "Sqrt",
                    "Reciprocal"})
_BINARY = frozenset({"Mul", "Div", "Add", "Sub", "Pow"})
_DEPTH = 48


def _paired(g: Graph, v: str, mode: str, depth: int) -> str | None:
    """Why the last axis of ``v`` is not provably two equal halves (``mode`` "halves") or equal
    (even, odd) pairs ("pairs"), or None when it is."""
    shape = g.shape(v)
    if shape is None or not shape or not isinstance(shape[-1], int) or shape[-1] % 2:
        return f"{v!r} has shape {shape}"
    if g.is_const(v):
        return _paired_constant(g.const_value(v), mode, v)
    node = g.producer.get(v)
    if node is None:
        return f"{v!r} is a graph input"
    if depth > _DEPTH:
        return f"{v!r} is computed too far from where it is proven"
    op, width = node.op_type, shape[-1]
    if node.domain != "":
        return f"{v!r} is computed by {node.domain}.{op}"
    if op == "Concat" and _attr_is_last(node.attr("axis"), len(shape)):
        if mode == "halves" and len(node.inputs) == 2 and node.inputs[0] == node.inputs[1]:
            return None
        return (f"{v!r} is a Concat of {node.inputs}: not of one value twice" if mode == "halves"
                else f"{v!r} is a Concat on the last axis, not a repeat of each value")
    if _all_equal_along_last(g, v, depth):
        return None
    if op in _UNARY:
        return _paired(g, node.inputs[0], mode, depth + 1)
    if op in _BINARY:
        for u in node.inputs:
            us = g.shape(u)
            if us is None:
                return f"operand {u!r} of {op} has unknown shape"
            if len(us) == 0 or us[-1] == 1:
                continue
            if us[-1] != width:
                return f"operand {u!r} of {op} has shape {us}"
            why = _paired(g, u, mode, depth + 1)
            if why is not None:
                return why
        return None
    source = _keeps_last_axis(g, node, shape)
    if source is not None:
        return _paired(g, source, mode, depth + 1)
    if op == "Tile" and mode == "halves":
        reps = g.const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if reps is not None and reps.size == len(shape) and int(reps[-1]) == 2:
            return None
    if op == "Reshape" and mode == "pairs":
        inner = g.shape(node.inputs[0])
        if (inner is not None and len(inner) >= 2 and inner[-1] == 2 and isinstance(inner[-2], int)
                and inner[-2] * 2 == width and _all_equal_along_last(g, node.inputs[0], depth + 1)):
            return None
    return f"{v!r} is computed by {op}, which this pass cannot follow"


def _paired_constant(arr: np.ndarray | None, mode: str, v: str) -> str | None:
    if arr is None or arr.ndim == 0:
        return f"constant {v!r} cannot be read"
    a = np.ascontiguousarray(arr)
    if mode == "halves":
        h = a.shape[-1] // 2
        first, second = a[..., :h], a[..., h:]
    else:
        first, second = a[..., 0::2], a[..., 1::2]
    if np.ascontiguousarray(first).tobytes() != np.ascontiguousarray(second).tobytes():
        return f"constant {v!r} does not hold equal {mode} (compared bit for bit)"
    return None


def _all_equal_along_last(g: Graph, v: str, depth: int) -> bool:
    """Whether every element of ``v`` equals the others along its last axis (a broadcast)."""
    shape = g.shape(v)
    if shape is None or not shape:
        return False
    if shape[-1] == 1:
        return True
    if g.is_const(v):
        a = g.const_value(v)
        return a is not None and a.ndim > 0 and np.ascontiguousarray(a).tobytes() == \
            np.ascontiguousarray(np.broadcast_to(a[..., :1], a.shape)).tobytes()
    node = g.producer.get(v)
    if node is None or node.domain != "" or depth > _DEPTH:
        return False
    inner = g.shape(node.inputs[0]) if node.inputs and node.inputs[0] else None
    if node.op_type in ("Expand", "Tile") and inner is not None and inner and inner[-1] == 1:
        return True
    if node.op_type == "Concat" and len(set(node.inputs)) == 1 and _attr_is_last(
            node.attr("axis"), len(shape)):
        return _all_equal_along_last(g, node.inputs[0], depth + 1)
    if node.op_type in _UNARY:
        return _all_equal_along_last(g, node.inputs[0], depth + 1)
    source = _keeps_last_axis(g, node, shape)
    return source is not None and _all_equal_along_last(g, source, depth + 1)


def _keeps_last_axis(g: Graph, node: Node, shape: Sequence[Any]) -> str | None:
    """The input whose last axis ``node`` (a data-movement op) copies element for element into
    its output of ``shape``, or None."""
    op, rank = node.op_type, len(shape)
    data = node.inputs[0] if node.inputs else ""
    inner = g.shape(data) if data else None
    if inner is None or not inner or inner[-1] != shape[-1]:
        return None  # every op below keeps the last dim's size
    if op == "Unsqueeze":
        axes = node.attr("axes")
        if axes is NOT_CONSTANT or axes is None:
            return None
        return data if all((a + rank if a < 0 else a) != rank - 1 for a in axes) else None
    if op == "Squeeze":
        axes = node.attr("axes")
        if axes is NOT_CONSTANT:
            return None
        return data if axes is None or all(
            (a + len(inner) if a < 0 else a) != len(inner) - 1 for a in axes) else None
    if op == "Transpose":
        perm = node.attr("perm")
        return data if perm is not None and perm[-1] == len(inner) - 1 else None
    if op in ("Reshape", "Expand", "Identity"):
        return data  # row-major: the same last dim keeps each element's last-axis place
    if op == "Tile":
        reps = g.const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        return data if reps is not None and reps.size and int(reps.reshape(-1)[-1]) == 1 else None
    if op == "Gather":
        axis = node.attr("axis") or 0
        return data if (axis + len(inner) if axis < 0 else axis) != len(inner) - 1 else None
    if op == "GatherND":
        idx = g.shape(node.inputs[1])
        ok = (node.attr("batch_dims") or 0) == 0 and idx is not None and idx and isinstance(
            idx[-1], int) and idx[-1] < len(inner)
        return data if ok else None
    if op == "Slice":
        axes = g.const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
        if axes is None:
            return None
        return data if all((int(a) + len(inner) if a < 0 else int(a)) != len(inner) - 1
                           for a in axes.reshape(-1)) else None
    if op == "Split":
        axis = node.attr("axis") or 0
        return data if (axis + len(inner) if axis < 0 else axis) != len(inner) - 1 else None
    return None


def _attr_is_last(axis: Any, rank: int) -> bool:
    return isinstance(axis, int) and (axis + rank if axis < 0 else axis) == rank - 1


_FOLLOW = frozenset({"Cast", "CastLike", "Identity", "Unsqueeze", "Squeeze", "Reshape",
                     "Transpose", "Expand", "Tile", "Gather", "GatherND", "Slice"})


def _trig_source(g: Graph, v: str) -> str | None:
    """"Cos" or "Sin" when ``v`` is that op's output moved, cast or scaled by constants."""
    for _ in range(_DEPTH):
        node = g.producer.get(v)
        if node is None or node.domain != "":
            return None
        if node.op_type in ("Cos", "Sin"):
            return node.op_type
        if node.op_type in _FOLLOW:
            v = node.inputs[0]
        elif node.op_type in ("Mul", "Div"):
            computed = [u for u in node.inputs if not g.is_const(u)]
            if len(computed) != 1 or (node.op_type == "Div" and computed[0] != node.inputs[0]):
                return None
            v = computed[0]
        else:
            return None
    return None


# ---- the rewrite ----------------------------------------------------------------------------

def emit(op: RewriteBuilder, m: Match[Rotation], form: str) -> str:
    f = m.facts
    x = f.x if f.head_axis == 1 else op.Transpose(f.x, perm=[0, 2, 1, 3])
    made: dict[str, str] = {}  # constants this rewrite made, by name: cos and sin share them
    caches = [_cache(op, m.graph, f, v, form == "std", made) for v in (f.cos, f.sin)]
    partial = f.width if f.width != f.head_size else None
    if form == "std":
        y = op.RotaryEmbedding(x, *caches, interleaved=int(f.interleaved),
                               rotary_embedding_dim=partial)
    else:
        y = op.plugin("RotaryEmbeddingPlugin", x, *caches, interleaved=int(f.interleaved),
                      rotary_embedding_dim=f.width)
    return y if f.head_axis == 1 else op.Transpose(y, perm=[0, 2, 1, 3])


def _cache(op: RewriteBuilder, g: Graph, f: Rotation, v: str, expand: bool,
           made: dict[str, str]) -> str:
    """(B or 1, S or 1, width/2) from the value the graph multiplies by: its head axis dropped,
    the first half (or the even dims) of its last axis; with ``expand``, of x's batch and
    sequence dims (a constant is broadcast here when they are known, else Expanded)."""
    shape = g.shape(v) or ()
    rank = len(shape)
    stop, step = (f.width, 2) if f.interleaved else (f.width // 2, 1)
    xs = g.shape(f.x)
    assert xs is not None and len(xs) == 4  # the check made sure
    seq_axis = 3 - f.head_axis  # (B, H, S, D): 2; (B, S, H, D): 1
    aligned = (1,) * (4 - rank) + tuple(shape)
    have = [d for k, d in enumerate(aligned[:3]) if k != f.head_axis]
    want = [xs[0], xs[seq_axis]]
    static = [w for w in want if isinstance(w, int)]  # both when x's dims are known
    fits = not expand or all(h is not None and h == w for h, w in zip(have, want))
    i64 = lambda *a: _shared_const(op, g, np.array(a, np.int64),
                                   "rotary_i64_" + "_".join(map(str, a)), made)
    const = g.const_value(v) if g.is_const(v) else None
    if const is not None:
        arr = const.reshape((1,) * (4 - const.ndim) + const.shape)
        arr = np.squeeze(arr, axis=f.head_axis)[..., 0:stop:step]
        if not fits and len(static) == 2:
            arr, fits = np.broadcast_to(arr, (*static, arr.shape[-1])), True
        cache = _shared_const(op, g, arr, f"{v}_rotary_" + "x".join(map(str, arr.shape)), made)
    else:
        if rank < 4:
            v = op.Unsqueeze(v, i64(*range(4 - rank)))
        cache = op.Slice(op.Squeeze(v, i64(f.head_axis)), i64(0), i64(stop), i64(-1), i64(step))
    if fits:
        return cache
    if len(static) == 2:
        target = i64(*static, f.width // 2)
    else:  # the run-time dims from x itself
        dims = [i64(w) if isinstance(w, int) else op.Shape(f.x, start=k, end=k + 1)
                for k, w in zip((0, seq_axis), want)]
        target = op.Concat(*dims, i64(f.width // 2), axis=0)
    return op.Expand(cache, target)


def _shared_const(op: RewriteBuilder, g: Graph, arr: np.ndarray, hint: str,
                  made: dict[str, str]) -> str:
    """An initializer holding ``arr`` (named for its value by ``hint``): the one this rewrite or
    an earlier one made under that name when it holds the same bytes (the caches of Q and K, of
    every layer, are one), else a new one."""
    arr = np.ascontiguousarray(arr)
    if hint not in made:
        old = g.const_value(hint) if g.is_const(hint) else None
        same = old is not None and old.dtype == arr.dtype and old.shape == arr.shape and \
            old.tobytes() == arr.tobytes()
        made[hint] = hint if same else op.const(arr, hint=hint)
    return made[hint]


@register
class Rotary(PatternPass):
    name = "rotary"
    summary = ("fuse rotary position embeddings (rotate-half, interleaved, partial) -> "
               "RotaryEmbedding (std) or RotaryEmbeddingPlugin (plugin)")
    forms = ("std", "plugin")
    default_form = "std"
    required_opset = {"std": 23}

    def rules(self) -> list[Rule]:
        form = self.form or "std"
        return [
            Rule(name="rotary-partial", pattern=partial_pattern, check=check_rotary,
                 rewrite=lambda op, m: emit(op, m, form)),
            Rule(name="rotary", pattern=rotary_pattern, check=check_rotary,
                 rewrite=lambda op, m: emit(op, m, form)),
        ]
