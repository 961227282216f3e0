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


# ---- shapes through run-time reshapes (issue 11, item 5) ----------------------------------------

# Paddle2ONNX's reshape2 with a shape list: paddle.shape(x) is int32, each piece is cast to int64
# and the pieces are concatenated on axis -1. ONNX's data propagation stops at the Casts.
_PADDLE_RESHAPE = """<ir_version: 7, opset_import: ["" : 12]>
    g (float[N, S, 32] x) => (float y) {
    s = Shape (x)
    s32 = Cast <to = 6> (s)
    zero = Constant <value = int64[1] {0}> ()
    one = Constant <value = int64[1] {1}> ()
    two = Constant <value = int64[1] {2}> ()
    b32 = Slice (s32, zero, one, zero, one)
    l32 = Slice (s32, one, two, zero, one)
    heads = Constant <value = int32[1] {4}> ()
    dim = Constant <value = int32[1] {8}> ()
    b = Cast <to = 7> (b32)
    l = Cast <to = 7> (l32)
    h = Cast <to = 7> (heads)
    d = Cast <to = 7> (dim)
    shape = Concat <axis = -1> (b, l, h, d)
    q = Reshape (x, shape)
    t = Transpose <perm = [0, 2, 1, 3]> (q)
    y = Softmax <axis = 3> (t)
}"""


def _unshaped(text: str) -> onnx.ModelProto:
    """The model of ``text`` with its outputs' shapes unknown (the text syntax's ``float y``
    declares a scalar; onnx.checker wants a shape on an output, ONNX Runtime does not)."""
    model = onnx.parser.parse_model(text)
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")
    return model


def _dynamic(text: str) -> Graph:
    g = Graph(_unshaped(text))
    g.remove_dead()
    g.refresh_types()
    return g


def test_shapes_come_through_a_paddle_style_reshape_chain() -> None:
    model = _unshaped(_PADDLE_RESHAPE)
    onnx_only = onnx.shape_inference.infer_shapes(model, data_prop=True)
    assert not any(vi.name == "q" and vi.type.tensor_type.HasField("shape")
                   for vi in onnx_only.graph.value_info)  # what the pass checks used to see
    g = _dynamic(_PADDLE_RESHAPE)
    assert g.shape("q") == ("N", "S", 4, 8) and g.rank("q") == 4
    assert g.shape("t") == ("N", 4, "S", 8) and g.shape("y") == ("N", 4, "S", 8)
    # written back as value_info, the next refresh starts from them
    g.refresh_types()
    assert g.shape("t") == ("N", 4, "S", 8)


def test_symbolic_shapes_write_no_file_and_survive_unknown_ops(tmp_path, monkeypatch  # type: ignore[no-untyped-def]
                                                              ) -> None:
    """ONNX Runtime's tool saves the model into the cwd when it stops early: here it stops at
    an op of a domain it does not know, keeps what it found before, and writes nothing."""
    monkeypatch.chdir(tmp_path)
    text = _PADDLE_RESHAPE.replace('["" : 12]', '["" : 12, "acme" : 1]').replace(
        "y = Softmax <axis = 3> (t)", "u = acme.Mystery (t)\n    y = Relu (u)")
    g = _dynamic(text)
    assert g.shape("t") == ("N", 4, "S", 8)
    assert g.shape("u") is None and g.shape("y") is None
    assert list(tmp_path.iterdir()) == []


def test_symbolic_shapes_never_change_a_known_dim() -> None:
    """The model declares q's last dim 9 (wrong: it is 8): inference fills q's unknown dims
    only where they agree with what is known, so q keeps what it had."""
    model = _unshaped(_PADDLE_RESHAPE)
    model.graph.value_info.append(onnx.helper.make_tensor_value_info(
        "q", onnx.TensorProto.FLOAT, [None, None, 4, 9]))
    g = Graph(model)
    g.refresh_types()
    assert g.shape("q") == (None, None, 4, 9)


def test_symbolic_shapes_drop_dims_it_assumed_equal() -> None:
    """Adding a (N, S, 32) to b (M, S, 32) reshaped at run time: the tool assumes N == M
    (auto_merge), which is wrong when one of them is 1. No dim it merged is kept."""
    text = _PADDLE_RESHAPE.replace("float[N, S, 32] x", "float[N, S, 32] a, float[M, S, 32] x")
    text = text.replace("h = Cast <to = 7> (heads)\n", "").replace(
        "d = Cast <to = 7> (dim)", "d = Constant <value = int64[1] {32}> ()").replace(
        "shape = Concat <axis = -1> (b, l, h, d)", "shape = Concat <axis = -1> (b, l, d)").replace(
        "t = Transpose <perm = [0, 2, 1, 3]> (q)\n    y = Softmax <axis = 3> (t)", "y = Add (a, q)")
    g = _dynamic(text)
    assert g.shape("q") == (None, "S", 32) and g.shape("y") == (None, "S", 32)


