"""The pattern language: each feature a pass author relies on, on a tiny graph."""

from __future__ import annotations

from typing import Any

import pytest
from onnx import TensorProto

from onnxpass.graph import Graph
from onnxpass.patterns import (
    Alt,
    Attr,
    Const,
    Match,
    MatchFailure,
    Rule,
    Var,
    apply_rules,
    explain,
    find_matches,
)
from tests.helpers import graph, ops

HDR = '<ir_version: 8, opset_import: ["" : 17]>'


def first_match(g: Graph, rule: Rule) -> Match[Any] | None:
    """The first match the engine would apply (the one ``run`` and ``--explain`` share)."""
    return next((f.match for f in find_matches(g, [rule]) if f.accepted), None)


def test_commutative_inputs_match_in_either_order() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) <float c = {{2.0}}> {{
        y = Add (c, x)
    }}""")
    rule = Rule(name="r", pattern=lambda op, x: op.Add(x, Const("c")), rewrite=lambda op, m: m["x"])
    m = first_match(g, rule)
    assert m is not None and m["x"] == "x" and float(m.const("c")) == 2.0


def test_alternatives_at_the_root_record_a_tag() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) {{
        y = Sigmoid (x)
    }}""")
    rule = Rule(name="r", pattern=lambda op, x: Alt(relu=op.Relu(x), sig=op.Sigmoid(x), tag="act"),
                rewrite=lambda op, m: m["x"])
    assert rule.roots == {"Relu", "Sigmoid"}
    m = first_match(g, rule)
    assert m is not None and m.tag("act") == "sig"


def test_optional_node_matches_with_and_without_it() -> None:
    pattern = lambda op, x: op.Relu(op.Cast(x, to=TensorProto.FLOAT).optional())
    rule = Rule(name="r", pattern=pattern, rewrite=lambda op, m: m["x"])
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
    rule = Rule(name="r", pattern=lambda op, x: op.Relu(op.Identity(x).repeated()),
                rewrite=lambda op, m: m["x"])
    m = first_match(g, rule)
    assert m["x"] == "x" and len(m.nodes) == 4


def test_constant_by_value_within_stated_ulps() -> None:
    text = f"""{HDR} g (float[4] x) => (float[4] y) <float r = {{VALUE}}> {{ y = Mul (x, r) }}"""
    exact = Rule(name="r", pattern=lambda op, x: op.Mul(x, 0.70710678),
                 rewrite=lambda op, m: m["x"])
    one_ulp = Rule(name="r", pattern=lambda op, x: op.Mul(x, Const(value=0.70710678, ulps=1)),
                   rewrite=lambda op, m: m["x"])
    # 0.70710677 and 0.7071067690849304 are the same float32; 0.7071068 is one ULP above
    for written in ("0.70710677", "0.7071067690849304"):
        assert first_match(graph(text.replace("VALUE", written)), exact) is not None
    assert first_match(graph(text.replace("VALUE", "0.7071068")), exact) is None
    assert first_match(graph(text.replace("VALUE", "0.7071068")), one_ulp) is not None
    assert first_match(graph(text.replace("VALUE", "0.7071069")), one_ulp) is None
    assert first_match(graph(text.replace("VALUE", "0.75")), one_ulp) is None


