"""L2NormPlugin: y = x / denom along one ``axis`` of a float32 x, where n = sqrt(sum(x^2)) and

- mode 0: denom = sqrt(sum(x^2) + eps)  (eps = 0: plain x / n, NaN for an all-zero row);
- mode 1: denom = max(n, eps);
- mode 2: denom = clip(n, min=eps): as mode 1, but an infinite n becomes FLT_MAX (ONNX Clip
  without ``max``, which is what torch exporters write for F.normalize).
"""

from __future__ import annotations

from onnxpass.plugins.base import PluginAttr, PluginSpec, register_plugin


def _body(opset: int) -> str:
    return "\n".join([
        "   axis_s = Constant <value_int: int = @axis> ()",
        "   one = Constant <value_ints: ints = [1]> ()",
        "   axes = Reshape (axis_s, one)",
        "   xx = Mul (x, x)",
        "   ss = ReduceSum <keepdims: int = 1> (xx, axes)",
        "   eps = Constant <value_float: float = @eps> ()",
        "   norm = Sqrt (ss)",
        "   ss_eps = Add (ss, eps)",
        "   d_add = Sqrt (ss_eps)",
        "   d_max = Max (norm, eps)",
        "   d_clip = Clip (norm, eps)",
        "   mode = Constant <value_int: int = @mode> ()",
        "   k1 = Constant <value_int: int = 1> ()",
        "   k2 = Constant <value_int: int = 2> ()",
        "   is_max = Equal (mode, k1)",
        "   is_clip = Equal (mode, k2)",
        "   d_max_add = Where (is_max, d_max, d_add)",
        "   denom = Where (is_clip, d_clip, d_max_add)",
        "   y = Div (x, denom)",
    ])


L2NORM = register_plugin(PluginSpec(
    name="L2NormPlugin",
    inputs=("x",),
    outputs=("y",),
    attributes=(
        PluginAttr("eps", "float", 0.0, "added to sum(x^2) (mode 0) or the norm's lower bound"),
        PluginAttr("axis", "int", -1, "the one normalized axis"),
        PluginAttr("mode", "int", 0, "0: sqrt(sum(x^2) + eps), 1: max(norm, eps), "
                                     "2: clip(norm, min=eps)"),
    ),
    body=_body,
    doc=__doc__ or "",
    dtypes=("float32",),
))
