"""The pattern language: each feature a pass author relies on, on a tiny graph."""

from __future__ import annotations

import pytest
from onnx import TensorProto

from onnxpass.patterns import Alt, Attr, Const, MatchFailure, Rule, Var, apply_rules, explain
from tests.helpers import graph, ops

HDR = '<ir_version: 8, opset_import: ["" : 17]>'


def first_match(g, rule):  # type: ignore[no-untyped-def]
    from onnxpass.patterns.matcher import Tracer

    for node in g.toposort():
        for m in rule.matches_at(g, node, Tracer()):
            return m
    return None


def test_commutative_inputs_match_in_either_order() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) <float c = {{2.0}}> {{
        y = Add (c, x)
    }}""")
    rule = Rule("r", lambda op, x: op.Add(x, Const("c")), lambda op, m: m["x"])
    m = first_match(g, rule)
    assert m is not None and m["x"] == "x" and float(m.const("c")) == 2.0


def test_alternatives_at_the_root_record_a_tag() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) {{
        y = Sigmoid (x)
    }}""")
    rule = Rule("r", lambda op, x: Alt(relu=op.Relu(x), sig=op.Sigmoid(x), tag="act"),
                lambda op, m: m["x"])
    assert rule.roots == {"Relu", "Sigmoid"}
    m = first_match(g, rule)
    assert m is not None and m.tag("act") == "sig"


def test_optional_node_matches_with_and_without_it() -> None:
    pattern = lambda op, x: op.Relu(op.Cast(x, to=TensorProto.FLOAT).optional())  # noqa: E731
    rule = Rule("r", pattern, lambda op, m: m["x"])
    with_cast = graph(f"""{HDR} g (float16[4] x) => (float[4] y) {{
        c = Cast <to = 1> (x)
        y = Relu (c)
    }}""")
    without = graph(f"""{HDR} g (float[4] x) => (float[4] y) {{ y = Relu (x) }}""")
    assert first_match(with_cast, rule)["x"] == "x"
    assert first_match(without, rule)["x"] == "x"


def test_repeated_chain_of_any_length() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) {{
        a = Identity (x)
        b = Identity (a)
        c = Identity (b)
        y = Relu (c)
    }}""")
    rule = Rule("r", lambda op, x: op.Relu(op.Identity(x).repeated()), lambda op, m: m["x"])
    m = first_match(g, rule)
    assert m["x"] == "x" and len(m.nodes) == 4


def test_constant_by_value_with_tolerance() -> None:
    text = f"""{HDR} g (float[4] x) => (float[4] y) <float r = {{VALUE}}> {{ y = Mul (x, r) }}"""
    rule = Rule("r", lambda op, x: op.Mul(x, 0.70710678), lambda op, m: m["x"])
    assert first_match(graph(text.replace("VALUE", "0.7071068")), rule) is not None
    assert first_match(graph(text.replace("VALUE", "0.75")), rule) is None


def test_constant_node_and_initializer_are_both_constants() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) {{
        c = Constant <value = float {{3.0}}> ()
        y = Mul (x, c)
    }}""")
    m = first_match(g, Rule("r", lambda op, x: op.Mul(x, Const("k")), lambda op, m: m["x"]))
    assert float(m.const("k")) == 3.0


@pytest.mark.parametrize("opset,reduce", [
    (17, "m = ReduceMean <axes = [-1]> (x)"),
    (18, "m = ReduceMean (x, ax)"),
])
def test_axes_as_attribute_or_input(opset: int, reduce: str) -> None:
    g = graph(f"""<ir_version: 8, opset_import: ["" : {opset}]>
    g (float[2,4] x) => (float[2,1] m) <int64[1] ax = {{-1}}> {{ {reduce} }}""")
    rule = Rule("r", lambda op, x: op.ReduceMean(x, axes=Var("axes"), keepdims=1),
                lambda op, m: m["x"])
    assert first_match(g, rule).attr("axes") == [-1]


def test_attribute_predicate_and_default_value() -> None:
    g = graph(f"""{HDR} g (float[2,4] x) => (float[2,4] y) {{ y = Softmax (x) }}""")
    # Softmax's axis defaults to -1 at opset 13+: an absent attribute matches its default.
    yes = Rule("r", lambda op, x: op.Softmax(x, axis=-1), lambda op, m: m["x"])
    no = Rule("r", lambda op, x: op.Softmax(x, axis=Attr(lambda a: a == 0)), lambda op, m: m["x"])
    assert first_match(g, yes) is not None and first_match(g, no) is None


