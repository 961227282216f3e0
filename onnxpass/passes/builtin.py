"""Registers the passes and pipelines that ship with onnxpass."""

from onnxpass.passes import cleanup, gelu, layernorm  # noqa: F401
from onnxpass.passes import attention  # noqa: F401
from onnxpass.passes import l2norm  # noqa: F401
from onnxpass.passes import mask2pos, masked_softmax  # noqa: F401
from onnxpass.passes import add_bias_transpose, const_slice, matmul2d, tile  # noqa: F401
from onnxpass.passes.base import register_pipeline

register_pipeline("cleanup", ["noop", "cse", "dce"])
register_pipeline("default", ["fold", "noop", "cse", "layernorm", "gelu", "dce"])
