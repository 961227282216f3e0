"""l2norm: fuse L2 normalization along one axis into L2NormPlugin.

Matches  y = x / denom  (Div, or Mul by Reciprocal(denom) or by Div(1, denom)) where, with
sum(x^2) = ReduceSum(Pow(x, 2) | Mul(x, x), keepdims=1) and n = ReduceL2(x) | sqrt(sum(x^2))
(Sqrt or Pow 0.5), denom is

- ``n``: x / ||x||, e.g. CLIP's embedding normalization Pow-ReduceSum-Pow(0.5)-Div (mode 0, eps 0);
- ``sqrt(sum(x^2) + eps)``, Div or rsqrt-Mul (mode 0);
- ``Max(n, eps)`` (mode 1); ``Clip(n, min=eps)``, F.normalize as torch exporters write it (mode 2);
- ``sqrt(Max(sum(x^2), eps))``, tf.math.l2_normalize via tf2onnx: mode 1 with eps' = sqrt(eps),
  exact because a correctly rounded sqrt is monotone;

optionally broadcast by Expand to x's own shape first (F.normalize's expand_as).

Emits L2NormPlugin only. ONNX LpNormalization(p=2) is never exactly x / ||x||: ONNX Runtime
returns 0 for a row whose norm is 0 (TensorRT's importer divides it by 1), where the original gives
NaN, or inf when sum(x^2) underflows; and it has no eps for the other forms.

Never fires when the reduction is not over exactly one constant axis, keepdims is 0, eps is not a
constant scalar (or negative in the tf form), Clip has a max, the Expand could grow x's shape, x is
not float32 (a float16 norm's accuracy depends on where the runtime accumulates; exporters keep
norms in float32 islands between Casts, which stay), or an intermediate value is used outside
the match.

Constants: the exponents 2 and 0.5 and the 1 of Div(1, n) exactly (0 ULP); eps is bound and may
not broadcast x to a bigger shape.
Attributes checked: ReduceSum/ReduceL2 ``axes`` (bound, one constant axis) and ``keepdims``
(must be 1), ``noop_with_empty_axes`` (irrelevant: axes are given and non-empty); Clip ``min``
(bound as eps) and ``max`` (absent); Pow, Mul, Sqrt, Add, Max, Expand, Div, Reciprocal have none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxpass.passes.base import PatternPass, register
from onnxpass.patterns import Alt, Const, Match, MatchFailure, PatternOps, PValue, Rule, Var

MODES = {"plain": 0, "add": 0, "max": 1, "clip": 2, "max_sumsq": 1}


def l2norm_pattern(op: PatternOps, x: PValue) -> PValue:
    def exact(v: float) -> Const:
        return Const(value=v)

    def sqrt(v: PValue) -> PValue:
        return op.Sqrt(v) | op.Pow(v, exact(0.5))

    sumsq = op.ReduceSum(op.Pow(x, exact(2.0)) | op.Mul(x, x), axes=Var("axes"), keepdims=1)
    norm = op.ReduceL2(x, axes=Var("axes"), keepdims=1) | sqrt(sumsq)
    eps = Const("eps")
    denom = Alt(plain=norm, add=sqrt(op.Add(sumsq, eps)), max=op.Max(norm, eps),
                clip=op.Clip(norm, min=Var("eps"), max=None), max_sumsq=sqrt(op.Max(sumsq, eps)),
                tag="mode")
    denom = op.Expand(denom, Var("shape")).optional()
    return op.Div(x, denom) | op.Mul(x, op.Reciprocal(denom) | op.Div(exact(1.0), denom))


@dataclass(frozen=True)
class L2NormAttrs:
    """What the check worked out: L2NormPlugin's attributes."""

    eps: float
    mode: int
    axis: int


def check_l2norm(m: Match[L2NormAttrs]) -> L2NormAttrs | MatchFailure:
    axes = m.attr("axes")
    if not axes or len(axes) != 1:
        return MatchFailure(f"reduces over axes {axes}, not exactly one axis")
    if "shape" in m:
        grown, want = m.graph.shape(m.node("Expand").outputs[0]), m.shape("x")
        if grown is None or grown != want or None in grown:
            return MatchFailure(f"Expand gives shape {grown}, not x's shape {want}")
    mode = m.tag("mode")
    assert mode is not None  # the pattern's Alt always tags a mode
    eps = np.zeros((), np.float32) if mode == "plain" else np.asarray(m.attr("eps"))
    if eps.size != 1 or eps.ndim > (m.rank("x") or 0):
        return MatchFailure(f"eps of shape {eps.shape} is not a scalar that leaves x's shape")
    if mode == "max_sumsq":
        if eps.reshape(-1)[0] < 0:
            return MatchFailure("eps < 0 under Sqrt(Max(sum(x^2), eps))")
        eps = np.sqrt(eps)
    return L2NormAttrs(eps=float(eps.reshape(-1)[0]), mode=MODES[mode], axis=int(axes[0]))


@register
class L2Norm(PatternPass):
    name = "l2norm"
    summary = "fuse L2 normalization (x / ||x||, F.normalize, rsqrt forms) -> L2NormPlugin"
    forms = ("plugin",)
    default_form = "plugin"

    def rules(self) -> list[Rule]:
        # L2NormPlugin's spec takes float32 only: a float16 norm stays (see above)
        return [Rule(name="l2norm", pattern=l2norm_pattern, check=check_l2norm,
                     rewrite=lambda op, m: op.plugin("L2NormPlugin", m["x"], eps=m.facts.eps,
                                                     axis=m.facts.axis, mode=m.facts.mode))]
