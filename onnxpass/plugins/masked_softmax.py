"""MaskedSoftmaxPlugin: y = softmax(z) over the last axis, where z masks the scores x with a compact
mask (bool or integer; ONNX broadcasting, so y has the broadcast shape of x and mask: x's shape
when the mask broadcasts to the scores, as attention masks do). With keep = mask != 0
(``invert`` = 0) or keep = mask == 0 (``invert`` = 1):

- mode 0: z = x + (1 - float(mask)) * fill, or x + float(mask) * fill with ``invert`` = 1
  (the additive (1 - mask) * -10000 / finfo.min mask; the mask's values are used as numbers);
- mode 1: z = where(keep, x, fill)       (Where(mask, scores, -inf), masked_fill);
- mode 2: z = x + where(keep, 0, fill)   (an additive mask built with Where).

The modes differ where a row is fully masked: mode 0 and mode 2 with a finite fill give
softmax(x) there, mode 1 a uniform row (finite fill) or NaN (fill = -inf). A kernel must compute
the formula of its mode, not a cheaper equivalent.
"""

from __future__ import annotations

from typing import Any

from onnxpass.plugins.base import PluginAttr, PluginSpec, register_plugin

MASK_DTYPES = ("bool", "int8", "int32", "int64")


def _cast_like(value: str, out: str, opset: int) -> str:
    # Before opset 15 there is no CastLike; the pass then only fuses float32 scores.
    if opset >= 15:
        return f"   {out} = CastLike ({value}, x)"
    return f"   {out} = Cast <to: int = 1> ({value})"


def _body(opset: int) -> str:
    return "\n".join([
        _cast_like("mask", "m", opset),
        "   one_f = Constant <value_float: float = 1.0> ()",
        _cast_like("one_f", "one", opset),
        "   zero_f = Constant <value_float: float = 0.0> ()",
        _cast_like("zero_f", "zero", opset),
        "   fill_f = Constant <value_float: float = @fill> ()",
        _cast_like("fill_f", "fill", opset),
        "   invert_i = Constant <value_int: int = @invert> ()",
        "   invert = Cast <to: int = 9> (invert_i)",
        "   nonzero = Cast <to: int = 9> (mask)",
        "   keep = Xor (nonzero, invert)",
        # mode 0
        "   one_minus = Sub (one, m)",
        "   weight = Where (invert, m, one_minus)",
        "   penalty = Mul (weight, fill)",
        "   z0 = Add (x, penalty)",
        # mode 1
        "   z1 = Where (keep, x, fill)",
        # mode 2
        "   bias = Where (keep, zero, fill)",
        "   z2 = Add (x, bias)",
        "   mode = Constant <value_int: int = @mode> ()",
        "   k1 = Constant <value_int: int = 1> ()",
        "   k2 = Constant <value_int: int = 2> ()",
        "   is1 = Equal (mode, k1)",
        "   is2 = Equal (mode, k2)",
        "   z02 = Where (is2, z2, z0)",
        "   z = Where (is1, z1, z02)",
        "   y = Softmax <axis: int = -1> (z)",
    ])


def _shapes(inputs: list[list[Any]], attrs: dict[str, Any]) -> list[list[Any]]:
    """Broadcast shape of x and mask: x's dims, except where x has a static 1."""
    x, mask = inputs
    rank = max(len(x), len(mask))
    x, mask = [1] * (rank - len(x)) + list(x), [1] * (rank - len(mask)) + list(mask)
    return [[m if isinstance(d, int) and d == 1 else d for d, m in zip(x, mask)]]


MASKED_SOFTMAX = register_plugin(PluginSpec(
    name="MaskedSoftmaxPlugin",
    inputs=("x", "mask"),
    outputs=("y",),
    attributes=(
        PluginAttr("mode", "int", 1, "0: x + (1 - mask) * fill, 1: where(keep, x, fill), "
                                     "2: x + where(keep, 0, fill)"),
        PluginAttr("fill", "float", float("-inf"), "the value masked positions get or add"),
        PluginAttr("invert", "int", 0, "0: mask != 0 keeps a position, 1: mask != 0 masks it"),
    ),
    body=_body,
    doc=__doc__ or "",
    min_opset=12,  # Constant value_float / value_int
    io_dtypes={"mask": MASK_DTYPES},
    shapes=_shapes,
))
