"""The one answer to "can TensorRT be imported here?".

Everything that needs TensorRT asks :func:`import_tensorrt` (which raises the one-line error
with how to install it) or :func:`tensorrt_missing` (why not, in a few words, or None).
TensorRT is imported only when asked: onnxpass works without it. This module sits at the bottom
of the layers, beside :mod:`onnxpass.errors`, so plugins, trt_build, compare and the tests can
all use it.
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
    """The ``tensorrt`` module; :class:`TensorRTMissing` (with how to install it) where it cannot
    be imported."""
    missing = tensorrt_missing()
    if missing is not None:
        raise TensorRTMissing(INSTALL_HINT)
    import tensorrt

    return tensorrt


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot be used here, in a few words (for listings and test skips), or None."""
    try:
        import tensorrt
    except ImportError:
        return "tensorrt not installed"
    if not hasattr(tensorrt, "__version__"):  # a bare namespace: tensorrt-stubs' .pyi files only
        return "only tensorrt's type stubs are installed"
    return None
