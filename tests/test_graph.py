"""The graph layer: constants, the one replace operation and its refusals, load/save."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxpass.errors import ModelLoadError, PassError
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


def _with_dead_node() -> Graph:
    # Not tests.helpers.graph, which drops dead code as the pipeline runner does.
    return Graph(onnx.parser.parse_model(f"""{HDR} g (float[2] x) => (float[2] y)
        <float[2] w = {{1.0, 2.0}}> {{
        d = Mul (x, w)
        y = Relu (x)
    }}"""))


def test_to_model_and_refresh_types_never_remove_nodes() -> None:
    """Reading and refreshing types change nothing; dead code goes only by remove_dead."""
    g = _with_dead_node()
    g.refresh_types()
    assert [n.op_type for n in g.to_model().graph.node] == ["Mul", "Relu"]
    assert [n.op_type for n in g.nodes] == ["Mul", "Relu"] and "w" in g.initializers
    assert g.dtype("d") == onnx.TensorProto.FLOAT
    assert g.remove_dead() == 1
    model = g.to_model()
    assert [n.op_type for n in model.graph.node] == ["Relu"] and not model.graph.initializer


def test_nodes_holds_only_the_nodes_of_the_graph() -> None:
    g = _three_ops()
    old = g.producer["y"]
    g.replace([old], ["y"], [Node("Sigmoid", ["b"], ["s"])], ["s"])
    assert old.graph is None and old not in g.nodes
    assert [n.op_type for n in g.nodes] == ["Relu", "Exp", "Sigmoid"] == \
        [n.op_type for n in g.live_nodes()]


def test_maps_are_read_only() -> None:
    g = _three_ops()
    with pytest.raises(TypeError):
        g.types["a"] = onnx.TypeProto()  # type: ignore[index]
    with pytest.raises(TypeError):
        g.producer["a"] = g.producer["b"]  # type: ignore[index]


def test_insert_remove_and_set_type() -> None:
    g = _three_ops()
    cast = Node("Cast", ["a"], ["a16"], {"to": onnx.helper.make_attribute("to", 10)})
    g.insert([cast])
    g.set_type("a16", onnx.TensorProto.FLOAT16, g.shape("a"))
    assert g.producer["a16"] is cast and g.users("a") == [g.producer["b"], cast]
    assert g.dtype("a16") == onnx.TensorProto.FLOAT16 and g.shape("a16") == (2,)
    with pytest.raises(PassError, match="already has a producer"):
        g.insert([Node("Neg", ["x"], ["a"])])
    with pytest.raises(PassError, match="still read by"):
        g.remove([g.producer["a"]])
    with pytest.raises(PassError, match="graph output"):
        g.remove([g.producer["y"]])
    g.remove([cast])
    assert "a16" not in g.producer and cast.graph is None and g.users("a") == [g.producer["b"]]
    # a graph input or output changes in the model's signature too
    g.set_type("x", onnx.TensorProto.FLOAT16)
    assert g.model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert g.shape("x") == (2,)


def test_plugin_output_types_come_through_a_hook() -> None:
    """graph.py imports no plugin: a domain registers how to type its nodes' outputs."""
    import ast
    from pathlib import Path

    import onnxpass.graph as graph_module
    from onnxpass.graph import register_output_typer

    tree = ast.parse(Path(graph_module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    upward = ("onnxpass.passes", "onnxpass.plugins")
    assert not {m for m in imported if m and m.startswith(upward)}
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17, "test.typed": 1]>
        g (float[2,3] x) => (float[2,3] y) {
        t = test.typed.Mystery (x)
        y = Relu (t)
    }""")
    g = Graph(model)
    g.refresh_types()
    assert g.shape("t") is None
    register_output_typer("test.typed", lambda gr, n: [
        onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [2, 3])])
    g.refresh_types()
    assert g.shape("t") == (2, 3)
