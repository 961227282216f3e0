"""Small shared helpers for onnxpass's own tests."""

from __future__ import annotations

import onnx

from onnxpass.graph import Graph


def graph(text: str) -> Graph:
    """A Graph from ONNX text syntax, with shapes inferred."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    g = Graph(model)
    g.refresh_types()
    return g


def ops(model_or_graph: onnx.ModelProto | Graph) -> list[str]:
    if isinstance(model_or_graph, Graph):
        return [n.op_type for n in model_or_graph.toposort()]
    return [n.op_type for n in model_or_graph.graph.node]


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot be used here (the one-line error onnxpass gives), or None."""
    from onnxpass.trt_build import TensorRTMissing, import_tensorrt

    try:
        import_tensorrt()
    except TensorRTMissing as e:
        return str(e)
    return None
