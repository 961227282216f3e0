"""The load check of record (onnxpass/loadcheck.py) and names unique by construction.

The check must say no exactly where ONNX Runtime says no: every bad model here is also refused
by an ONNX Runtime session, every good one loads. Then every pipeline's output on every
real-model test graph loads in ONNX Runtime, computes what the original did, and is a fixpoint.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxpass
from onnxpass.errors import OnnxpassError
from onnxpass.graph import Graph, Node
from onnxpass.loadcheck import InvalidModelError, check_loadable, load_problems
from onnxpass.verify import error_stats, random_inputs, run, scaled_stats, session
from tests.models import MODELS


def _model(nodes: list[onnx.NodeProto], *, outputs: tuple[str, ...] = ("y",),
           functions: list[onnx.FunctionProto] | None = None,
           domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, 3]) for o in outputs]
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], outs), opset_imports=opsets,
                          functions=functions or [])
    m.ir_version = 10
    return m


def _fn(names: tuple[str, str] = ("a", "b")) -> onnx.FunctionProto:
    return helper.make_function("custom", "Twice", ["i"], ["o"], [
        helper.make_node("Relu", ["i"], ["t"], name=names[0]),
        helper.make_node("Relu", ["t"], ["o"], name=names[1])], [helper.make_opsetid("", 17)])


BAD = {
    "two nodes, one name": _model([helper.make_node("Relu", ["x"], ["t"], name="n"),
                                   helper.make_node("Relu", ["t"], ["y"], name="n")]),
    "two nodes, one name, in a function": _model(
        [helper.make_node("Twice", ["x"], ["y"], domain="custom", name="f")],
        functions=[_fn(("r", "r"))], domains=("custom",)),
    "value defined twice": _model([helper.make_node("Relu", ["x"], ["y"], name="a"),
                                   helper.make_node("Neg", ["x"], ["y"], name="b")]),
    "domain not imported": _model(
        [helper.make_node("Twice", ["x"], ["y"], domain="custom", name="f")], functions=[_fn()]),
    "too many inputs for the function": _model(
        [helper.make_node("Twice", ["x", "x"], ["y"], domain="custom", name="f")],
        functions=[_fn()], domains=("custom",)),
    "output never computed": _model([helper.make_node("Relu", ["x"], ["t"], name="a")]),
}

GOOD = {
    "unnamed nodes": _model([helper.make_node("Relu", ["x"], ["t"]),
                             helper.make_node("Relu", ["t"], ["y"])]),
    "node named like a value": _model([helper.make_node("Relu", ["x"], ["t"], name="y"),
                                       helper.make_node("Relu", ["t"], ["y"], name="t")]),
    "function called twice": _model(
        [helper.make_node("Twice", ["x"], ["t"], domain="custom", name="f1"),
         helper.make_node("Twice", ["t"], ["y"], domain="custom", name="f2",
                          plugin_namespace="custom")],  # undeclared attributes are ignored
        functions=[_fn()], domains=("custom",)),
}


@pytest.mark.parametrize("case", list(BAD))
def test_check_refuses_what_onnxruntime_refuses(case: str) -> None:
    model = BAD[case]
    assert load_problems(model), case
    with pytest.raises(OnnxpassError, match="ONNX Runtime cannot load it"):
        session(model)
    with pytest.raises(InvalidModelError, match="^out.onnx: ONNX Runtime would refuse it: "):
        check_loadable(model, "out.onnx")


def test_check_refuses_an_unsorted_graph() -> None:
    """ONNX Runtime sorts a graph itself, but the ONNX spec and TensorRT's parser (which
    imports nodes in file order) need topological order."""
    model = _model([helper.make_node("Relu", ["t"], ["y"], name="a"),
                    helper.make_node("Neg", ["x"], ["t"], name="b")])
    assert any("before it is defined" in p for p in load_problems(model))
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model)


@pytest.mark.parametrize("case", list(GOOD))
def test_check_accepts_what_onnxruntime_loads(case: str) -> None:
    model = GOOD[case]
    assert load_problems(model) == []
    session(model)


def test_fresh_names_avoid_every_name_and_derive_from_the_replaced_node() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["t"], name="/enc/ln/Relu"),
                    helper.make_node("Neg", ["t"], ["y"], name="/enc/ln/LayerNormalization")])
    g = Graph(model)
    near = g.producer["t"]
    assert g.fresh_node_name(near, "LayerNormalization") == "/enc/ln/LayerNormalization_1"
    assert g.fresh_node_name(near, "LayerNormalization") == "/enc/ln/LayerNormalization_2"
    assert g.fresh_name("t") == "t_1"
    # A Graph rebuilt from the written model (fold and opset conversion do that) still avoids
    # every name the model holds.
    neg = g.producer["y"]
    g.replace([neg], ["y"], [Node("Neg", ["t"], ["y2"], name=g.fresh_name("t"))], ["y2"])
    g2 = Graph(g.to_model())
    assert g2.fresh_name("t") == "t_1" and g2.fresh_name("t") == "t_3"


def test_unnamed_nodes_stay_unnamed() -> None:
    model = GOOD["unnamed nodes"]
    assert [n.name for n in Graph(model).to_model().graph.node] == ["", ""]


def test_input_with_duplicate_node_names_comes_out_loadable() -> None:
    out, _ = onnxpass.rewrite(_copy(BAD["two nodes, one name"]), "gelu")  # rewrites in place
    assert load_problems(out) == []
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(run(out, {"x": x})["y"], np.maximum(x, 0))


PIPELINES = ("default", "default,fp16", "plugins")
REAL = [(m, e, p) for m in MODELS for e in ("torchscript", "dynamo") for p in PIPELINES]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    work = onnx.ModelProto()
    work.CopyFrom(model)
    return work


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(f"{n.domain}.{n.op_type}" for n in model.graph.node)


@pytest.mark.parametrize("name,exporter,pipeline", REAL, ids=["-".join(c) for c in REAL])
def test_pipeline_output_loads_computes_the_same_and_is_a_fixpoint(
        real_models, name: str, exporter: str, pipeline: str) -> None:  # type: ignore[no-untyped-def]
    path = real_models.export(name, exporter)
    if isinstance(path, str):
        pytest.skip(path)
    original = onnx.load(str(path))
    out, _ = onnxpass.rewrite(_copy(original), pipeline)
    assert load_problems(out) == []
    feeds = random_inputs(original)
    want, got = run(original, feeds), run(out, feeds)  # run() loads it in an ORT session
    for k, e in want.items():
        if "fp16" in pipeline:
            s, _ = scaled_stats(k, e, got[k], 1e-2)
        else:
            s = error_stats(k, e, got[k], rtol=1e-5, atol=1e-5 * max(1.0, float(
                np.abs(e[np.isfinite(e)]).max(initial=0))))
        assert s.within, s.line()
    again, result = onnxpass.rewrite(_copy(out), pipeline)
    assert _ops(again) == _ops(out), "a second run changed the graph"
    assert [s.name for s in result.stats if s.matches] == [], "a second run rewrote again"


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_readme_example_pipelines_write_loadable_models(tmp_path, pipeline: str) -> None:  # type: ignore[no-untyped-def]
    """The README's model through the CLI, `default,fp16` included (once refused by ONNX
    Runtime: two Casts named cast__1)."""
    from pathlib import Path

    from onnxpass.cli import main

    example = Path(__file__).resolve().parents[1] / "examples" / "vit_tiny.onnx"
    out = tmp_path / "out.onnx"
    assert main(["run", "-q", "--passes", pipeline, str(example), "-o", str(out), "--verify",
                 "--rtol", "1e-2" if "fp16" in pipeline else "1e-4"]) == 0
    model = onnx.load(str(out))
    assert load_problems(model) == []
    session(model)
    names = [n.name for n in model.graph.node if n.name]
    assert len(names) == len(set(names))


def test_save_refuses_a_model_onnxruntime_would_refuse(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from onnxpass.graph import save_model

    out = tmp_path / "out.onnx"
    with pytest.raises(InvalidModelError, match="two nodes are named 'n'"):
        save_model(BAD["two nodes, one name"], out)
    assert list(tmp_path.iterdir()) == []
