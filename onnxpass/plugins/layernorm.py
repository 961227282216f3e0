"""LayerNormPlugin: y = (x - E[x]) / sqrt(Var[x] + epsilon) * gamma + beta over dims axis.. of x.

gamma and beta have the normalized dims' shape, x.shape[axis:]."""

from __future__ import annotations

from onnxpass.plugins.base import PluginAttr, PluginSpec, cast_like, reduce_mean, register_plugin


def _body(opset: int) -> str:
    # Flatten to 2-D so one ReduceMean over axis 1 serves any `axis`, then restore the shape.
    return "\n".join([
        "   shape = Shape (x)",
        "   flat = Flatten <axis: int = @axis> (x)",
        reduce_mean("flat", [1], opset, "mean"),
        "   d = Sub (flat, mean)",
        "   dd = Mul (d, d)",
        reduce_mean("dd", [1], opset, "var"),
        "   eps = Constant <value_float: float = @epsilon> ()",
        cast_like("eps", "x", opset, "eps_x"),
        "   var_eps = Add (var, eps_x)",
        "   std = Sqrt (var_eps)",
        "   normed = Div (d, std)",
        "   normed_nd = Reshape (normed, shape)",
        "   scaled = Mul (normed_nd, gamma)",
        "   y = Add (scaled, beta)",
    ])


LAYERNORM = register_plugin(PluginSpec(
    name="LayerNormPlugin",
    inputs=("x", "gamma", "beta"),
    outputs=("y",),
    attributes=(
        PluginAttr("epsilon", "float", 1e-5, "added to the variance"),
        PluginAttr("axis", "int", -1,
                   "first normalized dimension; all later ones are normalized too"),
    ),
    body=_body,
    doc=__doc__ or "",
    dtypes=("float32", "float16", "bfloat16"),
))
