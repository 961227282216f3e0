"""onnxpass: a pass manager and pattern language for ONNX graph surgery aimed at TensorRT."""

from onnxpass.api import rewrite
from onnxpass.errors import OnnxpassError
from onnxpass.graph import Graph, load_model, save_model

__version__ = "0.1.0"
__all__ = ["Graph", "OnnxpassError", "load_model", "rewrite", "save_model"]
