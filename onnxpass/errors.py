"""The one error hierarchy onnxpass shows to users.

Every error a user can cause derives from :class:`OnnxpassError`; the CLI prints its message on one
line and exits with code 2. Anything else is a bug in onnxpass and keeps its traceback.
"""

from __future__ import annotations


class OnnxpassError(Exception):
    """A problem with the user's input, reported as one line."""


class ModelLoadError(OnnxpassError):
    """The model file is missing, unreadable, not ONNX, or invalid."""


class UnknownPassError(OnnxpassError):
    """A pass name (or form) that is not registered."""


class PassError(OnnxpassError):
    """A pass could not do its work on this model (e.g. opset conversion failed)."""


class VerificationError(OnnxpassError):
    """The rewritten model does not compute what the original did."""
