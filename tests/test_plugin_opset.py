"""Issue 11 item 6: plugin forms raise the model's opset where a plugin node needs it, by the one
mechanism the standard forms use (PatternPass.target_opset over RewriteBuilder.opset): once per
pass run, only when a match needs it, and ``onnxpass match --explain`` says so for both forms.

A float16 plugin body computes its constants in T through CastLike (opset 15): a float16
LayerNorm or GELU at opset 13 or 14 is fused at opset 15 in plugin form (17 and 20 in std form).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpass.api import rewrite
from onnxpass.cli import main
from onnxpass.graph import Graph
from onnxpass.passes.base import PassContext, PatternPass, parse_passes
from onnxpass.patterns import explain
from onnxpass.verify import run, scaled_stats
from tests.helpers import ops

H = 16  # normalized width
RTOL16 = 1e-2


def layernorm_gelu(opset: int, dtype: int = TensorProto.FLOAT16, *, gelu: bool = False,
                   eps: float = 1e-5) -> onnx.ModelProto:
    """x (B, 4, H) -> LayerNorm over H as TorchScript writes it (ReduceMean, Sub, Pow 2,
    ReduceMean, Add eps, Sqrt, Div, Mul gamma, Add beta), all in ``dtype``; with ``gelu`` an
    erf GELU after it (Div sqrt 2, Erf, Add 1, Mul x, Mul 0.5)."""
    np_t = helper.tensor_dtype_to_np_dtype(dtype)
    rng = np.random.default_rng(0)

    def const(name: str, value: object) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=np_t), name)

    inits = [const("gamma", 1 + 0.2 * rng.standard_normal(H)),
             const("beta", 0.1 * rng.standard_normal(H)), const("two", 2.0),
             const("eps", eps), const("sqrt2", np.sqrt(2.0)), const("one", 1.0),
             const("half", 0.5)]
    mean: dict[str, Any] = {"axes": [-1]} if opset < 18 else {}
    axes_in = [] if opset < 18 else ["axes"]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes"))
    nodes = [
        helper.make_node("ReduceMean", ["x", *axes_in], ["mu"], keepdims=1, **mean),
        helper.make_node("Sub", ["x", "mu"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        helper.make_node("ReduceMean", ["d2", *axes_in], ["var"], keepdims=1, **mean),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["normed"]),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["ln" if gelu else "y"]),
    ]
    if gelu:
        nodes += [helper.make_node("Div", ["ln", "sqrt2"], ["xs"]),
                  helper.make_node("Erf", ["xs"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["e1"]),
                  helper.make_node("Mul", ["ln", "e1"], ["xe"]),
                  helper.make_node("Mul", ["xe", "half"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, [2, 4, H])],
                              [helper.make_tensor_value_info("y", dtype, [2, 4, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    onnx.checker.check_model(model)
    return model


def _opset(model: onnx.ModelProto, domain: str = "") -> int:
    return {o.domain: o.version for o in model.opset_import}.get(domain, 0)


def _ort_loads(model: onnx.ModelProto) -> None:
    """ONNX Runtime with its default session options (as a user runs it) loads ``model``."""
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _within(original: onnx.ModelProto, rewritten: onnx.ModelProto, tol: float) -> None:
    rng = np.random.default_rng(1)
    feeds = {"x": (3 * rng.standard_normal((2, 4, H)) + 1).astype(
        helper.tensor_dtype_to_np_dtype(original.graph.input[0].type.tensor_type.elem_type))}
    want, got = run(original, feeds), run(rewritten, feeds)
    for name, e in want.items():
        s, _ = scaled_stats(name, e, got[name], tol)
        assert s.within, s.line()


@pytest.mark.parametrize("opset", [13, 14])
def test_float16_layernorm_plugin_raises_the_opset_to_15(opset: int) -> None:
    original = layernorm_gelu(opset)
    work = onnx.ModelProto()
    work.CopyFrom(original)
    out, result = rewrite(work, "layernorm=plugin")
    assert ops(out) == ["LayerNormPlugin"]
    assert _opset(out) == 15 and _opset(out, "onnxpass") == 1
    assert result.notes == [f"layernorm=plugin: raised the model's opset {opset} -> 15"]
    [fn] = out.functions  # the reference body is written for the raised opset: CastLike
    assert "CastLike" in [n.op_type for n in fn.node]
    assert {o.domain: o.version for o in fn.opset_import}[""] == 15
    _ort_loads(out)
    _within(original, out, RTOL16)


@pytest.mark.parametrize("opset", [13, 14])
def test_float32_layernorm_plugin_keeps_the_opset(opset: int) -> None:
    """A float32 body needs no CastLike: the plugin fits the model's own opset."""
    original = layernorm_gelu(opset, TensorProto.FLOAT)
    work = onnx.ModelProto()
    work.CopyFrom(original)
    out, result = rewrite(work, "layernorm=plugin")
    assert ops(out) == ["LayerNormPlugin"] and _opset(out) == opset and not result.notes
    _ort_loads(out)
    _within(original, out, 1e-5)


