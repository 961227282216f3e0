"""tile: Tile and Expand work that need not be done, or not more than once.

Matches
- Tile or Expand of a constant by constant repeats or shape: folded into a new initializer (up to
  16 MiB; as const_slice folds, by ONNX's reference implementation).
- Tile by repeats of all 1s, Expand to a shape of 1s no longer than x's rank or to x's own dims:
  x itself.
- op(Tile(x, r), y) or op(Expand(x, s), y), either operand order, for a broadcasting binary op
  (Add, Sub, Mul, Div, Pow, Max, Min, Mod, comparisons, And, Or, Xor): op(x, y), when broadcasting
  gives the identical result. That holds when every dim the Tile or Expand changed was 1 in x
  (tiling a size-1 dim repeats one slice, which is what broadcasting does) and y has that dim at
  the tiled size (so the output shape is unchanged): DETR's query embeddings, repeated over the
  batch and added to (batch, queries, d) states. The Tile stays for its other users, if any. Not
  when y is computed from the repeated value by one node (Mask2Former's LayerNorm subtracts the
  mean of the repeated queries from them): the repeat stays for that node, and the LayerNorm
  pattern would be split.
- Tile and Expand nodes that compute the same value as an earlier one (the same op on inputs
  computed the same way, constants compared by value: AnchorDETR repeats one position embedding
  in every layer): the earlier result is used, the repeat is computed once.

Never fires when a tiled dim of x is not 1 (real tiling, not broadcasting), y lacks a tiled dim or
has it at another or unknown size, the Tile adds dims the output would lose, both operands are
the tiled value, or a fold would pass 16 MiB.

Attributes checked: Tile and Expand have none; ConstantOfShape ``value`` (exactly 1); in the
repeats, Shape ``start``/``end`` (defaults: the whole shape), Gather ``axis`` (0 or -1 of a 1-D
shape: the same), Unsqueeze ``axes`` ([0] or [-1] of a scalar: the same), Concat ``axis`` (0 or
-1 of 1-D parts); the binary op keeps all its attributes (Mod's ``fmod``), copied as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import numpy_helper

from onnxpass.graph import RANDOM_OPS, Dim, Graph, Node
from onnxpass.passes.base import PassContext, PatternPass, register
from onnxpass.passes.const_slice import check_fold, emit_fold
from onnxpass.passes.dims import same
from onnxpass.patterns import (
    IRRELEVANT,
    Alt,
    Attr,
    Const,
    Match,
    MatchFailure,
    PatternOps,
    PValue,
    RewriteBuilder,
    Rule,
    Var,
)
from onnxpass.patterns.ir import COMMUTATIVE

MAX_RANK = 6
BROADCASTING = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Equal", "Greater",
                "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor")


def fold_pattern(op: PatternOps) -> PValue:
    return op.Tile(Const(), Const(), _any_attrs=True) | op.Expand(Const(), Const(), _any_attrs=True)


def _is_one(value: Any) -> bool:
    """the value 1"""
    return numpy_helper.to_array(value).reshape(-1).tolist() == [1]


def noop_pattern(op: PatternOps, x: PValue) -> PValue:
    ones = op.ConstantOfShape(Var("length"), value=Attr(_is_one))  # TorchScript's repeat()
    return Alt(tile=op.Tile(x, Const("by")), expand=op.Expand(x, Const("by")),
               ones=op.Expand(x, ones), tag="op")


def check_noop(m: Match) -> MatchFailure | None:
    xs = m.shape("x")
    if m.tag("op") == "ones":
        n = m.graph.shape(m.nodes[0].inputs[1])  # the ones: (len,)
        if n is not None and len(n) == 1 and isinstance(n[0], int) and xs is not None and (
                n[0] <= len(xs)):
            return None
        return MatchFailure(f"Expand to {n} ones may add dims to x's {xs}")
    by = m.const("by").reshape(-1)
    if m.tag("op") == "tile" and np.all(by == 1):
        return None
    if m.tag("op") == "expand" and xs is not None and len(by) <= len(xs) and all(
            d == 1 or same(int(d), x) for d, x in zip(by[::-1], xs[::-1])):
        return None
    return MatchFailure(f"{m.tag('op')} by {by.tolist()} changes x's shape {xs}")


def _first_axis(axis: Any) -> bool:
    """axis 0 (or -1) of a 1-D value"""
    return list(axis) in ([0], [-1]) if isinstance(axis, (list, tuple)) else axis in (0, -1)


def broadcast_pattern(op: PatternOps, x: PValue, y: PValue) -> PValue:
    # Repeats or shape as a Concat of parts tell what inference cannot: TorchScript's (B, 1, 1)
    # is Concat(Unsqueeze(Gather(Shape(v), 0)), 1, 1), a dim of v and two constants.
    first = Attr(_first_axis)

    def part(i: int) -> PValue:
        dims = op.Shape(Var(f"src{i}"))  # start and end unnamed: they must hold their defaults
        return op.Unsqueeze(op.Gather(dims, Const(f"index{i}"), axis=first), axes=first) | Var(
            f"by{i}")

    by = Alt(*[op.Concat(*[part(i) for i in range(k)], axis=first)
               for k in range(1, MAX_RANK + 1)], Var("by"))
    tiled = Alt(tile=op.Tile(x, by), expand=op.Expand(x, by), tag="op").shared()
    kept = {"fmod": IRRELEVANT}  # the rewrite copies the op with its attributes

    def binary(name: str, a: PValue, b: PValue) -> PValue:
        return getattr(op, name)(a, b, **(kept if name == "Mod" else {}))

    return Alt(*[binary(name, tiled, y) for name in BROADCASTING],
               *[binary(name, y, tiled) for name in BROADCASTING if name not in COMMUTATIVE])


def _tiled_value(m: Match) -> str:
    """The root's operand that is the Tile or Expand output (the one that is not y)."""
    return next(i for i in m.nodes[0].inputs if i != m["y"])


