"""TensorRT engine building (:mod:`.build`) and timing (:mod:`.bench`).

TensorRT is imported lazily, only by :func:`import_tensorrt` (:mod:`onnxpass.tensorrt_available`):
everything else (option parsing, profiles from ``--shapes``, the build record, timing ONNX Runtime)
works where it is not installed.
"""

from __future__ import annotations

# Re-exported: trt_build's callers import them from here; the answer lives in one module.
from onnxpass.tensorrt_available import INSTALL_HINT, TensorRTMissing, import_tensorrt

__all__ = ["INSTALL_HINT", "TensorRTMissing", "import_tensorrt", "trt_major"]


def trt_major(version: str) -> int:
    """"10.13.0.35" -> 10."""
    return int(version.split(".")[0])
