"""Pattern values: what a pattern function builds when it calls ``op.Foo(...)``.

A pattern is a small DAG of these objects. They are plain data; :mod:`onnxpass.patterns.matcher`
gives them meaning against a :class:`~onnxpass.graph.Graph`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Ops whose two inputs may come in either order. Matched natively: the matcher tries both orders.
COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal"})


class PValue:
    """Anything that can stand where a graph value stands in a pattern."""

    def __or__(self, other: PValue) -> Alt:
        left = list(self.branches) if isinstance(self, Alt) and self.tag is None else [self]
        return Alt(*left, _as_pvalue(other))

    def optional(self) -> PValue:
        """This op may be absent: match it, or its first input in its place (a Cast wrapper)."""
        node = _node_of(self, "optional")
        return Optional(self, node.inputs[0])

    def repeated(self, min_count: int = 0, max_count: int = 8) -> PValue:
        """A chain of this unary op, ``min_count``..``max_count`` long, over its first input."""
        node = _node_of(self, "repeated")
        return Repeat(node, node.inputs[0], min_count, max_count)

    def shared(self) -> PValue:
        """Match this subexpression but leave its nodes in place (dead-code removal drops them
        once unused), so they may also feed the rest of the graph: a mask built once for every
        layer."""
        return Shared(self)


@dataclass(eq=False)
class Var(PValue):
    """Binds any graph value (or, in attribute position, any attribute value).

    ``shape`` is a sequence of ints, symbol names (which must agree across the whole match) and
    ``"..."`` for any number of leading dims; ``dtype`` an ONNX element type or a set of them.
    """

    name: str
    shape: Sequence[int | str] | None = None
    dtype: int | frozenset[int] | None = None

    def __repr__(self) -> str:
        return self.name


@dataclass(eq=False)
class Const(PValue):
    """A constant: bound by name to its numpy value, or matched against ``value``.

    ``value`` matches a constant whose every element, in the constant's own dtype, is ``value``
    rounded to that dtype, or at most ``ulps`` units in the last place from it (``ulps=1`` for an
    irrational value an exporter may have computed in that dtype). Integer constants must be
    equal. Never a relative tolerance: 1.00009 is not 1.
    """

    name: str | None = None
    value: Any = None
    ulps: int = 0
    shape: Sequence[int | str] | None = None

    def __repr__(self) -> str:
        return self.name or f"{self.value}"

    def accepts(self, array: np.ndarray) -> bool:
        if self.value is None:
            return True
        got = np.asarray(array)
        want = np.asarray(self.value, dtype=np.float64)
        if got.size == 0 or (want.size != 1 and got.shape != want.shape):
            return False
        if got.dtype.kind in "iub":
            return bool(np.all(got.astype(np.float64) == want))
        try:
            rounded = np.broadcast_to(want.astype(got.dtype), got.shape)
        except (TypeError, ValueError):
            return False
        return max_ulps(got, rounded) <= self.ulps


def max_ulps(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance in units in the last place between same-dtype float arrays (inf if
    any element is NaN); -0.0 and 0.0 are 0 apart."""
    if a.dtype != b.dtype or a.dtype.itemsize not in _INT_OF_SIZE:
        return math.inf
    if np.any(np.isnan(a.astype(np.float64))) or np.any(np.isnan(b.astype(np.float64))):
        return math.inf
    ints = _INT_OF_SIZE[a.dtype.itemsize]
    low = int(np.iinfo(ints).min)

    def ordinal(x: np.ndarray) -> list[int]:  # sign-magnitude bits -> a monotone integer
        return [v if v >= 0 else low - v for v in np.ascontiguousarray(x).view(ints).reshape(-1)
                .tolist()]

    return float(max((abs(p - q) for p, q in zip(ordinal(a), ordinal(b))), default=0))


_INT_OF_SIZE = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


@dataclass(eq=False)
class PNode:
    """One op in a pattern. ``outputs`` is how many outputs it has; its values are :class:`Out`."""

    op_type: str
    inputs: list[PValue]
    attrs: dict[str, Any]
    domain: str = ""
    num_outputs: int = 1
    outs: list[Out] = field(default_factory=list)
    any_attrs: bool = False  # the rewrite keeps the node's attributes (copies or evaluates it)

    def __repr__(self) -> str:
        return self.op_type


