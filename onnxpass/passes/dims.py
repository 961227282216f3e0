"""Provable facts about dims, shared by the passes that rewrite shapes (matmul2d,
add_bias_transpose, const_slice, tile): when two dims are the same, what a Reshape produces, and
how to rebuild leading dims of a tensor at run time.

A dim is an int, a symbol (the same symbol is the same size everywhere in a graph, as in ONNX
shape inference), or None (unknown). Only ints and symbols prove anything.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from onnxpass.graph import Dim, Graph
from onnxpass.patterns import Match, MatchFailure, RewriteBuilder

_R = TypeVar("_R")


class UnprovenDims(MatchFailure):
    """A check's failure that better dims could turn into a match: a symbolic dim ONNX's
    inference did not name (``unk__3`` where ONNX Runtime's symbolic inference proves
    ``2*batch``). :func:`proving_dims` proves them and checks again."""

    __slots__ = ()


def proving_dims(check: Callable[..., _R],
                 doubt: Callable[[Match[Any]], bool] | None = None) -> Callable[..., _R]:
    """``check`` (called with the match first), run again after :meth:`Graph.prove_dims` when
    it fails with :class:`UnprovenDims` (or any failure where ``doubt(match)`` holds). The proof
    costs seconds on a big model, once between two shape inferences: checks ask for it only
    where dims decide."""
    @functools.wraps(check)
    def checked(m: Match[Any], *args: Any) -> _R:
        result = check(m, *args)
        if isinstance(result, MatchFailure) and (
                isinstance(result, UnprovenDims) or (doubt is not None and doubt(m))) \
                and m.graph.prove_dims():
            result = check(m, *args)
        return result
    return checked


def same(a: Dim, b: Dim) -> bool:
    """``a`` and ``b`` are provably the same size."""
    return a is not None and a == b


def same_shape(a: Sequence[Dim] | None, b: Sequence[Dim] | None) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(map(same, a, b))


def reshape_dims(graph: Graph, x: str, target: str, out: str, allowzero: int = 0,
                 in_dims: Sequence[Dim] | None = None) -> list[Dim] | None:
    """The dims of ``out = Reshape(x, target)``: a constant target resolved against x's dims
    (``in_dims`` if known better than x's inferred shape; 0 copies a dim unless ``allowzero``,
    -1 is what is left, symbols included), any dim still unknown taken from the inferred shape
    of ``out``. None when even the rank is unknown."""
    inferred = graph.shape(out)
    t = graph.const_value(target)
    if t is None:
        return None if inferred is None else list(inferred)
    known = in_dims if in_dims is not None else graph.shape(x)
    xs = known or ()
    dims: list[Dim] = []
    for i, v in enumerate(int(v) for v in t.reshape(-1)):
        if v == 0 and not allowzero:
            dims.append(xs[i] if i < len(xs) else None)
        else:
            dims.append(None if v == -1 else v)
    if dims.count(None) == 1 and -1 in t and known is not None:
        dims[dims.index(None)] = _quotient(xs, [d for d in dims if d is not None])
    if inferred is not None and len(inferred) == len(dims):
        dims = [d if d is not None else i for d, i in zip(dims, inferred)]
    return dims


def _quotient(total: Sequence[Dim], part: Sequence[Dim]) -> Dim:
    """prod(total) / prod(part) where that is provable: a leftover int, or one leftover symbol."""
    if any(d is None for d in total):
        return None
    syms = Counter(d for d in total if isinstance(d, str))
    syms.subtract(d for d in part if isinstance(d, str))
    if any(c < 0 for c in syms.values()):
        return None
    left = [s for s, c in syms.items() for _ in range(c)]
    num = int(np.prod([d for d in total if isinstance(d, int)]))
    den = int(np.prod([d for d in part if isinstance(d, int)]))
    if den == 0 or num % den:
        return None
    ratio = num // den
    if not left:
        return ratio
    return left[0] if len(left) == 1 and ratio == 1 else None


def reshape_to(op: RewriteBuilder, graph: Graph, y: str, x: str, count: int,
               tail: Sequence[int]) -> str:
    """Reshape ``y`` to ``x.shape[:count] + tail``. The target is a constant when at most one of
    those dims is symbolic (it becomes -1), else computed at run time by Shape/Slice/Concat (with
    allowzero from opset 14, so that an empty dim stays a size, not "copy"). The caller has made
    sure x's static dims are non-zero: 0 in a constant target means "copy"."""
    dims = (graph.shape(x) or ())[:count]
    if len(dims) == count and sum(not isinstance(d, int) for d in dims) <= 1:
        head = [d if isinstance(d, int) else -1 for d in dims]
        return op.Reshape(y, op.const(np.array(head + list(tail), dtype=np.int64), hint="shape"))
    one = lambda v: op.const(np.array([v], dtype=np.int64), hint="shape")
    head_dims = op.Slice(op.Shape(x), one(0), one(count))
    target = op.Concat(head_dims, op.const(np.array(tail, dtype=np.int64), hint="shape"), axis=0)
    return op.Reshape(y, target, allowzero=1 if graph.opset() >= 14 else None)
