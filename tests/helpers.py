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


def ops(model_or_graph: onnx.ModelProto | Graph) -> list[str]:
    if isinstance(model_or_graph, Graph):
        return [n.op_type for n in model_or_graph.toposort()]
    return [n.op_type for n in model_or_graph.graph.node]
