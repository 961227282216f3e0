"""Registers the passes and pipelines that ship with onnxpass."""

from onnxpass.passes import (  # noqa: F401
    add_bias_transpose,
    attention,
    canonical,
    cleanup,
    const_slice,
    fold,
    fp16,
    gelu,
    l2norm,
    layernorm,
    mask2pos,
    masked_softmax,
    matmul2d,
    quantize,
    rmsnorm,
    rotary,
    shape_of,
    tile,
)
from onnxpass.passes.base import register_pipeline

register_pipeline("cleanup", ["noop", "cse", "dce"])

# What `onnxpass run MODEL` does: every pass that has a standard-ONNX form, in that form, so the
# result builds on stock TensorRT. Clean-ups, constant folding and the canonical forms first (they
# expose patterns); rotary before attention (attention takes Q and K after their rotary node);
# attention before masked_softmax (attention claims a masked softmax inside an attention block)
# and before add_bias_transpose/matmul2d (it needs the Q/K/V MatMul+Add form intact).
register_pipeline("default", [
    "fold", "noop", "cse", "canonical", "tile", "const_slice", "shape_of", "layernorm", "rmsnorm",
    "gelu", "rotary", "attention", "masked_softmax=std", "add_bias_transpose", "matmul2d", "dce",
])

# Everything, plugin forms where a pass has one: for engines built with onnxpass's plugins.
register_pipeline("plugins", [
    "fold", "noop", "cse", "canonical", "tile", "const_slice", "shape_of", "layernorm=plugin",
    "rmsnorm=plugin", "gelu=plugin", "l2norm", "mask2pos", "rotary=plugin", "attention=plugin",
    "masked_softmax=plugin", "add_bias_transpose=plugin", "matmul2d", "dce",
])
