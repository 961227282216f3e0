"""rmsnorm: fuse decomposed RMS normalization.

Matches  y = x / sqrt(mean(x^2) + eps) * gamma  over the trailing axes of x (or one non-trailing
axis, through a Transpose as layernorm does), in the forms exporters write:

- x^2 as Pow(x, 2) or Mul(x, x); the mean as ReduceMean, axes as attribute (opset < 18) or input;
- the division as Mul by Reciprocal(Sqrt(v)), by Div(1, Sqrt(v)) (TorchScript's rsqrt), by
  Pow(v, -0.5), or as Div(x, Sqrt(v)); Sqrt or Pow(v, 0.5);
- Llama and T5: x cast up (to float32) first, by one Cast or, in T5's float16 export, by one Cast
  for the variance and another for the numerator; the normalized value cast back to x's type,
  then multiplied by gamma (``weight * hidden.to(input_dtype)``); or gamma applied before the
  cast back (Gemma's ``(x * rsqrt(...) * (1 + w)).type_as(x)``, ``1 + w`` being any gamma);
- Flax's x * (rsqrt * gamma); gamma absent.

Forms:
- ``std`` (default): ONNX RMSNormalization (opset 23, stash_type 1: the statistic in float32;
  the model's opset is raised when needed). TensorRT >= 10.15 imports it natively.
- ``plugin``: an RMSNormPlugin node with a local function holding the reference decomposition;
  existing RMSNormalization nodes are converted too.
The fused op takes x itself, except where gamma is applied before the cast back: then it takes
x cast up and the cast back follows it (RMSNormalization's scale must have x's type in ONNX
Runtime). It computes in float32, so a decomposition that squared float16 values in float16
differs from it only by that rounding (and overflow above 256).

Never fires when eps is not a constant scalar, a reduction drops dims (keepdims=0) or is over
axes that are not normalizable, gamma varies along dims that are not normalized, a Cast inside
lowers precision or the result is not cast back to x's type, x is float64 (the fused op
computes in float32), x is itself x0 - mean(x0) (a LayerNorm, which the ``layernorm`` pass
fuses whole, or a near-miss of one), or an intermediate value is used outside the match. A Cast
that narrows x before the computation, or its result after it, stays outside the fused op: the
RMSNorm between them is what fuses.

Constants: the exponents 2, 0.5 and -0.5 and the 1 of Div(1, Sqrt) exactly (0 ULP in their
dtype: Pow 2.0001 is not a square, Pow 3 is not one either); eps is bound, not matched, and may
not broadcast the chain to a bigger shape.
Attributes checked: ReduceMean ``axes`` (bound; attribute or input) and ``keepdims`` (must be
1); ``noop_with_empty_axes`` is irrelevant only when axes are given and non-empty; Cast ``to``
(bound and checked), ``saturate``/``round_mode`` (irrelevant: float targets only); Pow, Mul,
Add, Sqrt, Div, Reciprocal have none. Native rule: RMSNormalization ``axis``, ``epsilon``
(bound), ``stash_type`` (must be 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

from onnxpass.passes.base import PatternPass, native_plugin_rule, register
from onnxpass.passes.normalize import NormalizedParams, normalized_params
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


def rmsnorm_pattern(op: PatternOps, x: PValue) -> PValue:
    def upcast(v: PValue) -> PValue:
        return op.Cast(v, to=Var("up")).optional()

    xv = upcast(x)                                      # for the variance
    var_eps = op.Add(op.ReduceMean(op.Pow(xv, 2.0) | op.Mul(xv, xv), axes=Var("axes"),
                                   keepdims=1), Const("eps"))
    std = op.Sqrt(var_eps) | op.Pow(var_eps, 0.5)
    rstd = op.Reciprocal(std) | op.Div(1.0, std) | op.Pow(var_eps, -0.5)
    xn = upcast(x)                                      # the numerator: the same Cast or another
    normed = op.Mul(xn, rstd) | op.Div(xn, std)
    back = op.Cast(normed, to=Var("back")).optional()
    gamma = Var("gamma")
    return Alt(after=op.Mul(back, gamma), before=op.Cast(op.Mul(normed, gamma), to=Var("back")),
               flax=op.Mul(xn, op.Mul(rstd, gamma)), none=back, tag="gamma")


# The types a value of each float type may be cast to without losing precision.
_AT_LEAST: dict[int, set[int]] = {
    TensorProto.FLOAT16: {TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE},
    TensorProto.BFLOAT16: {TensorProto.BFLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE},
    TensorProto.FLOAT: {TensorProto.FLOAT, TensorProto.DOUBLE},
}


@dataclass(frozen=True)
class RMSNormPlan:
    """What the check worked out: the normalized axis and gamma, eps, the element type the
    fused op runs in (its x, gamma and y), and the type of the value it replaces."""

    params: NormalizedParams
    epsilon: float
    dtype: int
    out: int


def check_rmsnorm(m: Match[RMSNormPlan]) -> RMSNormPlan | MatchFailure:
    dtype = m.dtype("x")
    if dtype not in _AT_LEAST:
        return MatchFailure(f"x has dtype {dtype}, not float32, float16 or bfloat16")
    up = m.attr("up") if "up" in m else dtype
    if up not in _AT_LEAST[dtype]:
        return MatchFailure(f"x is cast from {dtype} down to {up}")
    if "back" in m and m.attr("back") != dtype:
        return MatchFailure(f"the result is cast to {m.attr('back')}, not back to x's {dtype}")
    eps = m.const("eps")
    if eps.size != 1:
        return MatchFailure(f"eps has {eps.size} elements, expected a scalar")
    if (why := _centered(m)) is not None:
        return MatchFailure(why)
    # Gamma multiplies the value in the type it is in: x's after the cast back, else the
    # computation's. Only before a cast back is that not the type of the result.
    out = dtype if "back" in m else up
    fused = up if m.tag("gamma") == "before" else out
    if fused not in _AT_LEAST:
        return MatchFailure(f"the normalized value has dtype {fused}, not float32, float16 or "
                            f"bfloat16")
    params = normalized_params(m, m.attr("axes"), ("gamma",), dtype=fused)
    if isinstance(params, MatchFailure):
        return params
    return RMSNormPlan(params, float(eps.reshape(-1)[0]), fused, out)


def _centered(m: Match[RMSNormPlan]) -> str | None:
    """Why x is a centered value x0 - mean(x0) (through Casts), or None: the decomposition is
    then a LayerNorm, or a near-miss of one, and not for this pass."""
    g = m.graph
    value = m["x"]
    while (node := g.producer.get(value)) is not None and node.op_type == "Cast":
        value = node.inputs[0]
    if node is None or node.op_type != "Sub" or len(node.inputs) != 2:
        return None
    mean = g.producer.get(node.inputs[1])
    if mean is None or mean.op_type != "ReduceMean" or mean.inputs[0] != node.inputs[0]:
        return None
    return "x is x0 - mean(x0): a LayerNorm (the layernorm pass fuses it)"


def emit(op: RewriteBuilder, m: Match[RMSNormPlan], form: str) -> str:
    plan = m.facts
    p = plan.params
    x = m["x"] if plan.dtype == m.dtype("x") else op.Cast(m["x"], to=plan.dtype)
    x = p.to_layout(op, x)
    if form == "std":
        y = op.RMSNormalization(x, p.gamma(op), axis=p.axis, epsilon=plan.epsilon, stash_type=1)
    else:
        y = op.plugin("RMSNormPlugin", x, p.gamma(op), epsilon=plan.epsilon, axis=p.axis)
    y = p.from_layout(op, y)
    return y if plan.out == plan.dtype else op.Cast(y, to=plan.out)


@register
class RMSNorm(PatternPass):
    name = "rmsnorm"
    summary = "fuse decomposed RMSNorm -> RMSNormalization (std) or RMSNormPlugin (plugin)"
    forms = ("std", "plugin")
    default_form = "std"
    required_opset = {"std": 23}

    def rules(self) -> list[Rule]:
        form = self.form or "std"
        fuse = Rule(name="rmsnorm", pattern=rmsnorm_pattern, check=check_rmsnorm,
                    rewrite=lambda op, m: emit(op, m, form))
        if form == "std":
            return [fuse]
        native = native_plugin_rule(
            "rmsnorm-native", "RMSNormalization", "RMSNormPlugin", ("x", "gamma"),
            attrs={"axis": Var("axis"), "epsilon": Var("epsilon"), "stash_type": 1},
            check=_check_native, convert=lambda op, m: (
                [m["x"], m["gamma"]], {"epsilon": m.attr("epsilon"), "axis": m.attr("axis")}))
        return [fuse, native]


def _check_native(m: Match[None]) -> MatchFailure | None:
    """The plugin takes gamma of x's type and of the normalized dims' shape (leading 1s
    aside); RMSNormalization also allows a scale of another type, or one that broadcasts."""
    if m.dtype("gamma") != m.dtype("x"):
        return MatchFailure(f"scale has dtype {m.dtype('gamma')}, X has {m.dtype('x')}")
    shape, gshape = m.shape("x"), m.shape("gamma")
    if shape is None or gshape is None:
        return MatchFailure("the shapes of X and scale are unknown")
    axis = int(m.attr("axis")) % len(shape) if shape else 0
    normalized = list(shape[axis:])
    dims = list(gshape)
    while len(dims) > len(normalized) and dims[0] == 1:
        dims.pop(0)
    dims = [1] * (len(normalized) - len(dims)) + dims if len(dims) < len(normalized) else dims
    if dims != normalized or any(not isinstance(d, int) for d in dims):
        return MatchFailure(f"scale of shape {list(gshape)} is not the normalized shape "
                            f"{normalized}")
    return None


__all__ = ["RMSNorm", "RMSNormPlan", "check_rmsnorm", "emit", "rmsnorm_pattern"]