@dataclass(eq=False)
class Out(PValue):
    node: PNode
    index: int = 0

    def __repr__(self) -> str:
        return f"{self.node.op_type}(...)" + (f"[{self.index}]" if self.index else "")


@dataclass(eq=False)
class Alt(PValue):
    """One of several patterns. With ``tag``, the match records which branch fired under that tag
    (the branch's name if given as keywords, else its index)."""

    branches: list[PValue]
    names: list[str]
    tag: str | None

    def __init__(self, *branches: PValue, tag: str | None = None, **named: PValue) -> None:
        self.branches = [_as_pvalue(b) for b in branches] + [_as_pvalue(b) for b in named.values()]
        self.names = [str(i) for i in range(len(branches))] + list(named)
        self.tag = tag

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.branches))


@dataclass(eq=False)
class Optional(PValue):
    present: PValue
    absent: PValue


@dataclass(eq=False)
class Repeat(PValue):
    node: PNode
    base: PValue
    min_count: int
    max_count: int


@dataclass(eq=False)
class Shared(PValue):
    inner: PValue


@dataclass(eq=False)
class Attr:
    """Attribute constraint: any value satisfying ``predicate`` (bound under ``name`` if given)."""

    predicate: Callable[[Any], bool]
    name: str | None = None


class _Irrelevant:
    def __repr__(self) -> str:
        return "IRRELEVANT"


# An attribute whose value the pass's check proves does not change the result (a same-type
# Cast's ``saturate``): matched whatever it holds, and the docstring says why.
IRRELEVANT: Any = _Irrelevant()


def _as_pvalue(x: Any) -> PValue:
    if isinstance(x, PValue):
        return x
    if isinstance(x, (int, float, np.ndarray, list, tuple)):
        return Const(value=x)
    raise TypeError(f"cannot use {x!r} as a pattern value")


def _node_of(v: PValue, what: str) -> PNode:
    if not isinstance(v, Out) or not v.node.inputs:
        raise TypeError(f".{what}() applies to an op with an input, not {v!r}")
    return v.node


class OpBuilder:
    """The ``op`` a pattern function receives: ``op.ReduceMean(x, keepdims=1)`` builds a PNode.

    Keywords are attributes (a literal to match, a :class:`Var` to bind, an :class:`Attr`
    predicate, :data:`IRRELEVANT` for one the check proves does not matter); ``_domain`` and
    ``_outputs`` choose the domain and number of outputs. Every other attribute the graph node
    sets must hold the op's default (see matcher.py); ``_any_attrs=True`` waives that for a node
    the rewrite reproduces with its attributes (folding it, copying it).
    """

    def __getattr__(self, op_type: str) -> Callable[..., Any]:
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def make(*inputs: Any, _domain: str = "", _outputs: int = 1, _any_attrs: bool = False,
                 **attrs: Any) -> Any:
            node = PNode(op_type, [_as_pvalue(i) for i in inputs], attrs, _domain, _outputs,
                         any_attrs=_any_attrs)
            node.outs = [Out(node, k) for k in range(_outputs)]
            return node.outs[0] if _outputs == 1 else tuple(node.outs)

        return make


pattern_op = OpBuilder()


def root_op_types(v: PValue) -> set[str] | None:
    """Op types a match of ``v`` can be rooted at; None means "any" (a bare Var)."""
    if isinstance(v, Out):
        return {v.node.op_type}
    if isinstance(v, Alt):
        result: set[str] = set()
        for b in v.branches:
            r = root_op_types(b)
            if r is None:
                return None
            result |= r
        return result
    if isinstance(v, Optional):
        a, b = root_op_types(v.present), root_op_types(v.absent)
        return None if a is None or b is None else a | b
    if isinstance(v, Repeat):
        base = root_op_types(v.base)
        return None if base is None else base | {v.node.op_type}
    return None


def required_op_types(v: PValue) -> set[str]:
    """Op types every match of ``v`` must contain: a rule is skipped on a graph lacking one."""
    seen: set[int] = set()

    def walk(x: PValue) -> set[str]:
        if id(x) in seen:
            return set()
        seen.add(id(x))
        if isinstance(x, Out):
            req = {x.node.op_type}
            for i in x.node.inputs:
                req |= walk(i)
            return req
        if isinstance(x, Alt):
            sets = [walk(b) for b in x.branches]
            return set.intersection(*sets) if sets else set()
        return set()

    return walk(v)
