"""Clean-up passes the pipelines need: dead code, no-ops, common subexpressions, constants."""

from __future__ import annotations

import os
import tempfile

import onnx

from onnxpass.graph import Graph, Node
from onnxpass.passes.base import Pass, PassContext, PatternPass, register
from onnxpass.patterns import Attr, Const, Match, MatchFailure, Rule, Var


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
    name = "noop"
    summary = ("remove Identity, inference Dropout, same-type Cast/CastLike, identity "
               "Transpose/Reshape, x*1, x+0")

    def rules(self) -> list[Rule]:
        same = lambda op, m: m["x"]  # noqa: E731
        return [
            Rule("identity", lambda op, x: op.Identity(x), same, _keeps_shape),
            Rule("dropout", lambda op, x: op.Dropout(x), same, _keeps_shape),
            Rule("cast", lambda op, x: op.Cast(x), same, _keeps_shape),
            Rule("castlike", lambda op, x, like: op.CastLike(x, like), same, _keeps_shape),
            Rule("transpose", lambda op, x: op.Transpose(x, perm=Attr(_identity_perm)), same,
                 _keeps_shape),
            Rule("reshape", lambda op, x: op.Reshape(x, Var("shape")), same, _keeps_shape),
            Rule("mul-one", lambda op, x: op.Mul(x, Const(value=1.0)), same, _keeps_shape),
            Rule("div-one", lambda op, x: op.Div(x, Const(value=1.0)), same, _keeps_shape),
            Rule("add-zero", lambda op, x: op.Add(x, Const(value=0.0)), same, _keeps_shape),
            Rule("sub-zero", lambda op, x: op.Sub(x, Const(value=0.0)), same, _keeps_shape),
        ]


_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                     "Multinomial", "Bernoulli"}


@register
class CommonSubexpressions(Pass):
    name = "cse"
    summary = "compute identical nodes (same op, inputs and attributes) once"

    def run(self, ctx: PassContext) -> int:
        g = ctx.graph
        seen: dict[tuple[object, ...], Node] = {}
        count = 0
        for node in g.toposort():
            if node.graph is not g or node.op_type in _NONDETERMINISTIC or _has_subgraph(node):
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
class FoldConstants(Pass):
    name = "fold"
    summary = "fold computations on constants (polygraphy's constant folding on ONNX Runtime)"

    def run(self, ctx: PassContext) -> int:
        from polygraphy.backend.onnx import fold_constants
        from polygraphy.logger import G_LOGGER

        G_LOGGER.module_severity = G_LOGGER.ERROR
        g = ctx.graph
        before = len(g.live_nodes())
        model = g.to_model()
        # Local functions (plugin reference bodies) do not survive GraphSurgeon's round trip:
        # fold without them and put them back. Plugin nodes are never constant-folded anyway.
        functions = [onnx.FunctionProto() for _ in model.functions]
        for copy, f in zip(functions, model.functions):
            copy.CopyFrom(f)
        opsets = {o.domain: o.version for o in model.opset_import}
        del model.functions[:]
        external = any(t.data_location == onnx.TensorProto.EXTERNAL
                       for t in model.graph.initializer)
        cwd = os.getcwd()
        try:
            with tempfile.TemporaryDirectory(prefix="onnxpass-fold-") as scratch:
                # ONNX Runtime's symbolic shape inference (which lets folding see through dynamic
                # shapes) writes temp files into the cwd: give it a scratch folder. External data
                # is found relative to the cwd by polygraphy, so those models fold without it.
                if not external:
                    os.chdir(scratch)
                # Tensors over 16 MiB would be materialized by folding: leave those as they are.
                folded = fold_constants(model, size_threshold=16 << 20, error_ok=True,
                                        allow_onnxruntime_shape_inference=not external)
        finally:
            os.chdir(cwd)
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
        ctx.graph = Graph(folded, g.base_dir)
        return max(0, before - len(ctx.graph.live_nodes()))


