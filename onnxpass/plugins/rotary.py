"""RotaryEmbeddingPlugin: rotary position embedding of x (B, H, S, D), as ONNX RotaryEmbedding
computes it for a 4-D input without position_ids, with the caches broadcast over batch and
sequence.

cos and sin are (B or 1, S or 1, rotary_embedding_dim / 2). The first rotary_embedding_dim dims
of each head (all D when it is 0) are rotated in pairs (x1, x2): the two halves of them, or with
``interleaved`` the even and the odd dims. With c = cos[b, s, k] and s_ = sin[b, s, k]:
y1 = c x1 - s_ x2, y2 = s_ x1 + c x2, written back where x1 and x2 came from; the remaining dims
pass through unchanged."""

from __future__ import annotations

from onnxpass.plugins.base import PluginAttr, PluginSpec, register_plugin


def _body(opset: int) -> str:
    # One body for both pairings: index arithmetic on `interleaved` picks the dims (Gather), and
    # puts the rotated pairs back (a Gather from [y1..., y2...]). No float constants: any T.
    return "\n".join([
        "   zero = Constant <value_int: int = 0> ()",
        "   one = Constant <value_int: int = 1> ()",
        "   two = Constant <value_int: int = 2> ()",
        "   minus_one = Constant <value_int: int = -1> ()",
        "   head_axis = Constant <value_ints: ints = [1]> ()",
        "   to_end = Constant <value_ints: ints = [9223372036854775807]> ()",
        "   last_axis = Constant <value_ints: ints = [-1]> ()",
        "   first = Constant <value_ints: ints = [0]> ()",
        "   inter = Constant <value_int: int = @interleaved> ()",
        "   dim_attr = Constant <value_int: int = @rotary_embedding_dim> ()",
        "   shape = Shape (x)",
        "   head_size = Gather <axis: int = 0> (shape, minus_one)",
        "   whole = Equal (dim_attr, zero)",
        "   rd = Where (whole, head_size, dim_attr)",
        "   half = Div (rd, two)",
        "   k = Range (zero, half, one)",
        "   step = Add (one, inter)",
        "   plain = Sub (one, inter)",
        "   idx1 = Mul (k, step)",
        "   half_plain = Mul (half, plain)",
        "   offset2 = Add (half_plain, inter)",
        "   idx2 = Add (idx1, offset2)",
        "   x1 = Gather <axis: int = -1> (x, idx1)",
        "   x2 = Gather <axis: int = -1> (x, idx2)",
        "   c = Unsqueeze (cos, head_axis)",
        "   s = Unsqueeze (sin, head_axis)",
        "   cx1 = Mul (c, x1)",
        "   sx2 = Mul (s, x2)",
        "   sx1 = Mul (s, x1)",
        "   cx2 = Mul (c, x2)",
        "   y1 = Sub (cx1, sx2)",
        "   y2 = Add (sx1, cx2)",
        "   both = Concat <axis: int = -1> (y1, y2)",
        # output dim j takes both[j] (halves) or both[(j % 2) * half + j / 2] (interleaved)
        "   j = Range (zero, rd, one)",
        "   parity = Mod (j, two)",
        "   pair = Div (j, two)",
        "   parity_half = Mul (parity, half)",
        "   from_pairs = Add (parity_half, pair)",
        "   pairs_part = Mul (from_pairs, inter)",
        "   halves_part = Mul (j, plain)",
        "   order = Add (pairs_part, halves_part)",
        "   rotated = Gather <axis: int = -1> (both, order)",
        "   rd_1 = Unsqueeze (rd, first)",
        "   rest = Slice (x, rd_1, to_end, last_axis)",
        "   y = Concat <axis: int = -1> (rotated, rest)",
    ])


ROTARY = register_plugin(PluginSpec(
    name="RotaryEmbeddingPlugin",
    inputs=("x", "cos", "sin"),
    outputs=("y",),
    attributes=(
        PluginAttr("interleaved", "int", 0,
                   "1: rotate (even, odd) dim pairs; 0: the two halves of the rotated dims"),
        PluginAttr("rotary_embedding_dim", "int", 0,
                   "how many leading dims of each head are rotated; 0: all of them"),
    ),
    body=_body,
    doc=__doc__ or "",
    dtypes=("float32", "float16", "bfloat16"),
    typed_opset=13,  # the body has no float constants: it computes in T from opset 13
))
