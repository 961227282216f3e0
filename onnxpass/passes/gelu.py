"""gelu: fuse decomposed GELU.

Matches  x * 0.5 * (1 + erf(x / sqrt 2))  (Div by sqrt 2 or Mul by 1/sqrt 2) and the tanh form
x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))  (Pow 3, x*x*x, or x * (1 + 0.044715 x^2)),
with the 0.5 on x, on (1 + ...), or on the product; each addition an Add or a two-input Sum.
CLIP's quick_gelu, x * sigmoid(1.702 x), is a different function and is left alone.

Constants, compared in their own dtype (float16 exports store sqrt 2 as 1.414, which is sqrt 2
rounded to float16): 0.5, 1 and the exponent 3 exactly (0 ULP: 0.50004 or Pow 3.0002 is another
function); sqrt 2, 1/sqrt 2 (0.70710677 = 0.7071067690849304 in float32), sqrt(2/pi)
(0.7978845608) and 0.044715 within 1 ULP (an exporter may compute them in that dtype). No
constant may broadcast x to a bigger shape (a 0.5 of shape [1,1,1,1] on a rank-3 x).
Attributes checked: Div, Mul, Add, Sum, Pow, Erf and Tanh have none (opset >= 7; any other
attribute set refuses the match); the native rule binds Gelu's only one, ``approximate``.

Forms:
- ``std`` (default): ONNX Gelu (opset 20, ``approximate`` "none" or "tanh"); the model's opset is
  raised when needed. TensorRT >= 10.0 imports it natively.
- ``plugin``: a GeluPlugin node (``approximate`` 0 or 1) with its reference local function;
  existing Gelu nodes are converted too.
"""

from __future__ import annotations

import math

from onnxpass.passes.base import PatternPass, native_plugin_rule, register
from onnxpass.passes.normalize import FLOATS
from onnxpass.patterns import Alt, Const, Match, MatchFailure, PatternOps, PValue, Rule, Var


def _irrational(value: float) -> Const:
    return Const(value=value, ulps=1)


def gelu_pattern(op: PatternOps, x: PValue) -> PValue:
    def add(a: PValue | float, b: PValue | float) -> PValue:  # a literal becomes a Const
        return op.Add(a, b) | op.Sum(a, b)  # ONNX's own Gelu function body uses Sum

    erf = op.Erf(op.Div(x, _irrational(math.sqrt(2.0)))
                 | op.Mul(x, _irrational(1 / math.sqrt(2.0))))
    xx = op.Mul(x, x)
    cube = op.Pow(x, 3.0) | op.Mul(xx, x)
    poly = (add(x, op.Mul(cube, _irrational(0.044715)))
            | op.Mul(x, add(op.Mul(xx, _irrational(0.044715)), 1.0)))
    tanh = op.Tanh(op.Mul(poly, _irrational(math.sqrt(2.0 / math.pi))))
    one_plus = add(Alt(erf=erf, tanh=tanh, tag="approximate"), 1.0)
    return (op.Mul(op.Mul(x, 0.5), one_plus)
            | op.Mul(x, op.Mul(one_plus, 0.5))
            | op.Mul(op.Mul(x, one_plus), 0.5))


def check_gelu(m: Match[None]) -> MatchFailure | None:
    if m.dtype("x") not in FLOATS:
        return MatchFailure(f"x has dtype {m.dtype('x')}, not a float type")
    return None


@register
class Gelu(PatternPass):
    name = "gelu"
    summary = "fuse decomposed GELU (erf and tanh forms) -> Gelu (std) or GeluPlugin (plugin)"
    forms = ("std", "plugin")
    default_form = "std"
    required_opset = {"std": 20}

    def rules(self) -> list[Rule]:
        if self.form == "std":
            return [Rule(name="gelu", pattern=gelu_pattern, check=check_gelu,
                         rewrite=lambda op, m: op.Gelu(m["x"], approximate="tanh" if m.tag(
                             "approximate") == "tanh" else "none"))]
        # GeluPlugin's spec says which dtypes and opsets it takes
        return [
            Rule(name="gelu", pattern=gelu_pattern, check=check_gelu,
                 rewrite=lambda op, m: op.plugin("GeluPlugin", m["x"], approximate=int(
                     m.tag("approximate") == "tanh"))),
            native_plugin_rule("gelu-native", "Gelu", "GeluPlugin", ("x",),
                               attrs={"approximate": Var("approximate")},
                               convert=lambda op, m: ([m["x"]], {
                                   "approximate": int(_is_tanh(m.attr("approximate")))})),
        ]


def _is_tanh(approximate: str | bytes) -> bool:
    """Gelu's ``approximate`` attribute reads back as bytes."""
    return (approximate.decode() if isinstance(approximate, bytes) else approximate) == "tanh"