def test_symbols_the_tool_makes_up_are_not_input_dims() -> None:
    """tf2onnx names its inputs' dims unk__0, unk__1; ONNX (and the tool, node by node) name
    unknown dims unk__<n> too. A reshape to a shape read from an input has dims nobody knows:
    rank 3, no dim named, none taken for x's."""
    g = _dynamic("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[unk__0, unk__1, 6] x, int32[3] shape) => (float y) {
        s = Cast <to = 7> (shape)
        r = Reshape (x, s)
        y = Relu (r)
    }""")
    assert g.shape("x") == ("unk__0", "unk__1", 6)
    assert g.shape("y") is not None and len(g.shape("y") or ()) == 3
    assert all(d is None or (isinstance(d, str) and d not in ("unk__0", "unk__1"))
               for d in g.shape("y") or ())


def test_standard_attention_is_not_typed_as_the_contrib_op() -> None:
    """ONNX Runtime's tool has a handler for com.microsoft's Attention (input, packed weights,
    bias), which fails on a standard Attention (opset 23): that one gets ONNX's inference, and
    what follows it is typed too."""
    text = _PADDLE_RESHAPE.replace('["" : 12]', '["" : 23]').replace("ir_version: 7",
                                                                     "ir_version: 10")
    g = _dynamic(text.replace("y = Softmax <axis = 3> (t)", "a = Attention (t, t, t)\n"
                                                            "    y = Relu (a)"))
    assert g.shape("t") == ("N", 4, "S", 8)
    assert g.shape("a") == ("N", 4, "S", 8) and g.shape("y") == ("N", 4, "S", 8)


def test_symbolic_inference_runs_only_when_a_rank_is_unknown(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import onnxpass.graph as graph_module

    def fail(*args: object) -> None:
        raise AssertionError("symbolic inference ran")

    monkeypatch.setattr(graph_module, "symbolic_types", fail)
    g = _three_ops()
    g.refresh_types()
    assert g.shape("y") == (2,)
    with pytest.raises(AssertionError, match="symbolic inference ran"):
        _dynamic(_PADDLE_RESHAPE)


def test_symbolic_inference_is_skipped_where_a_body_holds_a_namesake() -> None:
    """The runs the tool starts for If/Loop/Scan bodies cannot be kept from its contrib
    Attention handler: a model with a standard Attention in a branch gets none of its shapes."""
    from onnxpass.graph import symbolic_types

    h = onnx.helper
    model = _unshaped(_PADDLE_RESHAPE)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    types = {vi.name: vi.type for vi in inferred.graph.value_info}  # Concat's axis -1: rank 1
    assert symbolic_types(model, types)["t"] == (onnx.TensorProto.FLOAT, ["N", 4, "S", 8])
    branch = h.make_graph([h.make_node("Attention", ["t", "t", "t"], ["o"])], "branch", [],
                          [h.make_tensor_value_info("o", onnx.TensorProto.FLOAT, None)])
    model.graph.input.append(h.make_tensor_value_info("c", onnx.TensorProto.BOOL, []))
    model.graph.node.append(h.make_node("If", ["c"], ["z"], then_branch=branch,
                                        else_branch=branch))
    assert symbolic_types(model, types) == {}


def test_symbolic_inference_is_not_repeated_for_what_it_could_not_type(monkeypatch  # type: ignore[no-untyped-def]
                                                                        ) -> None:
    """Values after an op nobody can type stay unknown: a refresh that finds nothing new
    unknown does not run the tool again (refresh_types runs after every pass that changed)."""
    import onnxpass.graph as graph_module

    text = _PADDLE_RESHAPE.replace('["" : 12]', '["" : 12, "acme" : 1]').replace(
        "y = Softmax <axis = 3> (t)", "u = acme.Mystery (t)\n    y = Relu (u)")
    g = _dynamic(text)
    assert g.shape("t") == ("N", 4, "S", 8) and g.shape("u") is None
    calls: list[int] = []
    real = graph_module.symbolic_types
    monkeypatch.setattr(graph_module, "symbolic_types",
                        lambda *a: calls.append(1) or real(*a))  # type: ignore[func-returns-value]
    g.refresh_types()
    assert calls == [] and g.shape("t") == ("N", 4, "S", 8)
    g.insert([Node("Neg", ["u"], ["v"])])  # a new value of unknown rank: it runs again
    g.replace([g.producer["y"]], ["y"], [Node("Relu", ["v"], ["y2"])], ["y2"])
    g.refresh_types()
    assert calls == [1]
