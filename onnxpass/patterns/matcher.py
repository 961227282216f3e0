"""Anchored, backtracking matching of a pattern against a graph.

Matching starts at one graph value (the anchor) and walks producers. Every choice point (the input
order of a commutative op, an alternative, an optional node, a chain length) is a generator branch,
so alternatives cost only what they try and no rule is ever cloned. A :class:`Tracer` keeps the
deepest point each attempt reached, which is what ``--explain`` prints.

Exact semantics, for every pattern alike:
- an attribute the graph node sets (or an attribute in input form, ReduceMean's axes at opset 18)
  that the pattern does not name must hold the op's default at the model's opset, or be one
  :data:`IRRELEVANT_WHEN` proves does not change the result here; else the node does not match;
- a :class:`Const` operand of an elementwise op may not broadcast the op's output beyond the
  other operands' shape (an eps stored as [1,1,1,1] in a rank-3 chain): the fused op would
  return the smaller shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from onnx import TensorProto

from onnxpass.graph import ATTR_INPUTS, NOT_CONSTANT, Graph, Node
from onnxpass.patterns.ir import (
    COMMUTATIVE,
    IRRELEVANT,
    Alt,
    Attr,
    Const,
    Optional,
    Out,
    PNode,
    PValue,
    Repeat,
    Shared,
    Var,
)


class MatchFailure:
    """Why a match (or a check) failed. Falsy, so ``if failure:`` reads naturally in checks."""

    __slots__ = ("reason", "depth", "node")

    def __init__(self, reason: str, depth: int = 0, node: Node | None = None) -> None:
        self.reason = reason
        self.depth = depth
        self.node = node

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"MatchFailure({self.reason!r})"


@dataclass
class Bindings:
    """Immutable-by-convention state of one partial match."""

    values: dict[str, str] = field(default_factory=dict)        # Var name -> graph value
    attrs: dict[str, Any] = field(default_factory=dict)         # bound attribute / constant values
    nodes: dict[int, Node] = field(default_factory=dict)        # id(PNode) -> graph node
    tags: dict[str, str] = field(default_factory=dict)
    dims: dict[str, int | str] = field(default_factory=dict)    # shape symbol -> dim
    order: tuple[Node, ...] = ()

    def extend(self, **changes: Any) -> Bindings:
        new = Bindings(dict(self.values), dict(self.attrs), dict(self.nodes), dict(self.tags),
                       dict(self.dims), self.order)
        for k, v in changes.items():
            if k == "order":
                new.order = v
            else:
                getattr(new, k).update(v)
        return new


class Tracer:
    """Records the deepest failure of a match attempt."""

    def __init__(self) -> None:
        self.best = MatchFailure("no attempt", -1)

    def fail(self, b: Bindings, reason: str, node: Node | None = None) -> None:
        depth = len(b.order)
        if depth >= self.best.depth:
            self.best = MatchFailure(reason, depth, node)

    def refuse(self, nodes: tuple[Node, ...], reason: str) -> None:
        """A complete match refused by a check or by self-containment: the most informative
        failure there is, so it always wins."""
        if self.best.depth < _COMPLETE:
            self.best = MatchFailure(reason, _COMPLETE, nodes[-1] if nodes else None)


_COMPLETE = 10**9


class Matcher:
    def __init__(self, graph: Graph, tracer: Tracer | None = None) -> None:
        self.g = graph
        self.t = tracer or Tracer()

    def match(self, p: PValue, value: str, b: Bindings) -> Iterator[Bindings]:
        if isinstance(p, Out):
            yield from self._out(p, value, b)
        elif isinstance(p, Var):
            yield from self._var(p, value, b)
        elif isinstance(p, Const):
            yield from self._const(p, value, b)
        elif isinstance(p, Alt):
            for name, branch in zip(p.names, p.branches):
                tagged = b.extend(tags={p.tag: name}) if p.tag else b
                yield from self.match(branch, value, tagged)
        elif isinstance(p, Optional):
            yield from self.match(p.present, value, b)
            yield from self.match(p.absent, value, b)
        elif isinstance(p, Repeat):
            yield from self._repeat(p, value, b, 0)
        elif isinstance(p, Shared):  # its nodes stay bound but are not part of what is replaced
            for b2 in self.match(p.inner, value, b):
                yield b2.extend(order=b.order)
        else:  # pragma: no cover - the builder only makes the kinds above
            raise TypeError(f"unknown pattern value {p!r}")

    def match_all(self, pairs: Sequence[tuple[PValue, str]], b: Bindings) -> Iterator[Bindings]:
        if not pairs:
            yield b
            return
        (p, v), rest = pairs[0], pairs[1:]
        for b2 in self.match(p, v, b):
            yield from self.match_all(rest, b2)

    # ---- kinds ------------------------------------------------------------------------------
    def _var(self, p: Var, value: str, b: Bindings) -> Iterator[Bindings]:
        bound = b.values.get(p.name)
        if bound is not None:
            if bound == value:
                yield b
            else:
                self.t.fail(b, f"{p.name} must be one value but is {bound!r} and {value!r}")
            return
        if not value:
            self.t.fail(b, f"{p.name}: input is absent")
            return
        if p.dtype is not None:
            dt = self.g.dtype(value)
            ok = dt in p.dtype if isinstance(p.dtype, frozenset) else dt == p.dtype
            if not ok:
                self.t.fail(b, f"{p.name}: dtype {dt} not allowed")
                return
        b2 = b.extend(values={p.name: value})
        if p.shape is not None:
            b2 = self._unify_shape(p.name, p.shape, value, b2)
            if b2 is None:
                return
        yield b2

    def _const(self, p: Const, value: str, b: Bindings) -> Iterator[Bindings]:
        if p.name is not None and p.name in b.values:
            if b.values[p.name] == value:
                yield b
            else:
                self.t.fail(b, f"{p.name} bound twice to different values")
            return
        if not value or not self.g.is_const(value):
            self.t.fail(b, f"{p!r}: {value!r} is not a constant", self.g.producer.get(value))
            return
        if p.value is not None:
            size = self.g.const_size(value)
            if size is not None and size > max(1, np.size(p.value)):
                self.t.fail(b, f"{value!r} is not the constant {p.value}")
                return
            arr = self.g.const_value(value)
            if arr is None or not p.accepts(arr):
                self.t.fail(b, f"constant {value!r} = {_short(arr)} is not {p.value}")
                return
        if p.name is None:
            yield b
            return
        b2 = b.extend(values={p.name: value}, attrs={p.name: self.g.const_value(value)})
        if p.shape is not None:
            b2 = self._unify_shape(p.name, p.shape, value, b2)
            if b2 is None:
                return
        yield b2

    def _out(self, p: Out, value: str, b: Bindings) -> Iterator[Bindings]:
        pn = p.node
        node = self.g.producer.get(value) if value else None
        if node is None:
            self.t.fail(b, f"expected {pn.op_type}, but {value!r} is a graph input or constant")
            return
        bound = b.nodes.get(id(pn))
        if bound is not None:
            if bound is node and node.outputs[p.index:p.index + 1] == [value]:
                yield b
            else:
                self.t.fail(b, f"{pn.op_type} must be one node", node)
            return
        if node.op_type != pn.op_type or node.domain != pn.domain:
            self.t.fail(b, f"expected {pn.op_type}, found {node.op_type}", node)
            return
        if len(node.outputs) <= p.index or node.outputs[p.index] != value:
            self.t.fail(b, f"{pn.op_type}: wrong output", node)
            return
        attrs: dict[str, Any] = {}
        for key, want in pn.attrs.items():
            got = node.attr(key)
            if got is NOT_CONSTANT:
                self.t.fail(b, f"{pn.op_type}.{key} is a computed input, not a constant", node)
                return
            res = _match_attr(want, got)
            if res is False:
                self.t.fail(b, f"{pn.op_type}.{key} = {got!r}, expected {_describe(want)}", node)
                return
            if isinstance(res, tuple):
                name, val = res
                if name in b.attrs and not _same(b.attrs[name], val):
                    self.t.fail(b, f"{pn.op_type}.{key} = {val!r} disagrees with {name}="
                                   f"{b.attrs[name]!r}", node)
                    return
                attrs[name] = val
        loose = None if pn.any_attrs else unmatched_attribute(self.g, node, pn.attrs)
        if loose:
            self.t.fail(b, loose, node)
            return
        inputs = node.data_inputs
        if len(inputs) < len(pn.inputs) or (len(inputs) > len(pn.inputs) and any(
                inputs[len(pn.inputs):])):
            self.t.fail(b, f"{pn.op_type} has {len(inputs)} inputs, pattern has {len(pn.inputs)}",
                        node)
            return
        b = b.extend(nodes={id(pn): node}, attrs=attrs, order=(*b.order, node))
        orders = [list(pn.inputs)]
        if pn.op_type in COMMUTATIVE and len(pn.inputs) == 2:
            orders.append(pn.inputs[::-1])
        for pins in orders:
            widens: str | None = None
            for b2 in self.match_all(list(zip(pins, inputs)), b):
                if pn.op_type in ELEMENTWISE and widens is None:
                    widens = self._widening_const(pins, inputs) or ""
                if widens:
                    self.t.fail(b2, widens, node)
                    continue
                yield b2

    def _widening_const(self, pins: Sequence[PValue], inputs: Sequence[str]) -> str | None:
        """Why a constant operand makes the op's output bigger than the other operands'
        broadcast (or may: a shape unknown), or None."""
        for k, (p, v) in enumerate(zip(pins, inputs)):
            if not isinstance(p, Const):
                continue
            cshape = self.g.shape(v)
            if cshape == ():
                continue
            others = [self.g.shape(u) for j, u in enumerate(inputs) if j != k and u]
            if cshape is None or not others or any(s is None for s in others):
                return f"constant {v!r} of shape {cshape} may broadcast operands of unknown shape"
            rank = max(len(s) for s in others)  # type: ignore[arg-type]
            if len(cshape) > rank:
                return f"constant {v!r} of shape {list(cshape)} adds dims to rank-{rank} operands"
            for i in range(1, len(cshape) + 1):
                dims = [s[-i] for s in others if s is not None and len(s) >= i]
                if cshape[-i] != 1 and cshape[-i] not in dims:
                    return (f"constant {v!r} of shape {list(cshape)} may widen dim -{i} of "
                            f"operands {others}")
        return None

    def _repeat(self, p: Repeat, value: str, b: Bindings, count: int) -> Iterator[Bindings]:
        node = self.g.producer.get(value)
        if count < p.max_count and node is not None and node.op_type == p.node.op_type:
            attrs_ok = all(_match_attr(w, node.attr(k)) is not False
                           for k, w in p.node.attrs.items())
            attrs_ok = attrs_ok and not unmatched_attribute(self.g, node, p.node.attrs)
            if attrs_ok and node.data_inputs:
                b2 = b.extend(order=(*b.order, node))
                yield from self._repeat(p, node.data_inputs[0], b2, count + 1)
        if count >= p.min_count:
            yield from self.match(p.base, value, b)

    def _unify_shape(self, name: str, want: Sequence[int | str], value: str,
                     b: Bindings) -> Bindings | None:
        shape = self.g.shape(value)
        if shape is None:
            self.t.fail(b, f"{name}: shape unknown")
            return None
        want = list(want)
        if want and want[0] == "...":
            want = want[1:]
            if len(shape) < len(want):
                self.t.fail(b, f"{name}: rank {len(shape)} < {len(want)}")
                return None
            shape = shape[len(shape) - len(want):]
        elif len(shape) != len(want):
            self.t.fail(b, f"{name}: rank {len(shape)}, expected {len(want)}")
            return None
        dims = dict(b.dims)
        for w, d in zip(want, shape):
            if isinstance(w, int):
                if d != w:
                    self.t.fail(b, f"{name}: dim {d} != {w}")
                    return None
            elif w != "*":
                if d is None:
                    self.t.fail(b, f"{name}: dim {w} unknown")
                    return None
                if w in dims and dims[w] != d:
                    self.t.fail(b, f"{name}: dim {w} is {dims[w]} and {d}")
                    return None
                dims[w] = d
        return b.extend(dims=dims)


# Broadcasting elementwise ops: a constant operand must not widen their output.
ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Mod", "Where", "PRelu",
    "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "BitShift",
})
_FLOAT8 = frozenset({TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
                     TensorProto.FLOAT8E5M2FNUZ, TensorProto.FLOAT4E2M1, TensorProto.FLOAT8E8M0})
_REDUCE = ATTR_INPUTS.keys() - {"Split", "Clip", "Squeeze", "Unsqueeze"}


def _cast_target(g: Graph, node: Node) -> int | None:
    return node.attr("to") if node.op_type == "Cast" else g.dtype(node.inputs[1])


def _reduces_given_axes(g: Graph, node: Node) -> bool:
    axes = node.attr("axes")
    return axes is not NOT_CONSTANT and axes is not None and len(axes) > 0


def _inference_dropout(g: Graph, node: Node) -> bool:
    mode = g.const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else False
    return mode is not None and not bool(np.any(mode))


def _shape_without_zero(g: Graph, node: Node) -> bool:
    shape = g.const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    return shape is not None and not bool(np.any(shape == 0))


# (op, attribute) -> when the attribute provably does not change the result, whatever its value.
IRRELEVANT_WHEN: dict[tuple[str, str], Callable[[Graph, Node], bool]] = {
    # saturate and round_mode act only on a float8/float4 target (ONNX Cast-19, Cast-24)
    **{(op, a): (lambda g, n: _cast_target(g, n) not in _FLOAT8)
       for op in ("Cast", "CastLike") for a in ("saturate", "round_mode")},
    # noop_with_empty_axes acts only when axes are empty or absent
    **{(op, "noop_with_empty_axes"): _reduces_given_axes for op in _REDUCE},
    # seed (opset 12+) and ratio (as an attribute, opset 7-11) act only in training mode
    ("Dropout", "seed"): _inference_dropout,
    ("Dropout", "ratio"): _inference_dropout,
    # allowzero acts only on a 0 in the target shape
    ("Reshape", "allowzero"): _shape_without_zero,
}


def unmatched_attribute(g: Graph, node: Node, named: dict[str, Any]) -> str | None:
    """Why ``node`` sets an attribute the pattern (naming ``named``) does not account for: not
    the op's default and not proven irrelevant. None when every attribute is accounted for."""
    moved = ATTR_INPUTS.get(node.op_type, {}) if node.domain == "" else {}
    present = set(node.attrs) | {k for k, i in moved.items() if len(node.inputs) > i
                                 and node.inputs[i]}
    for key in sorted(present - set(named)):
        got = node.attr(key)
        default = g.schema_default(node, key)
        if default is not None and got is not NOT_CONSTANT and _same(default, got):
            continue
        when = IRRELEVANT_WHEN.get((node.op_type, key))
        if when is not None and when(g, node):
            continue
        return f"{node.op_type}.{key} = {got!r} is neither the default {default!r} nor matched"
    return None


