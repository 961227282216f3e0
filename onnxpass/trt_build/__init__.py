"""TensorRT engine building (:mod:`.build`) and timing (:mod:`.bench`).

TensorRT is imported lazily, only by :func:`import_tensorrt`: everything else (option parsing,
profiles from ``--shapes``, the build record, timing ONNX Runtime) works where it is not installed.
"""

from __future__ import annotations

from types import ModuleType

from onnxpass.errors import OnnxpassError

INSTALL_HINT = ("TensorRT is not installed (`import tensorrt` failed): install it with "
                "`pip install tensorrt` (NVIDIA GPU, driver and CUDA needed) or from "
                "https://developer.nvidia.com/tensorrt")


class TensorRTMissing(OnnxpassError):
    """TensorRT is needed for this command and cannot be imported."""


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError:
        raise TensorRTMissing(INSTALL_HINT) from None
    if not hasattr(tensorrt, "__version__"):  # a bare namespace: tensorrt-stubs' .pyi files only
        raise TensorRTMissing(INSTALL_HINT)
    return tensorrt


def trt_major(version: str) -> int:
    """"10.13.0.35" -> 10."""
    return int(version.split(".")[0])
