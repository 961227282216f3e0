"""layernorm: fuse decomposed layer normalization.

Matches  y = (x - E[x]) / sqrt(Var[x] + eps) * gamma + beta  over the trailing axes of x (or one
non-trailing axis, the NCHW form with a Cx1x1 gamma), in the forms exporters write:

- Var[x] as E[(x - E[x])^2] (Pow 2 or Mul(d, d); one or two Subs off the mean) or, as tf2onnx and
  Flax write it, E[x^2] - E[x]^2, optionally clamped with Max(var, 0);
- the division as Div, or Mul by Reciprocal(Sqrt(...)); Sqrt or Pow(0.5);
- gamma and beta each present or absent; Flax's (x - mean) * (Reciprocal(std) * gamma);
  TensorFlow's x * inv + (beta - mean * inv) with inv = Reciprocal(std) * gamma (Keras 3 through
  tf2onnx; the shift also as -mean * inv + beta): the same function, rounded in another order;
- axes as attribute (opset < 18) or input (opset >= 18). Casts around the whole computation stay
  where they are: the fused op then sees the same float32 input the original did;
- TorchScript's float16 form: x - mean cast up (to float or double) for the variance and the
  division, the result cast back to x's type before gamma and beta; the fused op computes in
  float32 (stash_type 1), so it differs from the original only by the original's rounding.

Forms:
- ``std`` (default): ONNX LayerNormalization (opset 17; the model's opset is raised when needed).
  TensorRT >= 8.6 imports it natively.
- ``plugin``: a LayerNormPlugin node with a local function holding the reference decomposition;
  existing LayerNormalization nodes are converted too.

Never fires when eps is not a constant scalar, the two reductions differ in axes, a reduction
drops dims (keepdims=0), gamma or beta vary along dims that are not normalized, a Cast inside
lowers precision or does not return to x's type, or an intermediate value is used outside the
match.

Constants: the exponents 2 and 0.5 and the clamp's 0 exactly (0 ULP in their dtype: Pow 2.0001
is not a square); eps is bound, not matched, and with every constant may not broadcast the
chain to a bigger shape (an eps of shape [1,1,1,1] on a rank-3 x makes the original rank 4).
Attributes checked: ReduceMean ``axes`` (bound, the same in both reductions; attribute or input)
and ``keepdims`` (must be 1); ``noop_with_empty_axes`` is irrelevant only when axes are given
and non-empty, so a ReduceMean without axes that sets it (an identity) refuses the match; Cast
``to`` (bound and checked), ``saturate``/``round_mode`` (irrelevant: float targets only);
Sub, Pow, Mul, Add, Max, Sqrt, Div, Reciprocal have none. Native rule: LayerNormalization
``axis``, ``epsilon`` (bound), ``stash_type`` (must be 1).
"""

from __future__ import annotations

from typing import cast

import numpy as np
from onnx import TensorProto, helper

from onnxpass.passes.base import PatternPass, native_plugin_rule, register
from onnxpass.passes.normalize import FLOATS, NormalizedParams, normalized_params
from onnxpass.patterns import (
    Alt,
    Const,
    Match,
    MatchFailure,
    PatternOps,
    PValue,
    RewriteBuilder,
    Rule,
    Var,
)


def layernorm_pattern(op: PatternOps, x: PValue) -> PValue:
    def mean(v: PValue) -> PValue:
        return op.ReduceMean(v, axes=Var("axes"), keepdims=1)

    def square(v: PValue) -> PValue:
        return op.Pow(v, 2.0) | op.Mul(v, v)

    def stash(v: PValue) -> PValue:
        return op.Cast(v, to=Var("stash")).optional()

    mu = mean(x)
    centered = stash(op.Sub(x, mu))                     # the numerator
    var_centered = mean(square(stash(op.Sub(x, mu))))   # a second Sub, or the same one
    moments = op.Sub(mean(square(x)), square(mu))
    var = Alt(centered=var_centered, moments=moments, clamped=op.Max(moments, 0.0), tag="variance")
    var_eps = op.Add(var, Const("eps"))
    std = op.Sqrt(var_eps) | op.Pow(var_eps, 0.5)
    normed = op.Div(centered, std) | op.Mul(centered, op.Reciprocal(std))
    normed = op.Cast(normed, to=Var("back")).optional()
    scaled = op.Mul(normed, Var("gamma")) | op.Mul(centered, op.Mul(op.Reciprocal(std),
                                                                      Var("gamma")))
    # TensorFlow's batch-norm arrangement (Keras 3 via tf2onnx): with inv = gamma / std,
    # x * inv + (beta - mean * inv), the shift as -mean * inv + beta or beta - mean * inv
    inv = op.Mul(op.Reciprocal(std), Var("gamma"))
    shift = op.Add(op.Mul(op.Neg(mu), inv), Var("beta")) | op.Sub(Var("beta"), op.Mul(mu, inv))
    return Alt(op.Add(scaled, Var("beta")), scaled, op.Add(normed, Var("beta")), normed,
               op.Add(op.Mul(x, inv), shift))


