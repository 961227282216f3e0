"""Inline weights left in the file (``load_model(in_place=True)``, onnxpass/wire.py): the run
reads only the weights a pass reads, and writes the same bytes ``onnx.save`` would."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpass import wire
from onnxpass.errors import ModelLoadError
from onnxpass.modelio import load_model, save_model
from onnxpass.passes.manager import Pipeline, load_graph


def _model(n: int = 64, float_data: bool = False) -> onnx.ModelProto:
    """x @ W + b -> LayerNorm spelled out; W big (inline raw_data), b small, one weight as
    float_data (never left in place), a Constant node."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")
    w2 = helper.make_tensor("W2", TensorProto.FLOAT, [n, n],
                            rng.standard_normal(n * n).astype(np.float32).tolist()) \
        if float_data else numpy_helper.from_array(
            rng.standard_normal((n, n)).astype(np.float32), "W2")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(
            np.array([-1], np.int64))),
        helper.make_node("ReduceMean", ["hb"], ["mu"], axes=[-1]),
        helper.make_node("Sub", ["hb", "mu"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["n"]),
        helper.make_node("MatMul", ["n", "W2"], ["y"]),
    ]
    eps = numpy_helper.from_array(np.array(1e-5, np.float32), "eps")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])], [w, b, w2, eps])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                             producer_name="test")


def test_load_in_place_then_save_writes_the_bytes_onnx_save_writes(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_model(float_data=True), str(src))
    model = load_model(src, in_place=True)
    w = next(t for t in model.graph.initializer if t.name == "W")
    assert w.data_location == TensorProto.EXTERNAL and not w.HasField("raw_data")
    assert {e.key: e.value for e in w.external_data}["location"] == "m.onnx"
    w2 = next(t for t in model.graph.initializer if t.name == "W2")
    assert w2.data_location != TensorProto.EXTERNAL  # float_data: parsed as usual
    out = tmp_path / "out.onnx"
    save_model(model, out, str(tmp_path))
    assert out.read_bytes() == onnx.load(str(src)).SerializeToString()
    assert not list(tmp_path.glob("*.data"))  # written inline, as it came


def test_a_weight_left_in_place_reads_as_its_values(tmp_path):
    src = tmp_path / "m.onnx"
    model = _model()
    onnx.save(model, str(src))
    graph = load_graph(src)
    want = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W"))
    np.testing.assert_array_equal(graph.const_value("W"), want)


def test_pipeline_on_a_model_read_in_place(tmp_path):
    """The rewritten model: fused, loads in ONNX Runtime, same outputs, weights inline."""
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(_model(), str(src))
    before = src.read_bytes()
    Pipeline("default").rewrite_file(src, out)
    assert src.read_bytes() == before
    m = onnx.load(str(out), load_external_data=False)
    assert [n.op_type for n in m.graph.node].count("LayerNormalization") == 1
    assert all(t.data_location != TensorProto.EXTERNAL for t in m.graph.initializer)
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    want = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cut", [0.3, 0.999])
def test_a_truncated_model_is_one_error(tmp_path, cut):
    src = tmp_path / "m.onnx"
    data = _model().SerializeToString()
    src.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(ModelLoadError, match="m.onnx: not an ONNX model"):
        load_model(src, in_place=True)


def test_scan_keeps_small_tensors_and_unusual_layouts_parsed(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_model(), str(src))
    data, spans = wire.scan_model(src, min_bytes=1 << 30)  # nothing that big: nothing left
    assert spans == [] and data == src.read_bytes()
    _, spans = wire.scan_model(src, min_bytes=4096)
    assert [s.length for s in spans] == [64 * 64 * 4, 64 * 64 * 4]
    src.write_bytes(bytes([0x0B]) + src.read_bytes())  # a group tag (wire type 3)
    with pytest.raises(wire.WireError):
        wire.scan_model(src, 4096)


def test_halves_cut_where_the_field_goes():
    t = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "t")
    t.doc_string = "after raw_data"
    head, tail = wire.halves(t, wire.TENSOR_RAW_DATA)
    raw = t.raw_data
    key = bytes([wire.TENSOR_RAW_DATA << 3 | 2]) + wire.encode_varint(len(raw))
    assert head + key + raw + tail == t.SerializeToString()
