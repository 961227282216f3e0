"""RMSNormPlugin: y = T(x / sqrt(mean(x^2) + epsilon)) * gamma over dims axis.. of x.

The mean of squares, the square root and the division are computed in float32 whatever x's
type T (float16 squares overflow above 256); the normalized value is rounded to T before the
multiplication by gamma, as ONNX's RMSNormalization with stash_type 1 defines it. gamma has the
normalized dims' shape, x.shape[axis:]."""

from __future__ import annotations

from onnxpass.plugins.base import PluginAttr, PluginSpec, cast_like, reduce_mean, register_plugin


def _body(opset: int) -> str:
    # Flatten to 2-D so one ReduceMean over axis 1 serves any `axis`, then restore the shape.
    return "\n".join([
        "   shape = Shape (x)",
        "   flat = Flatten <axis: int = @axis> (x)",
        "   xf = Cast <to: int = 1> (flat)",
        "   sq = Mul (xf, xf)",
        reduce_mean("sq", [1], opset, "ms"),
        "   eps = Constant <value_float: float = @epsilon> ()",
        "   ms_eps = Add (ms, eps)",
        "   rms = Sqrt (ms_eps)",
        "   normed_f = Div (xf, rms)",
        cast_like("normed_f", "x", opset, "normed"),
        "   normed_nd = Reshape (normed, shape)",
        "   y = Mul (normed_nd, gamma)",
    ])


RMSNORM = register_plugin(PluginSpec(
    name="RMSNormPlugin",
    inputs=("x", "gamma"),
    outputs=("y",),
    attributes=(
        PluginAttr("epsilon", "float", 1e-5, "added to the mean of squares"),
        PluginAttr("axis", "int", -1,
                   "first normalized dimension; all later ones are normalized too"),
    ),
    body=_body,
    doc=__doc__ or "",
    dtypes=("float32", "float16", "bfloat16"),
))
