"""The graph layer: constants, the one replace operation and its refusals, load/save."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxpass.errors import ModelLoadError
from onnxpass.graph import Graph, Node, RewriteRefused, load_model, save_model
from tests.helpers import graph

HDR = '<ir_version: 8, opset_import: ["" : 17]>'


def test_constant_nodes_and_initializers_are_constants() -> None:
    g = graph(f"""{HDR} g (float[2] x) => (float[2] y) <float[2] w = {{1.0, 2.0}}> {{
        c = Constant <value_floats = [3.0, 4.0]> ()
        a = Mul (x, w)
        y = Add (a, c)
    }}""")
    assert g.is_const("w") and g.is_const("c") and not g.is_const("x") and not g.is_const("a")
    np.testing.assert_array_equal(g.const_value("c"), [3.0, 4.0])
    np.testing.assert_array_equal(g.const_value("w"), [1.0, 2.0])


def test_initializer_that_is_also_an_input_is_not_constant() -> None:
    model = onnx.parser.parse_model(f"""{HDR} g (float[2] x, float[2] w) => (float[2] y)
        <float[2] w = {{1.0, 2.0}}> {{ y = Mul (x, w) }}""")
    assert not Graph(model).is_const("w")


def _three_ops() -> Graph:
    return graph(f"""{HDR} g (float[2] x) => (float[2] y, float[2] b) {{
        a = Relu (x)
        b = Exp (a)
        y = Neg (b)
    }}""")


def test_replace_refuses_when_an_internal_value_is_used_outside() -> None:
    g = _three_ops()
    nodes = [g.producer["a"], g.producer["b"], g.producer["y"]]
    with pytest.raises(RewriteRefused, match="graph output"):
        g.replace(nodes, ["y"], [Node("Sigmoid", ["x"], ["s"])], ["s"])


def test_replace_refuses_a_consumer_outside_the_match() -> None:
    g = graph(f"""{HDR} g (float[2] x) => (float[2] y, float[2] z) {{
        a = Relu (x)
        y = Exp (a)
        z = Neg (a)
    }}""")
    with pytest.raises(RewriteRefused, match="also used by Neg"):
        g.replace([g.producer["a"], g.producer["y"]], ["y"], [Node("Sigmoid", ["x"], ["s"])], ["s"])


def test_replace_refuses_a_cycle() -> None:
    # a -> (outside) n -> b: fusing a and b into one node would feed its own input.
    g = graph(f"""{HDR} g (float[2] x) => (float[2] y) {{
        a = Relu (x)
        n = Neg (a)
        b = Exp (n)
        y = Add (a, b)
    }}""")
    with pytest.raises(RewriteRefused, match="cycle"):
        g.replace([g.producer["a"], g.producer["b"]], ["a", "b"],
                  [Node("Split", ["n"], ["p", "q"])], ["p", "q"])


def test_replace_keeps_output_names_and_consumers() -> None:
    g = _three_ops()
    g.replace([g.producer["y"]], ["y"], [Node("Sigmoid", ["b"], ["s"])], ["s"])
    model = g.to_model()
    assert [n.op_type for n in model.graph.node] == ["Relu", "Exp", "Sigmoid"]
    assert model.graph.node[-1].output[0] == "y"
    onnx.checker.check_model(model)


def test_save_is_atomic_and_load_reports_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = onnx.parser.parse_model(f"""{HDR} g (float[2] x) => (float[2] y) {{ y = Relu (x) }}""")
    out = tmp_path / "m.onnx"
    save_model(model, out)
    assert load_model(out).graph.node[0].op_type == "Relu"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left behind
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(out.read_bytes()[:-7])
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        load_model(bad)


def test_external_data_stays_external(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = np.arange(4096, dtype=np.float32)
    model = onnx.parser.parse_model(f"""{HDR} g (float[4096] x) => (float[4096] y) {{
        y = Add (x, w) }}""")
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    src = tmp_path / "src" / "m.onnx"
    src.parent.mkdir()
    onnx.save(model, str(src), save_as_external_data=True, location="m.data", size_threshold=0)
    loaded = load_model(src)
    t = loaded.graph.initializer[0]
    assert t.data_location == onnx.TensorProto.EXTERNAL  # not read into memory
    g = Graph(loaded, str(src.parent))
    np.testing.assert_array_equal(g.const_value("w"), w)  # read on demand
    out = tmp_path / "out" / "r.onnx"
    save_model(g.to_model(), out, g.base_dir)
    assert (out.parent / "r.onnx.data").exists()
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(
        onnx.load(str(out)).graph.initializer[0]), w)
    (src.parent / "m.data").unlink()
    with pytest.raises(ModelLoadError, match="external data file 'm.data'"):
        load_model(src)