def test_constant_value_is_compared_in_its_own_dtype() -> None:
    import numpy as np
    from onnx import helper, numpy_helper

    from onnxpass.graph import Graph

    def mul_by(value: np.ndarray) -> Graph:
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        g = helper.make_graph([helper.make_node("Mul", ["x", "r"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", elem, [4])],
                              [helper.make_tensor_value_info("y", elem, [4])],
                              [numpy_helper.from_array(value, "r")])
        out = Graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
        out.refresh_types()
        return out

    rule = Rule(name="r", pattern=lambda op, x: op.Mul(x, 1.4142135623730951),
                rewrite=lambda op, m: m["x"])
    assert first_match(mul_by(np.array(1.414, np.float16)), rule) is not None  # sqrt 2 in fp16
    assert first_match(mul_by(np.array(1.414, np.float32)), rule) is None


def test_no_relative_tolerance_for_exact_values() -> None:
    rule = Rule(name="r", pattern=lambda op, x: op.Mul(x, 1.0), rewrite=lambda op, m: m["x"])
    for value, ok in (("1.0", True), ("1.00009", False), ("0.99999994", False)):
        g = graph(f"""{HDR} g (float[4] x) => (float[4] y) <float r = {{{value}}}> {{
            y = Mul (x, r)
        }}""")
        assert (first_match(g, rule) is not None) == ok, value


def test_unnamed_attribute_must_hold_its_default() -> None:
    rule = Rule(name="r", pattern=lambda op, x: op.Shape(x), rewrite=lambda op, m: m["x"])
    for attrs, ok in (("", True), ("<start = 0>", True), ("<start = 1>", False),
                      ("<end = 2>", False)):
        g = graph(f"""{HDR} g (float[4,5] x) => (int64[2] y) {{ y = Shape {attrs} (x) }}""")
        assert (first_match(g, rule) is not None) == ok, attrs


def test_attribute_in_input_form_must_be_named() -> None:
    rule = Rule(name="r", pattern=lambda op, x: op.ReduceSum(x, keepdims=1),
                rewrite=lambda op, m: m["x"])
    g = graph("""<ir_version: 8, opset_import: ["" : 18]>
    g (float[4,5] x) => (float[4,1] y) <int64[1] a = {1}> { y = ReduceSum (x, a) }""")
    assert first_match(g, rule) is None
    named = Rule(name="r", pattern=lambda op, x: op.ReduceSum(x, axes=Var("axes"), keepdims=1),
                 rewrite=lambda op, m: m["x"])
    assert first_match(g, named).attr("axes") == [1]


def test_irrelevant_attribute_is_proven_so() -> None:
    rule = Rule(name="r", pattern=lambda op, x: op.ReduceMean(x, axes=Var("axes")),
                rewrite=lambda op, m: m["x"])
    given = graph("""<ir_version: 8, opset_import: ["" : 18]>
    g (float[4,5] x) => (float[4,1] y) <int64[1] a = {1}> {
        y = ReduceMean <noop_with_empty_axes = 1> (x, a)
    }""")
    assert first_match(given, rule) is not None  # axes given: the flag does nothing
    absent = graph("""<ir_version: 8, opset_import: ["" : 18]>
    g (float[4,5] x) => (float[4,5] y) { y = ReduceMean <noop_with_empty_axes = 1> (x) }""")
    assert first_match(absent, rule) is None  # no axes: an identity, not a mean


def test_cast_saturate_matters_only_for_float8() -> None:
    rule = Rule(name="r", pattern=lambda op, x: op.Cast(x, to=Var("to")),
                rewrite=lambda op, m: m["x"])
    for to, name, ok in ((TensorProto.FLOAT16, "float16", True),
                         (TensorProto.FLOAT8E4M3FN, "float8e4m3fn", False)):
        g = graph(f"""<ir_version: 9, opset_import: ["" : 19]>
        g (float[4] x) => ({name}[4] y) {{ y = Cast <to = {to}, saturate = 0> (x) }}""")
        assert (first_match(g, rule) is not None) == ok, to


def test_constant_may_not_widen_the_output() -> None:
    rule = Rule(name="r", pattern=lambda op, x: op.Mul(x, 0.5), rewrite=lambda op, m: m["x"])
    for shape, ok in (("", True), ("[1]", True), ("[1,1]", True), ("[1,1,1]", False)):
        g = graph(f"""{HDR} g (float[2,4] x) => (float y) <float{shape} h = {{0.5}}> {{
            y = Mul (x, h)
        }}""")
        assert (first_match(g, rule) is not None) == ok, shape


def test_constant_node_and_initializer_are_both_constants() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) {{
        c = Constant <value = float {{3.0}}> ()
        y = Mul (x, c)
    }}""")
    m = first_match(g, Rule(name="r", pattern=lambda op, x: op.Mul(x, Const("k")),
                            rewrite=lambda op, m: m["x"]))
    assert float(m.const("k")) == 3.0


@pytest.mark.parametrize("opset,reduce", [
    (17, "m = ReduceMean <axes = [-1]> (x)"),
    (18, "m = ReduceMean (x, ax)"),
])
def test_axes_as_attribute_or_input(opset: int, reduce: str) -> None:
    g = graph(f"""<ir_version: 8, opset_import: ["" : {opset}]>
    g (float[2,4] x) => (float[2,1] m) <int64[1] ax = {{-1}}> {{ {reduce} }}""")
    rule = Rule(name="r", pattern=lambda op, x: op.ReduceMean(x, axes=Var("axes"), keepdims=1),
                rewrite=lambda op, m: m["x"])
    assert first_match(g, rule).attr("axes") == [-1]


def test_attribute_predicate_and_default_value() -> None:
    g = graph(f"""{HDR} g (float[2,4] x) => (float[2,4] y) {{ y = Softmax (x) }}""")
    # Softmax's axis defaults to -1 at opset 13+: an absent attribute matches its default.
    yes = Rule(name="r", pattern=lambda op, x: op.Softmax(x, axis=-1), rewrite=lambda op, m: m["x"])
    no = Rule(name="r", pattern=lambda op, x: op.Softmax(x, axis=Attr(lambda a: a == 0)),
              rewrite=lambda op, m: m["x"])
    assert first_match(g, yes) is not None and first_match(g, no) is None


def test_symbolic_dims_must_agree() -> None:
    text = f"""{HDR} g (float[B,S,D] x, float[E] w) => (float[B,S,D] y) {{ y = Mul (x, w) }}"""
    pattern = lambda op, x, w: op.Mul(
        Var("x", shape=["...", "D"]), Var("w", shape=["D"]))
    rule = Rule(name="r", pattern=lambda op: pattern(op, None, None), rewrite=lambda op, m: m["x"])
    assert first_match(graph(text), rule) is None
    assert first_match(graph(text.replace("float[E] w", "float[D] w")), rule) is not None


def test_pattern_with_two_outputs() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] a, float[4] b) {{
        a = Relu (x)
        b = Sigmoid (x)
    }}""")
    rule = Rule(name="r", pattern=lambda op, x: (op.Relu(x), op.Sigmoid(x)),
                rewrite=lambda op, m: op.Split(m["x"], num_outputs=2, axis=0, _outputs=2))
    m = first_match(g, rule)
    assert m is not None and m.outputs == ["a", "b"]


def test_check_refuses_and_explains() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) {{ y = Relu (x) }}""")
    rule = Rule(name="relu", pattern=lambda op, x: op.Relu(x), rewrite=lambda op, m: m["x"],
                check=lambda m: MatchFailure("not today"))
    assert apply_rules(g, [rule], "t") == 0
    [attempt] = explain(g, [rule])
    assert not attempt.matched and "not today" in attempt.reason


def test_explain_reports_how_far_a_near_miss_got() -> None:
    g = graph(f"""{HDR} g (float[4] x) => (float[4] y) {{
        a = Relu (x)
        y = Exp (a)
    }}""")
    rule = Rule(name="r", pattern=lambda op, x: op.Exp(op.Sigmoid(x)), rewrite=lambda op, m: m["x"])
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
    rule = Rule(name="double-neg", pattern=lambda op, x: op.Neg(op.Neg(x)),
                rewrite=lambda op, m: op.Identity(m["x"]))
    assert apply_rules(g, [rule], "negs") == 2
    created = [n for n in g.toposort() if n.op_type == "Identity"]
    assert created and all(n.metadata["onnxpass.pass"] == "negs" for n in created)


def test_rule_is_skipped_when_a_required_op_is_absent() -> None:
    rule = Rule(name="r", pattern=lambda op, x: op.Exp(op.Sigmoid(x)) | op.Exp(op.Tanh(x)),
                rewrite=lambda op, m: m["x"])
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

        return Rule(name="r", pattern=pattern,
                    rewrite=lambda op, m: op.Where(m["m"], op.Relu(m["x"]), m["x"]))

    g = graph(text)
    assert apply_rules(g, [rule(shared=False)], "t") == 0  # bias feeds the other layer too
    assert apply_rules(g, [rule(shared=True)], "t") == 2
    g.remove_dead()
    assert "Mul" not in ops(g.to_model())  # dead once both layers were rewritten