def test_symbolic_dims_must_agree() -> None:
    text = f"""{HDR} g (float[B,S,D] x, float[E] w) => (float[B,S,D] y) {{ y = Mul (x, w) }}"""
    pattern = lambda op, x, w: op.Mul(  # noqa: E731
        Var("x", shape=["...", "D"]), Var("w", shape=["D"]))
    rule = Rule("r", lambda op: pattern(op, None, None), lambda op, m: m["x"])
    assert first_match(graph(text), rule) is None
    assert first_match(graph(text.replace("float[E] w", "float[D] w")), rule) is not None


def test_pattern_with_two_outputs() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] a, float[4] b) {{
        a = Relu (x)
        b = Sigmoid (x)
    }}""")
    rule = Rule("r", lambda op, x: (op.Relu(x), op.Sigmoid(x)),
                lambda op, m: op.Split(m["x"], num_outputs=2, axis=0, _outputs=2))
    m = first_match(g, rule)
    assert m is not None and m.outputs == ["a", "b"]


def test_check_refuses_and_explains() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) {{ y = Relu (x) }}""")
    rule = Rule("relu", lambda op, x: op.Relu(x), lambda op, m: m["x"],
                check=lambda m: MatchFailure("not today"))
    assert apply_rules(g, [rule], "t") == 0
    [attempt] = explain(g, [rule])
    assert not attempt.matched and "not today" in attempt.reason


def test_explain_reports_how_far_a_near_miss_got() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) {{
        a = Relu (x)
        y = Exp (a)
    }}""")
    rule = Rule("r", lambda op, x: op.Exp(op.Sigmoid(x)), lambda op, m: m["x"])
    [attempt] = explain(g, [rule])
    assert attempt.depth == 1 and attempt.size == 2
    assert "expected Sigmoid, found Relu" in attempt.reason


def test_rewrite_runs_to_a_fixpoint_and_records_provenance() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) {{
        a = Neg (x)
        b = Neg (a)
        c = Neg (b)
        y = Neg (c)
    }}""")
    rule = Rule("double-neg", lambda op, x: op.Neg(op.Neg(x)), lambda op, m: op.Identity(m["x"]))
    assert apply_rules(g, [rule], "negs") == 2
    created = [n for n in g.toposort() if n.op_type == "Identity"]
    assert created and all(n.metadata["onnxpass.pass"] == "negs" for n in created)


def test_rule_is_skipped_when_a_required_op_is_absent() -> None:
    rule = Rule("r", lambda op, x: op.Exp(op.Sigmoid(x)) | op.Exp(op.Tanh(x)), lambda op, m: m["x"])
    assert rule.required == {"Exp"}
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) {{ y = Relu (x) }}""")
    assert apply_rules(g, [rule], "t") == 0 and ops(g) == ["Relu"]



def test_shared_subpattern_may_feed_other_nodes_and_stays() -> None:
    text = f"""{HDR} g (float[4] x1, float[4] x2, bool[4] m) => (float[4] y1, float[4] y2)
        <float big = {{-10000.0}}> {{
        mf = Cast <to = 1> (m)
        bias = Mul (mf, big)
        z1 = Add (x1, bias)
        y1 = Relu (z1)
        z2 = Add (bias, x2)
        y2 = Relu (z2)
    }}"""

    def rule(shared: bool) -> Rule:
        def pattern(op, x, m):  # type: ignore[no-untyped-def]
            bias = op.Mul(op.Cast(m, to=1), Const("big"))
            return op.Relu(op.Add(x, bias.shared() if shared else bias))

        return Rule("r", pattern, lambda op, m: op.Where(m["m"], op.Relu(m["x"]), m["x"]))

    g = graph(text)
    assert apply_rules(g, [rule(shared=False)], "t") == 0  # bias feeds the other layer too
    assert apply_rules(g, [rule(shared=True)], "t") == 2
    assert "Mul" not in ops(g.to_model())  # dropped once both layers were rewritten
