"""Small shared helpers for onnxpass's own tests."""

from __future__ import annotations

import onnx

from onnxpass.graph import Graph

# test_trt_build and test_fp16 import it from here; the answer itself is onnxpass's
from onnxpass.tensorrt_available import tensorrt_missing as tensorrt_missing


def graph(text: str) -> Graph:
    """A Graph from ONNX text syntax, with shapes inferred."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    g = Graph(model)
    g.remove_dead()  # as the pipeline runner does before its first round
    g.refresh_types()
    return g


def toy_model() -> onnx.ModelProto:
    """Relu -> Exp -> Softmax on float[2,8]: the low-precision passes' smallest test graph."""
    return onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,8] x) => (float[2,8] y) {
  a = Relu (x)
  b = Exp (a)
  y = Softmax <axis = -1> (b)
}""")


def computed_types(model: onnx.ModelProto) -> dict[str, int]:
    """op type -> elem type it computes in (from inferred value types), Casts left out."""
    m = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*m.graph.value_info, *m.graph.output]}
    return {n.op_type: types[n.output[0]] for n in m.graph.node if n.op_type != "Cast"}


def ops(model_or_graph: onnx.ModelProto | Graph) -> list[str]:
    if isinstance(model_or_graph, Graph):
        return [n.op_type for n in model_or_graph.toposort()]
    return [n.op_type for n in model_or_graph.graph.node]