def _match_attr(want: Any, got: Any) -> bool | tuple[str, Any] | None:
    """False on mismatch; (name, value) to bind; None when it matches without binding."""
    if want is IRRELEVANT:
        return None
    if isinstance(want, Var):
        return (want.name, got)
    if isinstance(want, Attr):
        try:
            ok = got is not None and bool(want.predicate(got))
        except Exception:
            ok = False
        if not ok:
            return False
        return (want.name, got) if want.name else None
    if isinstance(want, (set, frozenset)):
        return None if _freeze(got) in {_freeze(w) for w in want} else False
    return None if _same(want, got) else False


def _freeze(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    if isinstance(a, bytes):
        a = a.decode()
    if isinstance(b, bytes):
        b = b.decode()
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, float) or isinstance(b, float):
        try:  # attributes hold float32: compare there, exactly
            return bool(np.float32(cast(Any, a)) == np.float32(cast(Any, b)))
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def _describe(want: Any) -> str:
    if isinstance(want, Attr):
        return getattr(want.predicate, "__doc__", None) or "a value passing the check"
    return repr(want)


def _short(arr: Any) -> str:
    if arr is None:
        return "?"
    a = np.asarray(arr)
    return repr(a.reshape(-1)[:4].tolist()) + ("..." if a.size > 4 else "")


