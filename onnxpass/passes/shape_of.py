"""shape_of: Shape(MatMul(a, b)) -> Concat(Shape(a)[:-1], Shape(b)[-1:]).

Exporters size a mask by the attention scores it is added to (``mask.expand(scores.shape)``), so
the scores feed a Shape node and no fusion can swallow them. The shape of a product is known from
its operands' shapes when their ranks are equal and their batch dims are known equal (no
broadcasting); the MatMul stays for its other users. Refused otherwise: a broadcasting batch dim
would make Shape(a)[:-2] differ from the product's.

Attributes checked: Shape ``start`` must be 0 and ``end`` absent (a Shape(s, start=1) is a
slice of the shape, refused); MatMul has none.
"""
from __future__ import annotations

import numpy as np

from onnxpass.passes.base import PatternPass, register
from onnxpass.passes.dims import UnprovenDims, proving_dims
from onnxpass.patterns import Match, MatchFailure, RewriteOps, Rule

# Between a Softmax and the product it feeds (attention probabilities @ V), exporters put these.
_PROBABILITY_PATH = frozenset({"Where", "Cast", "Dropout", "Identity", "Mul"})


def _from_softmax(m: Match, value: str, hops: int = 3) -> bool:
    """``value`` is a Softmax's output, or reached from one through ``_PROBABILITY_PATH`` ops."""
    node = m.graph.producer.get(value)
    if node is None or node.domain:
        return False
    if node.op_type == "Softmax":
        return True
    return hops > 0 and node.op_type in _PROBABILITY_PATH and any(
        _from_softmax(m, i, hops - 1) for i in node.inputs if i)


@proving_dims
def _check(m: Match) -> MatchFailure | None:
    if _from_softmax(m, m["a"]):  # Shape(P @ V): attention's output, not its scores
        return MatchFailure("a is attention probabilities: a Shape of them would keep the "
                            "attention from fusing (its output's Shape does not)")
    sa, sb = m.shape("a"), m.shape("b")
    if sa is None or sb is None or len(sa) != len(sb) or len(sa) < 2:
        return MatchFailure(f"operand shapes {sa} and {sb}: need equal ranks >= 2")
    for da, db in zip(sa[:-2], sb[:-2]):
        if da is None or da != db:
            return UnprovenDims(f"batch dims {sa[:-2]} and {sb[:-2]} are not known equal")
    return None


def _rewrite(op: RewriteOps, m: Match) -> str:
    i64 = lambda *v: op.const(np.array(v, np.int64))
    lead = op.Slice(op.Shape(m["a"]), i64(0), i64(-1))
    last = op.Slice(op.Shape(m["b"]), i64(-1), i64(np.iinfo(np.int64).max))
    return op.Concat(lead, last, axis=0)


@register
class ShapeOf(PatternPass):
    name = "shape_of"
    summary = "Shape(MatMul(a, b)) -> Concat(Shape(a)[:-1], Shape(b)[-1:]) (frees the product)"

    def rules(self) -> list[Rule]:
        # Shape's start and end (opset 15) are left unnamed: they must hold their defaults
        return [Rule(name="shape-of-matmul",
                     pattern=lambda op, a, b: op.Shape(op.MatMul(a, b).shared()),
                     rewrite=_rewrite, check=_check)]
