"""Mask2PosPlugin: the normalized cumulative position of each valid element of a mask,

    v   = float(mask), or 1 - float(mask) with ``invert`` = 1 (mask marks padding)
    c   = cumsum(v, axis)
    pos = (c - offset) / (c[last along axis] + eps) * scale

as DETR's sine position embedding and AnchorDETR's mask2pos write it (offset 0.5 or 0, eps 1e-6
or 0, scale 2*pi or 1). The output is float32 with the mask's shape.
"""

from __future__ import annotations

from onnxpass.plugins.base import PluginAttr, PluginSpec, register_plugin
from onnxpass.plugins.masked_softmax import MASK_DTYPES


def _body(opset: int) -> str:
    return "\n".join([
        "   m = Cast <to: int = 1> (mask)",
        "   one = Constant <value_float: float = 1.0> ()",
        "   flipped = Sub (one, m)",
        "   invert_i = Constant <value_int: int = @invert> ()",
        "   invert = Cast <to: int = 9> (invert_i)",
        "   v = Where (invert, flipped, m)",
        "   axis_s = Constant <value_int: int = @axis> ()",
        "   c = CumSum (v, axis_s)",
        "   shape1 = Constant <value_ints: ints = [1]> ()",
        "   axes = Reshape (axis_s, shape1)",
        "   starts = Constant <value_ints: ints = [-1]> ()",
        "   ends = Constant <value_ints: ints = [9223372036854775807]> ()",
        "   last = Slice (c, starts, ends, axes)",
        "   offset = Constant <value_float: float = @offset> ()",
        "   eps = Constant <value_float: float = @eps> ()",
        "   scale = Constant <value_float: float = @scale> ()",
        "   num = Sub (c, offset)",
        "   den = Add (last, eps)",
        "   ratio = Div (num, den)",
        "   pos = Mul (ratio, scale)",
    ])


MASK2POS = register_plugin(PluginSpec(
    name="Mask2PosPlugin",
    inputs=("mask",),
    outputs=("pos",),
    attributes=(
        PluginAttr("axis", "int", 1, "the axis positions count along"),
        PluginAttr("offset", "float", 0.0, "subtracted from the running count"),
        PluginAttr("eps", "float", 0.0, "added to the total count"),
        PluginAttr("scale", "float", 1.0, "multiplies the normalized position"),
        PluginAttr("invert", "int", 0, "1: count the zeros (False) of the mask, not its ones"),
    ),
    body=_body,
    doc=__doc__ or "",
    dtypes=("float32",),
    io_dtypes={"mask": MASK_DTYPES},
    min_opset=12,  # Constant value_float / value_int
))
