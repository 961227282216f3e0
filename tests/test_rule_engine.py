"""The rule engine: one function finds matches for run, --explain, the opset decision and tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxpass.api import rewrite
from onnxpass.graph import Graph
from onnxpass.passes.base import PassContext, PatternPass, parse_passes
from onnxpass.passes.manager import parse_pipeline
from onnxpass.patterns import Match, MatchFailure, Rule, apply_rules, explain, find_matches
from onnxpass.plugins.base import get_plugin
from onnxpass.testing.golden import GoldenCase
from tests.helpers import graph, ops

GOLDENS = sorted((Path(__file__).parent / "goldens").rglob("*.golden"))


def gelu(opset: int, dtype: str = "float") -> str:
    return f"""<ir_version: 8, opset_import: ["" : {opset}]>
    g ({dtype}[2,8] x) => ({dtype}[2,8] y) <{dtype} r = {{0.70710677}}, {dtype} one = {{1.0}},
                                           {dtype} half = {{0.5}}> {{
      xs = Mul (x, r)
      e = Erf (xs)
      e1 = Add (one, e)
      xe = Mul (x, e1)
      y = Mul (xe, half)
    }}"""


def test_float32_gelu_plugin_at_opset_12_raises_the_opset() -> None:
    model = onnx.parser.parse_model(gelu(12))
    [p] = parse_passes("gelu=plugin")
    assert isinstance(p, PatternPass)
    [attempt] = [a for a in explain(Graph(model), p.rules())
                 if a.rule == "gelu" and a.node.outputs == ["y"]]
    assert attempt.matched and attempt.opset == 13
    out, result = rewrite(model, "gelu=plugin")
    assert ops(out) == ["GeluPlugin"]
    assert {o.domain: o.version for o in out.opset_import}[""] == 13
    assert any("13" in n for n in result.notes)


def test_float16_gelu_plugin_needs_castlike() -> None:
    model = onnx.parser.parse_model(gelu(12))
    for t in model.graph.initializer:  # the parser reads no float16 literals
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in [*model.graph.input, *model.graph.output]:
        v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    out, _ = rewrite(model, "gelu=plugin")
    assert ops(out) == ["GeluPlugin"]
    assert {o.domain: o.version for o in out.opset_import}[""] == 15


def test_a_plugin_refusal_leaves_the_subgraph_and_explains() -> None:
    """A float64 Gelu matches, but GeluPlugin's spec does not take float64: no abort."""
    g = graph("""<ir_version: 9, opset_import: ["" : 20]>
    g (double[2,8] x) => (double[2,8] y) { y = Gelu (x) }""")
    [p] = parse_passes("gelu=plugin")
    assert isinstance(p, PatternPass)
    [attempt] = [a for a in p.explain(g) if a.rule == "gelu-native"]
    assert not attempt.matched and "GeluPlugin takes x of dtype" in attempt.reason
    ctx = PassContext(g)
    assert p.run(ctx) == 0 and "GeluPlugin" not in ops(ctx.graph)


def test_spec_says_what_it_can_emit() -> None:
    spec = get_plugin("GeluPlugin")
    assert spec.can_emit(13, {"x": "float32"}) is None
    assert "opset >= 13" in (spec.can_emit(12, {"x": "float32"}) or "")
    assert "opset >= 15" in (spec.can_emit(14, {"x": "float16"}) or "")
    assert "dtype" in (spec.can_emit(18, {"x": "int64"}) or "")
    attention = get_plugin("AttentionPlugin")
    types = {"q": "float32", "k": "float32", "v": "float32", "mask": "float32"}
    assert attention.opset_for(types, {"softmax_precision": onnx.TensorProto.FLOAT}) == 13
    assert attention.opset_for(types, {"softmax_precision": onnx.TensorProto.DOUBLE}) == 15


def test_match_names_are_checked() -> None:
    g = graph("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x, float[4] b) => (float[4] y) { y = Relu (x) }""")
    seen: list[Match[None]] = []

    def check(m: Match[None]) -> None:
        seen.append(m)

    rule = Rule(name="r", pattern=lambda op, x, b: op.Relu(x) | op.Relu(op.Add(x, b)),
                rewrite=lambda op, m: m["x"], check=check)
    assert apply_rules(g, [rule], "t") == 1
    m = seen[0]
    assert m.get("b") is None and "b" not in m  # an optional branch left it unbound
    with pytest.raises(KeyError, match="binds b, x"):
        m.get("beta")
    with pytest.raises(KeyError, match="binds b, x"):
        m["beta"]


def test_check_result_reaches_the_rewrite_and_refusals_leave_nothing() -> None:
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) { y = Relu (x) }"""
    g = graph(text)

    def declines(op, m):  # type: ignore[no-untyped-def]
        op.const([1.0, 2.0])  # recorded, never added: the rewrite declines
        return None

    assert apply_rules(g, [Rule(name="r", pattern=lambda op, x: op.Relu(x), rewrite=declines)],
                       "t") == 0
    assert not g.to_model().graph.initializer

    def with_facts(op, m: Match[float]):  # type: ignore[no-untyped-def]
        return op.Mul(m["x"], op.const(m.facts))

    rule = Rule(name="r", pattern=lambda op, x: op.Relu(x), rewrite=with_facts,
                check=lambda m: 2.0)
    assert apply_rules(g, [rule], "t") == 1
    assert [t.name for t in g.to_model().graph.initializer] == ["const"]


def test_refusal_by_a_check_is_reported() -> None:
    g = graph("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) { y = Relu (x) }""")
    rule = Rule(name="r", pattern=lambda op, x: op.Relu(x), rewrite=lambda op, m: m["x"],
                check=lambda m: MatchFailure("no"))
    [found] = find_matches(g, [rule])
    assert not found.accepted and found.failure is not None and "no" in found.failure.reason


def test_higher_benefit_is_tried_first() -> None:
    g = graph("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) { y = Relu (x) }""")
    low = Rule(name="low", pattern=lambda op, x: op.Relu(x), rewrite=lambda op, m: op.Neg(m["x"]))
    high = Rule(name="high", pattern=lambda op, x: op.Relu(x),
                rewrite=lambda op, m: op.Abs(m["x"]), benefit=1)
    [found] = [f for f in find_matches(g, [low, high]) if f.accepted]
    assert found.rule.name == "high"


@pytest.mark.parametrize("path", GOLDENS, ids=[f"{p.parent.name}/{p.stem}" for p in GOLDENS])
def test_explain_agrees_with_run(path: Path) -> None:
    """Each pattern pass of a golden's pipeline rewrites exactly when --explain says a rule
    matches (on the graph the pass sees). A pass that does more than its rules in ``run``
    (tile's compute_once) may also rewrite where no rule matches."""
    case = GoldenCase.parse(path)
    g = Graph(onnx.parser.parse_model(case.source))
    g.refresh_types()
    for p in parse_pipeline(case.passes):
        matched = isinstance(p, PatternPass) and any(a.matched for a in p.explain(g))
        ctx = PassContext(g)
        count = p.run(ctx)
        if isinstance(p, PatternPass):
            rules_only = type(p).run is PatternPass.run
            assert count > 0 if matched else (count == 0 or not rules_only), \
                f"{p.label}: explain says matched={matched}, run made {count} rewrites"
        g = ctx.graph
        if count:
            g.refresh_types()