def check_broadcast(m: Match) -> MatchFailure | None:
    if all(i == m["y"] for i in m.nodes[0].inputs):
        return MatchFailure("both operands are the tiled value")
    src = m.graph.producer.get(m["y"])
    if src is not None and _tiled_value(m) in src.inputs:  # y = ReduceMean(tiled), say
        return MatchFailure(f"y is computed from the repeated value by {src.op_type}: the "
                            f"repeat stays, and the pattern around both (a LayerNorm) would split")
    t, x, y = _tiled_dims(m), m.shape("x"), m.shape("y")
    if t is None or x is None or y is None:
        return MatchFailure(f"shapes unknown: tiled {t}, x {x}, y {y}")
    for k in range(1, len(t) + 1):
        td, xd, yd = t[-k], _dim(x, k), _dim(y, k)
        if same(td, xd) or (td == 1 and xd is _ABSENT and yd is not _ABSENT):
            continue
        if (xd is _ABSENT or xd == 1) and yd is not _ABSENT and same(yd, td):
            continue
        return MatchFailure(f"dim -{k}: tiled {td}, x {xd}, y {yd}: broadcasting x is not the "
                            f"same")
    return None


_ABSENT: Any = object()  # a dim the shape does not have (fewer dims)


def _dim(shape: Sequence[Dim], k: int) -> Dim:
    return shape[-k] if k <= len(shape) else _ABSENT


def _tiled_dims(m: Match) -> list[Dim] | None:
    """The Tile or Expand output's dims: the inferred ones, sharpened where an entry of the
    repeats (or shape) is known."""
    inferred, xs, by = m.graph.shape(_tiled_value(m)), m.shape("x"), _entries(m)
    if xs is None or by is None:
        return None if inferred is None else list(inferred)
    rank = len(xs) if m.tag("op") == "tile" else max(len(xs), len(by))
    dims: list[Dim] = []
    for k in range(rank, 0, -1):
        xd, e = _dim(xs, k), _dim(by, k)
        xd = 1 if xd is _ABSENT else xd
        if e == 1 or e is _ABSENT:
            dims.append(xd)
        elif xd == 1:
            dims.append(e)
        elif m.tag("op") == "expand":  # Expand to x's own dim, or an error
            dims.append(xd if same(e, xd) else None)
        else:
            dims.append(xd * e if isinstance(xd, int) and isinstance(e, int) else None)
    if inferred is not None and len(inferred) == rank:
        dims = [d if d is not None else i for d, i in zip(dims, inferred)]
    return dims


