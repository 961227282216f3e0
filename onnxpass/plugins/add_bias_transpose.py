"""AddBiasTransposePlugin: one head-split projection of attention,

    y = Transpose(Reshape(x + bias, (B, S, num_heads, N / num_heads)), perm)

for x of shape (B, S, N) and bias of shape (N,). ``perm`` (0, 2, 1, 3) gives (B, H, S, d) for Q, K
or V; (0, 2, 3, 1) gives K already transposed for Q @ K^T, (B, H, d, S).
"""

from __future__ import annotations

from typing import Any

from onnxpass.plugins.base import PluginAttr, PluginSpec, register_plugin


def _body(opset: int) -> str:
    return "\n".join([
        "   biased = Add (x, bias)",
        "   batch_seq = Constant <value_ints: ints = [0, 0]> ()",  # 0 copies B and S from x
        "   heads_scalar = Constant <value_int: int = @num_heads> ()",
        "   one = Constant <value_ints: ints = [1]> ()",
        "   heads = Reshape (heads_scalar, one)",
        "   head_size = Constant <value_ints: ints = [-1]> ()",
        "   shape = Concat <axis: int = 0> (batch_seq, heads, head_size)",
        "   split = Reshape (biased, shape)",
        "   y = Transpose <perm: ints = @perm> (split)",
    ])


def _shapes(inputs: list[list[Any]], attrs: dict[str, Any]) -> list[list[Any]]:
    b, s, n = inputs[0]
    h = attrs["num_heads"]
    split = [b, s, h, n // h]
    return [[split[p] for p in attrs["perm"]]]


ADD_BIAS_TRANSPOSE = register_plugin(PluginSpec(
    name="AddBiasTransposePlugin",
    inputs=("x", "bias"),
    outputs=("y",),
    attributes=(
        PluginAttr("num_heads", "int", 1, "H: the last dim N of x splits into (H, N / H)"),
        PluginAttr("perm", "ints", (0, 2, 1, 3), "(0, 2, 1, 3) or (0, 2, 3, 1), applied to "
                                                 "(B, S, H, d)"),
    ),
    body=_body,
    doc=__doc__ or "",
    typed_opset=13,  # its constants are int64 shapes: any T needs no CastLike
    shapes=_shapes,
))
