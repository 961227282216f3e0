"""AttentionPlugin: y = MatMul(softmax(scale * q k^T + mask), v), softmax over the last axis.

q is (B, H, S, d), k is (B, Hkv, L, d) (not transposed), v is (B, Hkv, L, dv) with Hkv = H or 1;
y is (B, H, S, dv). ``mask`` is additive, of q's dtype and broadcastable to (B, H, S, L) (a
padding or causal mask, a relative-position bias, or their sum; a scalar 0 when the model has
none). The softmax runs in dtype ``softmax_precision`` (an ONNX TensorProto type, default
FLOAT). A row whose scores are all -inf (fully masked) gives zeros, as ONNX Attention does; one
masked by a finite value (finfo.min) has equal scores and gives mean(v), as the model does.
"""

from __future__ import annotations

from typing import Any

from onnx import TensorProto

from onnxpass.plugins.base import PluginAttr, PluginSpec, cast_like, register_plugin


def _body(opset: int) -> str:
    return "\n".join([
        "   scale_f = Constant <value_float: float = @scale> ()",
        cast_like("scale_f", "q", opset, "scale"),
        "   qs = Mul (q, scale)",
        "   kt = Transpose <perm: ints = [0, 1, 3, 2]> (k)",
        "   scores = MatMul (qs, kt)",
        "   masked = Add (scores, mask)",
        "   masked_sp = Cast <to: int = @softmax_precision> (masked)",
        "   p_sp = Softmax <axis: int = -1> (masked_sp)",
        cast_like("p_sp", "q", opset, "p"),
        "   nan = IsNaN (p)",          # a fully masked row: softmax of all -inf
        "   zero_f = Constant <value_float: float = 0.0> ()",
        cast_like("zero_f", "q", opset, "zero"),
        "   p_safe = Where (nan, zero, p)",
        "   y = MatMul (p_safe, v)",
    ])


def _shapes(inputs: list[list[Any]], attrs: dict[str, Any]) -> list[list[Any]]:
    q, _, v, _ = inputs
    return [[*q[:-1], v[-1]]]  # (B, H, S, dv)


ATTENTION = register_plugin(PluginSpec(
    name="AttentionPlugin",
    inputs=("q", "k", "v", "mask"),
    outputs=("y",),
    attributes=(
        PluginAttr("scale", "float", 1.0, "multiplies q k^T (the exporter's scale, not implied)"),
        PluginAttr("softmax_precision", "int", TensorProto.FLOAT,
                   "ONNX element type the softmax is computed in"),
    ),
    body=_body,
    doc=__doc__ or "",
    casts_attr="softmax_precision",
    shapes=_shapes,
))