_AT_LEAST: dict[int, set[int]] = {
    TensorProto.FLOAT16: {TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE},
    TensorProto.BFLOAT16: {TensorProto.BFLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE},
    TensorProto.FLOAT: {TensorProto.FLOAT, TensorProto.DOUBLE},
    TensorProto.DOUBLE: {TensorProto.DOUBLE}}


def check_layernorm(m: Match[NormalizedParams]) -> NormalizedParams | MatchFailure:
    dtype = m.dtype("x")
    if dtype is None or dtype not in FLOATS:
        return MatchFailure(f"x has dtype {dtype}, not a float type")
    # TorchScript's half-precision form: Cast(x - mean) up to the stash type, Cast(normed) back.
    stash = m.attr("stash") if "stash" in m else dtype
    if stash not in _AT_LEAST[dtype]:
        return MatchFailure(f"x - mean is cast from {dtype} down to {stash}")
    if ("back" in m and m.attr("back") != dtype) or ("back" not in m and stash != dtype):
        return MatchFailure(f"the normalized value is not cast back to x's dtype {dtype}")
    eps = m.const("eps")
    if eps.size != 1:
        return MatchFailure(f"eps has {eps.size} elements, expected a scalar")
    return normalized_params(m, m.attr("axes"), ("gamma", "beta"))


def emit(op: RewriteBuilder, m: Match[NormalizedParams], form: str) -> str:
    p, eps = m.facts, float(m.const("eps").reshape(-1)[0])
    x = p.to_layout(op, m["x"])
    if form == "std":
        y = op.LayerNormalization(x, p.gamma(op), p.beta(op), axis=p.axis, epsilon=eps,
                                  stash_type=1)
    else:
        y = op.plugin("LayerNormPlugin", x, p.gamma(op, required=True), p.beta(op, required=True),
                      epsilon=eps, axis=p.axis)
    return p.from_layout(op, y)


@register
class LayerNorm(PatternPass):
    name = "layernorm"
    summary = "fuse decomposed LayerNorm -> LayerNormalization (std) or LayerNormPlugin (plugin)"
    forms = ("std", "plugin")
    default_form = "std"
    required_opset = {"std": 17}

    def rules(self) -> list[Rule]:
        form = self.form or "std"
        fuse = Rule(name="layernorm", pattern=layernorm_pattern, check=check_layernorm,
                    rewrite=lambda op, m: emit(op, m, form))
        if form == "std":
            return [fuse]
        native = native_plugin_rule(
            "layernorm-native", "LayerNormalization", "LayerNormPlugin", ("x", "gamma", "beta"),
            optional=1, attrs={"axis": Var("axis"), "epsilon": Var("epsilon"), "stash_type": 1},
            check=_check_native, convert=lambda op, m: (
                [m["x"], m["gamma"], m.get("beta") or op.const(_zeros_like_param(m))],
                {"epsilon": m.attr("epsilon"), "axis": m.attr("axis")}))
        return [fuse, native]


def _check_native(m: Match[None]) -> MatchFailure | None:
    if m.get("beta") is None and m.shape("gamma") is None:
        return MatchFailure("no beta and gamma's shape is unknown")
    return None


def _zeros_like_param(m: Match[None]) -> np.ndarray:
    shape = m.shape("gamma")
    dtype = helper.tensor_dtype_to_np_dtype(m.dtype("gamma") or TensorProto.FLOAT)
    return np.zeros([int(cast(int, d)) for d in shape or ()], dtype=dtype)
