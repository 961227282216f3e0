"""GeluPlugin: y = x * 0.5 * (1 + erf(x / sqrt 2)), or with approximate=1 the tanh form
y = x * 0.5 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))."""

from __future__ import annotations

import math

from onnxpass.plugins.base import PluginAttr, PluginSpec, cast_like, register_plugin


def _body(opset: int) -> str:
    return "\n".join([
        "   half_f = Constant <value_float: float = 0.5> ()",
        cast_like("half_f", "x", opset, "half"),
        "   one_f = Constant <value_float: float = 1.0> ()",
        cast_like("one_f", "x", opset, "one"),
        f"   rsqrt2_f = Constant <value_float: float = {1 / math.sqrt(2):.9g}> ()",
        cast_like("rsqrt2_f", "x", opset, "rsqrt2"),
        f"   k_f = Constant <value_float: float = {math.sqrt(2 / math.pi):.9g}> ()",
        cast_like("k_f", "x", opset, "k"),
        "   c_f = Constant <value_float: float = 0.044715> ()",
        cast_like("c_f", "x", opset, "c"),
        # erf form
        "   xs = Mul (x, rsqrt2)",
        "   erf = Erf (xs)",
        "   erf1 = Add (erf, one)",
        # tanh form
        "   x2 = Mul (x, x)",
        "   x3 = Mul (x2, x)",
        "   cx3 = Mul (x3, c)",
        "   inner = Add (x, cx3)",
        "   kin = Mul (inner, k)",
        "   th = Tanh (kin)",
        "   th1 = Add (th, one)",
        "   approx = Constant <value_int: int = @approximate> ()",
        "   use_tanh = Cast <to: int = 9> (approx)",
        "   gate = Where (use_tanh, th1, erf1)",
        "   hx = Mul (x, half)",
        "   y = Mul (hx, gate)",
    ])


GELU = register_plugin(PluginSpec(
    name="GeluPlugin",
    inputs=("x",),
    outputs=("y",),
    attributes=(PluginAttr("approximate", "int", 0, "0: erf form, 1: tanh form"),),
    body=_body,
    doc=__doc__ or "",
    dtypes=("float32", "float16", "bfloat16"),
))