def _entries(m: Match) -> list[Dim] | None:
    """The repeats (or shape) entry by entry: an int, a dim of another tensor, or None."""
    if m.is_const("by"):
        return [int(v) for v in m.const("by").reshape(-1)]
    entries: list[Dim] = []
    for i in range(MAX_RANK):
        src, part = m.get(f"src{i}"), m.get(f"by{i}")
        if src is not None:
            shape = m.graph.shape(src)
            index = int(m.const(f"index{i}").reshape(-1)[0])
            entries.append(shape[index] if shape is not None and -len(shape) <= index < len(shape)
                           else None)
            continue
        if part is None:
            break
        value, shape = m.graph.const_value(part), m.graph.shape(part)
        if value is not None:
            entries += [int(v) for v in value.reshape(-1)]
        elif shape is not None and len(shape) == 1 and isinstance(shape[0], int):
            entries += [None] * shape[0]
        else:
            return None
    return entries or None


def emit_broadcast(op: RewriteBuilder, m: Match) -> str:
    root, t = m.nodes[0], _tiled_value(m)
    inputs = [m["x"] if i == t else i for i in root.inputs]
    return op.node(root.op_type, inputs, dict(root.attrs))  # type: ignore[no-any-return]


@register
class Tile(PatternPass):
    name = "tile"
    summary = "fold Tile/Expand of constants, drop no-op and broadcast-equivalent ones, repeat once"

    def rules(self) -> list[Rule]:
        return [
            Rule(name="fold", pattern=fold_pattern, check=check_fold, rewrite=emit_fold),
            Rule(name="noop", pattern=noop_pattern, check=check_noop, rewrite=lambda op, m: m["x"]),
            Rule(name="broadcast", pattern=broadcast_pattern, check=check_broadcast,
                 rewrite=emit_broadcast),
        ]

    def run(self, ctx: PassContext) -> int:
        return compute_once(ctx.graph, {"Tile", "Expand"}) + super().run(ctx)


_NONDETERMINISTIC = RANDOM_OPS
_SMALL = 1024  # constants up to this many elements compare by value; larger ones by name


def compute_once(graph: Graph, op_types: set[str]) -> int:
    """Replace each node of ``op_types`` that computes the same value as an earlier one by that
    one. Values are numbered bottom-up: a node's number is its op, attributes and its inputs'
    numbers; a small constant's number is its value (initializer or Constant node alike)."""
    numbers: dict[Any, int] = {}
    value_number: dict[str, int] = {}
    first: dict[int, Node] = {}

    def number(key: Any) -> int:
        return numbers.setdefault(key, len(numbers))

    def of(v: str) -> int:
        if v not in value_number:
            size = graph.const_size(v) if graph.is_const(v) else None
            if size is not None and size <= _SMALL:
                c = graph.const_value(v)
                c = np.asarray(c)
                value_number[v] = number(("const", c.dtype.str, c.shape, c.tobytes()))
            else:
                value_number[v] = number(("value", v))
        return value_number[v]

    count = 0
    for node in graph.toposort():
        if node.graph is not graph:
            continue
        if node.op_type in _NONDETERMINISTIC or node.op_type == "Constant" or any(
                a.type in (a.GRAPH, a.GRAPHS) for a in node.attrs.values()):
            continue
        key = (node.domain, node.op_type, tuple(of(i) if i else -1 for i in node.inputs),
               tuple((k, a.SerializeToString()) for k, a in sorted(node.attrs.items())))
        for k, o in enumerate(node.outputs):
            if o:
                value_number.setdefault(o, number((key, k)))
        if node.op_type not in op_types or node.domain:
            continue
        earlier = first.setdefault(value_number[node.outputs[0]], node)
        if earlier is not node and not any(graph.is_output(o) for o in node.outputs):
            graph.replace([node], node.outputs, [], earlier.outputs)
            count += 1
    return count