def test_one_raise_per_pass_run_and_only_when_needed() -> None:
    """LayerNorm raises 14 -> 15; GELU, run next, finds 15 enough; the passes that match
    nothing raise nothing."""
    original = layernorm_gelu(14, gelu=True)
    work = onnx.ModelProto()
    work.CopyFrom(original)
    out, result = rewrite(work, "attention=plugin,layernorm=plugin,gelu=plugin,rmsnorm=plugin")
    assert sorted(ops(out)) == ["GeluPlugin", "LayerNormPlugin"]
    assert result.notes == ["layernorm=plugin: raised the model's opset 14 -> 15"]
    assert _opset(out) == 15
    _ort_loads(out)
    _within(original, out, RTOL16)


def test_no_match_no_raise() -> None:
    """eps as a [4] vector is no LayerNorm: nothing fuses, and the opset stays 14."""
    model = layernorm_gelu(14)
    [eps] = [t for t in model.graph.initializer if t.name == "eps"]
    eps.CopyFrom(numpy_helper.from_array(np.full(H, 1e-5, dtype=np.float16), "eps"))
    out, result = rewrite(model, "layernorm=plugin")
    assert "LayerNormPlugin" not in ops(out) and _opset(out) == 14 and not result.notes


@pytest.mark.parametrize(("form", "need"), [("plugin", 15), ("std", 17)])
def test_explain_says_the_opset_either_form_raises_to(form: str, need: int) -> None:
    g = Graph(layernorm_gelu(14))
    g.refresh_types()
    [p] = parse_passes(f"layernorm={form}")
    assert isinstance(p, PatternPass)
    assert p.target_opset(g) == need
    [attempt] = [a for a in p.explain(g) if a.matched and a.node.outputs == ["y"]]
    assert attempt.opset == need and f"raises the opset to {need}" in attempt.reason
    ctx = PassContext(g)
    assert p.run(ctx) == 1 and ctx.graph.opset() == need
    assert ctx.notes == [f"layernorm={form}: raised the model's opset 14 -> {need}"]


@pytest.mark.parametrize(("form", "need"), [("plugin", 15), ("std", 17)])
def test_cli_match_reports_the_raise(tmp_path, capsys, form: str, need: int  # type: ignore[no-untyped-def]
                                     ) -> None:
    path = tmp_path / "ln16.onnx"
    onnx.save(layernorm_gelu(14), str(path))
    assert main(["match", str(path), "--passes", f"layernorm={form}"]) == 0
    out = capsys.readouterr().out
    assert f"layernorm={form}/layernorm: 9 ops ending at Add" in out
    assert f"; raises the opset to {need}" in out


def test_a_model_the_pass_may_not_raise_refuses_with_the_reason() -> None:
    """Asked at the model's own opset (no raise allowed), the plugin rewrite is refused with the
    spec's reason, for standard and plugin forms alike."""
    g = Graph(layernorm_gelu(14))
    g.refresh_types()
    for spec, why in [("layernorm=plugin", "LayerNormPlugin on x float16, gamma float16, "
                                           "beta float16 needs opset >= 15, the model has 14"),
                      ("layernorm=std", "layernorm=std needs opset >= 17, the model has 14")]:
        [p] = parse_passes(spec)
        assert isinstance(p, PatternPass)
        attempts = explain(g, p._rules(), max_opset=14)
        assert not any(a.matched for a in attempts)
        assert why in [a.reason for a in attempts], [a.reason for a in attempts]


def test_beit_float16_opset14_plugins(heldout_exports) -> None:  # type: ignore[no-untyped-def]
    """The issue's export: a float16 BEiT by TorchScript at opset 14. ``plugins`` fuses every
    LayerNorm and GELU the torch model computes (and its attentions) at opset 15."""
    counts = heldout_exports.counts("beit")
    assert counts["layernorm"] == 7 and counts["gelu"] == 3  # 3 layers, as the issue's
    path = heldout_exports.export("beit", "ts14-fp16")
    assert not isinstance(path, str), path
    original = onnx.load(str(path))
    assert _opset(original) == 14
    out = heldout_exports.rewritten("beit", "ts14-fp16", "plugins")
    assert not isinstance(out, str), out
    found = ops(out)
    assert found.count("LayerNormPlugin") == counts["layernorm"]
    assert found.count("GeluPlugin") == counts["gelu"]
    assert found.count("AttentionPlugin") == counts["attention"]
    assert "Erf" not in found and "Sqrt" not in found
    assert _opset(out) == 15
    _ort_loads(out)
    for feed in heldout_exports.feeds("beit", "ts14-fp16"):
        want, got = run(original, feed), run(out, feed)
        for name, e in want.items():
            s, _ = scaled_stats(name, e, got[name], RTOL16)
            assert s.within, s.line()
