"""AttentionPlugin: y = MatMul(softmax(scale * q k^T + mask), v), softmax over the last axis.

q is (B, H, S, d), k is (B, Hk, L, d) (not transposed), v is (B, Hv, L, dv), y is (B, H, S, dv).
Hk and Hv divide H: query head h reads key head h // (H / Hk) and value head h // (H / Hv) (Hk =
H: MHA; grouped-query attention, heads grouped as ONNX Attention and HF's repeat_kv group them;
1: MQA); the function body repeats k and v to H heads. ``mask`` is additive, of q's dtype and
broadcastable to (B, H, S, L) (a padding or causal mask, a relative-position bias, or their
sum). A model without one gets a scalar 0 there and ``has_mask`` 0: the mask input is then
ignored, and kernels leave it out of the softmax. The softmax runs in dtype
``softmax_precision`` (an ONNX TensorProto type, default FLOAT). A row whose scores are all
-inf (fully masked) gives zeros, as ONNX Attention does; one masked by a finite value
(finfo.min) has equal scores and gives mean(v), as the model does.
"""

from __future__ import annotations

from typing import Any

from onnx import TensorProto

from onnxpass.plugins.base import PluginAttr, PluginSpec, cast_like, register_plugin


def _repeat(x: str) -> list[str]:
    """x (B, Hx, L, e) with each head repeated H / Hx times in a row -> (B, H, L, e)."""
    return [
        f"   {x}_shape = Shape ({x})",
        f"   {x}_heads = Slice ({x}_shape, i1, i2)",
        f"   {x}_group = Div (heads, {x}_heads)",
        f"   {x}_lead = Slice ({x}_shape, i0, i2)",
        f"   {x}_tail = Slice ({x}_shape, i2, i4)",
        f"   {x}_batch = Slice ({x}_shape, i0, i1)",
        f"   {x}_wide_shape = Concat <axis: int = 0> ({x}_lead, {x}_group, {x}_tail)",
        f"   {x}_1 = Unsqueeze ({x}, i2)",
        f"   {x}_wide = Expand ({x}_1, {x}_wide_shape)",
        f"   {x}_all_shape = Concat <axis: int = 0> ({x}_batch, heads, {x}_tail)",
        f"   {x}_all = Reshape ({x}_wide, {x}_all_shape)",
    ]


def _body(opset: int) -> str:
    return "\n".join([
        *(f"   i{k} = Constant <value_ints: ints = [{k}]> ()" for k in (0, 1, 2, 4)),
        "   q_shape = Shape (q)",
        "   heads = Slice (q_shape, i1, i2)",
        *_repeat("k"),
        *_repeat("v"),
        "   scale_f = Constant <value_float: float = @scale> ()",
        cast_like("scale_f", "q", opset, "scale"),
        "   qs = Mul (q, scale)",
        "   kt = Transpose <perm: ints = [0, 1, 3, 2]> (k_all)",
        "   scores = MatMul (qs, kt)",
        "   has_mask_i = Constant <value_int: int = @has_mask> ()",
        "   has_mask_b = Cast <to: int = 9> (has_mask_i)",
        "   zero_mask_f = Constant <value_float: float = 0.0> ()",
        cast_like("zero_mask_f", "mask", opset, "zero_mask"),
        "   mask_used = Where (has_mask_b, mask, zero_mask)",
        "   masked = Add (scores, mask_used)",
        "   masked_sp = Cast <to: int = @softmax_precision> (masked)",
        "   p_sp = Softmax <axis: int = -1> (masked_sp)",
        cast_like("p_sp", "q", opset, "p"),
        "   nan = IsNaN (p)",          # a fully masked row: softmax of all -inf
        "   zero_f = Constant <value_float: float = 0.0> ()",
        cast_like("zero_f", "q", opset, "zero"),
        "   p_safe = Where (nan, zero, p)",
        "   y = MatMul (p_safe, v_all)",
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
        PluginAttr("has_mask", "int", 1,
                   "0: the model has no mask and the mask input is ignored (the pass writes a "
                   "scalar 0 there); kernels then leave it out of the softmax"),
    ),
    body=_body,
    doc=__doc__ or "",
    casts_attr="softmax_precision",
    shapes=_shapes,
))
