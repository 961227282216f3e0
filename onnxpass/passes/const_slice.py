"""const_slice: data movement over constants folded; inverse Transpose and Reshape pairs cancelled.

Matches
- Slice, Gather, Transpose, Reshape, Concat, Squeeze, Unsqueeze or Split whose inputs are all
  constants (AnchorDETR's merged parameters, sliced or chunked per use): each result becomes a
  new initializer, computed by ONNX's reference implementation of that node at the model's
  opset. Chains fold link by link. Pure data movement: no value changes. Skipped when the
  result would pass 16 MiB and the inputs' size (a Gather that repeats rows).
- Transpose(Transpose(x, p), q): x itself when the two permutations cancel, else one Transpose
  by the composed permutation (MST++'s rearrange followed by transpose(-2, -1)).
- Reshape(Reshape(x, a), b): x itself when the result provably has x's shape (A -> B -> A: every
  dim the same int or symbol), else one Reshape(x, b) when b is a constant that does not copy
  (0) a dim the first Reshape changed. Reshapes keep element order, so skipping the middle one
  is exact.

Never fires when a constant input is a graph input (overridable), a perm is absent and x's rank
unknown, the Reshape pair's result may differ from x's shape in any dim (a symbolic -1, a 0
copying a changed dim), or the inner node's output feeds anything else.

Attributes checked: a folded node is evaluated with all its attributes (Gather/Concat/Split
``axis``, Split ``num_outputs``/``split``, Squeeze/Unsqueeze ``axes``, Transpose ``perm``,
Reshape ``allowzero``, Slice's inputs); Transpose pairs: ``perm`` (bound and composed, absent
means reversed); Reshape pairs: ``allowzero`` of both (bound, 0 entries resolved by it, the
merged Reshape keeps the outer one's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from onnxpass.graph import Node
from onnxpass.passes.base import PatternPass, register
from onnxpass.passes.dims import reshape_dims, same, same_shape
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

# op -> numbers of inputs it may have (attributes moved to inputs, like Unsqueeze's axes, are
# read by the graph layer and not counted)
FOLDABLE = {"Slice": (1, 3, 4, 5), "Gather": (2,), "Transpose": (1,), "Reshape": (2,),
            "Concat": tuple(range(1, 17)), "Squeeze": (1,), "Unsqueeze": (1,)}
MAX_SPLIT_OUTPUTS = 8
MAX_GROWTH_BYTES = 16 << 20


def fold_pattern(op: PatternOps) -> PValue:
    return Alt(*[getattr(op, name)(*[Const() for _ in range(k)], _any_attrs=True)
                 for name, arities in FOLDABLE.items() for k in arities])


def split_pattern(outputs: int) -> Callable[[PatternOps], tuple[PValue, ...]]:
    return lambda op: op.Split(Const("data"), _outputs=outputs, _any_attrs=True)


def check_fold(m: Match[list[np.ndarray]]) -> list[np.ndarray] | MatchFailure:
    """The folded values."""
    node = m.nodes[0]
    if not all(m.graph.is_const(i) for i in node.inputs if i):
        return MatchFailure("an input in attribute position (axes) is computed")
    values = evaluate_alone(m)
    size_in = sum(np.asarray(m.graph.const_value(i)).nbytes for i in node.inputs if i)
    size_out = sum(v.nbytes for v in values)
    if size_out > max(MAX_GROWTH_BYTES, size_in):
        return MatchFailure(f"folding makes {size_out} bytes of constants out of {size_in}")
    return values


def evaluate_alone(m: Match) -> list[np.ndarray]:
    """The matched node run alone by ONNX's reference implementation at the model's opset."""
    node, g = m.nodes[0], m.graph
    # the check folds only nodes whose inputs are all constants
    feeds = cast(dict[str, np.ndarray],
                 {i: g.const_value(i) for i in dict.fromkeys(node.inputs) if i})
    graph = helper.make_graph(
        [node.to_proto()], "fold",
        [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for i, v in feeds.items()],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset())])
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]


def emit_fold(op: RewriteBuilder, m: Match[list[np.ndarray]]) -> str | tuple[str, ...]:
    names = tuple(op.const(v, hint="folded") for v in m.facts)
    return names[0] if len(names) == 1 else names


def transpose_pair(op: PatternOps, x: PValue) -> PValue:
    return op.Transpose(op.Transpose(x, perm=Var("inner")), perm=Var("outer"))


def check_transpose_pair(m: Match[list[int]]) -> list[int] | MatchFailure:
    """The one permutation the pair amounts to."""
    rank = m.rank("x")
    inner, outer = m.attr("inner"), m.attr("outer")
    if (inner is None or outer is None) and rank is None:
        return MatchFailure("a Transpose reverses the dims of a tensor of unknown rank")
    inner = list(inner) if inner is not None else list(range(rank))[::-1]  # type: ignore[arg-type]
    outer = list(outer) if outer is not None else list(range(len(inner)))[::-1]
    return [inner[k] for k in outer]  # y[i] = t[outer[i]] = x[inner[outer[i]]]


def emit_transpose_pair(op: RewriteBuilder, m: Match[list[int]]) -> str:
    perm = m.facts
    return m["x"] if perm == sorted(perm) else op.Transpose(m["x"], perm=perm)


def reshape_pair(op: PatternOps, x: PValue) -> PValue:
    mid = op.Reshape(x, Var("a"), allowzero=Var("allowzero_a"))
    return op.Reshape(mid, Var("b"), allowzero=Var("allowzero_b"))


@dataclass(frozen=True)
class ReshapePair:
    identity: bool  # the pair gives x's own shape: drop both


def check_reshape_pair(m: Match[ReshapePair]) -> ReshapePair | MatchFailure:
    inner, outer = _reshapes(m)
    mid = reshape_dims(m.graph, m["x"], m["a"], inner.outputs[0], m.attr("allowzero_a") or 0)
    out = reshape_dims(m.graph, inner.outputs[0], m["b"], outer.outputs[0],
                       m.attr("allowzero_b") or 0, in_dims=mid)
    if same_shape(out, m.shape("x")):
        return ReshapePair(identity=True)
    b = m.graph.const_value(m["b"])
    if b is None:
        return MatchFailure(f"the result {out} is not provably x's shape {m.shape('x')} and the "
                            f"second target is computed")
    xs = m.shape("x") or ()
    copied = [] if m.attr("allowzero_b") else [i for i, v in enumerate(b.reshape(-1)) if v == 0]
    for i in copied:
        if mid is None or i >= len(xs) or not same(mid[i], xs[i]):
            return MatchFailure(f"the second target copies dim {i}, which the first one changed")
    return ReshapePair(identity=False)


def _reshapes(m: Match) -> tuple[Node, Node]:
    """(inner, outer) Reshape nodes of a reshape_pair match: the inner one reads x."""
    a, b = m.nodes
    return (a, b) if a.inputs[0] == m["x"] else (b, a)


def emit_reshape_pair(op: RewriteBuilder, m: Match[ReshapePair]) -> str:
    if m.facts.identity:
        return m["x"]
    return op.Reshape(m["x"], m["b"], allowzero=m.attr("allowzero_b") or None)


@register
class ConstSlice(PatternPass):
    name = "const_slice"
    summary = ("fold Slice/Gather/Transpose/Reshape/Concat/Split over constants; cancel or merge "
               "Transpose and Reshape pairs")

    def rules(self) -> list[Rule]:
        return [
            Rule(name="fold", pattern=fold_pattern, check=check_fold, rewrite=emit_fold),
            *[Rule(name=f"fold-split{k}", pattern=split_pattern(k), check=check_fold,
                   rewrite=emit_fold)
              for k in range(1, MAX_SPLIT_OUTPUTS + 1)],
            Rule(name="transpose-pair", pattern=transpose_pair, check=check_transpose_pair,
                 rewrite=emit_transpose_pair),
            Rule(name="reshape-pair", pattern=reshape_pair, check=check_reshape_pair,
                 rewrite=emit_reshape_pair),
        ]