def pattern_values(p: PValue) -> Iterator[PValue]:
    """Every PValue of a pattern, once each (shared sub-patterns are one value)."""
    seen: set[int] = set()
    stack = [p]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        if isinstance(x, Out):
            stack.extend(x.node.inputs)
        elif isinstance(x, Alt):
            stack.extend(x.branches)
        elif isinstance(x, Optional):
            stack.extend((x.present, x.absent))
        elif isinstance(x, Repeat):
            stack.extend((x.node.outs[0], x.base))
        elif isinstance(x, Shared):
            stack.append(x.inner)


def pattern_nodes(p: PValue) -> list[PNode]:
    """All PNodes of a pattern (for counting how far a match got)."""
    nodes = {id(x.node): x.node for x in pattern_values(p) if isinstance(x, Out)}
    return list(nodes.values())


def pattern_names(p: PValue) -> set[str]:
    """Every name a match of ``p`` can bind: Vars and named Consts, attributes bound by name, and
    Alt tags (what ``Match`` accepts; anything else is a misspelling)."""
    names: set[str] = set()
    for x in pattern_values(p):
        if isinstance(x, Var | Const) and x.name:
            names.add(x.name)
        elif isinstance(x, Out):
            names.update(a.name for a in x.node.attrs.values()
                         if isinstance(a, Var | Attr) and a.name)
        elif isinstance(x, Alt) and x.tag:
            names.add(x.tag)
    return names
