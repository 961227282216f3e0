"""Clean-up passes the pipelines need: dead code, no-ops, common subexpressions, constants."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx

from onnxpass.graph import QDQ_OPS, RANDOM_OPS, Graph, Node, node_metadata, restore_node_metadata
from onnxpass.modelio import read_in_place
from onnxpass.passes.base import Pass, PassContext, PatternPass, register
from onnxpass.passes.fold_shapes import fold_with_graphsurgeon
from onnxpass.patterns import IRRELEVANT, Attr, Const, Match, MatchFailure, Rule


@register
class DeadCode(Pass):
    name = "dce"
    summary = "remove nodes and initializers no graph output depends on"

    def run(self, ctx: PassContext) -> int:
        return ctx.graph.remove_dead()


def _keeps_shape(m: Match) -> MatchFailure | None:
    """A no-op must not broadcast x to a bigger shape or change its type, and must not be the
    producer of a graph output (removing it would only move the name)."""
    if m.graph.is_output(m.outputs[0]):
        return MatchFailure("output is a graph output")
    x_shape, y_shape = m.shape("x"), m.graph.shape(m.outputs[0])
    if x_shape is None or y_shape is None or x_shape != y_shape or None in x_shape:
        return MatchFailure(f"cannot prove shape {x_shape} is unchanged ({y_shape})")
    if m.graph.dtype(m["x"]) != m.graph.dtype(m.outputs[0]):
        return MatchFailure("changes dtype")
    return None


def _identity_perm(perm: list[int]) -> bool:
    """the identity permutation"""
    return list(perm) == list(range(len(perm)))


@register
class NoOp(PatternPass):
    """Removes nodes that return their input bit for bit, with its shape and type. (A Cast or
    CastLike to x's own type is the ``canonical`` pass's, which runs before every pattern pass:
    :func:`cast_noop_rules`.)

    Constants: 1.0 (Mul, Div) and 0.0 (Add, Sub; either sign) are matched exactly (0 ULP) in the
    constant's dtype, never within a tolerance (x * 1.00009 stays); the constant may not
    broadcast x. x + 0.0 differs from x only in the sign of a zero (-0.0 + 0.0 is +0.0, which
    compares equal): accepted, as exporters write 0 + x for x (dynamo's DETR queries).
    Attributes checked: Transpose ``perm`` (identity; absent means reversed),
    Reshape ``allowzero`` (irrelevant: the output shape is proven equal to x's, all static),
    Dropout ``seed``/``ratio`` (irrelevant: inference only, no ratio or training_mode input).
    Identity, Mul, Div, Add and Sub have no attributes (from opset 7).
    """

    name = "noop"
    summary = "remove Identity, inference Dropout, identity Transpose/Reshape, x*1, x/1, x+0, x-0"

    def rules(self) -> list[Rule]:
        return [
            _noop("identity", lambda op, x: op.Identity(x)),
            _noop("dropout", lambda op, x: op.Dropout(x)),
            _noop("transpose", lambda op, x: op.Transpose(x, perm=Attr(_identity_perm))),
            _noop("reshape", lambda op, x, shape: op.Reshape(x, shape, allowzero=IRRELEVANT)),
            _noop("mul-one", lambda op, x: op.Mul(x, Const(value=1.0))),
            _noop("div-one", lambda op, x: op.Div(x, Const(value=1.0))),
            _noop("add-zero", lambda op, x: op.Add(x, Const(value=0.0))),
            _noop("sub-zero", lambda op, x: op.Sub(x, Const(value=0.0))),
        ]


def cast_noop_rules() -> list[Rule]:
    """Cast and CastLike to the type x already has: x (the canonical pass runs them). Attributes
    checked: ``to`` (the dtype must not change, so ``saturate`` and ``round_mode`` are
    irrelevant)."""
    kept = {"to": IRRELEVANT, "saturate": IRRELEVANT, "round_mode": IRRELEVANT}
    return [
        _noop("cast", lambda op, x: op.Cast(x, **kept)),
        _noop("castlike", lambda op, x, like: op.CastLike(x, like, saturate=IRRELEVANT,
                                                          round_mode=IRRELEVANT)),
    ]


def _noop(name: str, pattern: Callable[..., Any]) -> Rule:
    """A rule that replaces the op by its input x where that keeps x's shape."""
    return Rule(name=name, pattern=pattern, rewrite=lambda op, m: m["x"], check=_keeps_shape)


# Dropout: random in training mode; two of them are two different masks.
_NOT_MERGED = RANDOM_OPS | QDQ_OPS | {"Dropout"}


@register
class CommonSubexpressions(Pass):
    """Computes identical nodes once. Attributes checked: all of them, byte for byte, with the
    domain, op type and inputs; random ops and Dropout (random in training mode) never merge, nor
    do Q/DQ nodes (a QAT export's per-consumer quantizers stay one per consumer, as exported)."""

    name = "cse"
    summary = "compute identical nodes (same op, inputs and attributes) once"

    def run(self, ctx: PassContext) -> int:
        g = ctx.graph
        seen: dict[tuple[object, ...], Node] = {}
        count = 0
        for node in g.toposort():
            if node.graph is not g or node.op_type in _NOT_MERGED or _has_subgraph(node):
                continue
            key = (node.domain, node.op_type, tuple(node.inputs), len(node.outputs),
                   tuple((k, v.SerializeToString()) for k, v in sorted(node.attrs.items())))
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            if any(g.is_output(o) for o in node.outputs):
                continue
            g.replace([node], node.outputs, [], first.outputs)
            count += 1
        return count


def _has_subgraph(node: Node) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attrs.values())


@register
class FoldWithGraphSurgeon(Pass):
    """The folding ``fold`` did before it worked in place (onnxpass/passes/fold.py): the whole
    model through onnx-graphsurgeon and polygraphy's shape inference, every round; kept to
    compare against (bench/bench_fold.py, tests/test_fold.py). Folds computations on constants
    with onnx-graphsurgeon (ONNX Runtime evaluates them).

    GraphSurgeon's own shape folding is off: onnx-graphsurgeon 0.6.1 folds Shape, and Gather or
    Slice of a Shape, ignoring Shape's ``start``/``end`` (``Gather(Shape(x, start=1), 1)`` gives
    dim 1, not dim 2), and its shape-cast elision rewrites Cast(int -> float) -> op -> Cast(int)
    as the op on integers, casting its float constants to int (a Mul by 0.5 becomes a Mul by 0).
    Shape values are folded by fold_shapes.py instead, and random ops never (a fixed sample).
    """

    name = "fold_graphsurgeon"
    summary = "fold as onnxpass did before `fold`: the whole model through onnx-graphsurgeon"

    def run(self, ctx: PassContext) -> int:
        g = ctx.graph
        before = len(g.live_nodes())
        model = g.to_model()
        read_in_place(model, g.base_dir)  # GraphSurgeon reads weights from memory, as before
        metadata = node_metadata(model)  # GraphSurgeon drops node metadata
        # Local functions (plugin reference bodies) do not survive GraphSurgeon's round trip:
        # fold without them and put them back. Plugin nodes are never constant-folded anyway.
        functions = [onnx.FunctionProto() for _ in model.functions]
        for copy, f in zip(functions, model.functions):
            copy.CopyFrom(f)
        opsets = {o.domain: o.version for o in model.opset_import}
        del model.functions[:]
        try:
            folded = fold_with_graphsurgeon(model)
        finally:
            model.functions.extend(functions)
        if folded is None:
            return 0
        if folded is not model:
            del folded.functions[:]
            folded.functions.extend(functions)
            present = {o.domain for o in folded.opset_import}
            for domain, version in opsets.items():
                if domain not in present:
                    folded.opset_import.add(domain=domain, version=version)
        restore_node_metadata(folded, metadata)
        ctx.graph = Graph(folded, g.base_dir)
        return max(0, before - len(ctx.graph.live_nodes()))
