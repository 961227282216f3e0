"""mask2pos: fuse a padding mask's normalized cumulative position.

Matches, along one axis of a bool or integer mask,

    c   = cumsum(float(v), axis)       v = ~mask (Not) or the mask itself
    pos = (c - offset) / (c[last] + eps) * scale

with ``c[last]`` a Slice [-1:] along the same axis, and the Sub (offset), the Add (eps) and the
Mul (scale) each optional: DETR's sine position embedding (offset 0 or 0.5, eps 1e-6, scale
2*pi) and AnchorDETR's mask2pos ((c - 0.5) / c[last], scaled later). The Not and the Cast may
be shared by the y and x positions; they are left in place and dropped once unused. Slices of
the mask before the Cast (AnchorDETR's not_mask[:, :, 0]) stay as they are.

Forms: ``plugin`` only: Mask2PosPlugin(mask) carries the formula (axis, offset, eps, scale,
invert); without a plugin the ops above are already the plainest ONNX for it, so there is no
``std`` form.

Never fires when the mask is float, the cumsum is exclusive or reversed or not to float32, the
Slice does not take exactly the last element along the cumsum's axis, or offset, eps or scale is
not a scalar constant (or broadcasts the positions to a bigger shape).

Attributes checked: Cast ``to`` (float32), ``saturate``/``round_mode`` (irrelevant: a float32
target); CumSum ``exclusive`` and ``reverse`` (0); Not, Slice (inputs: starts, ends, axes, steps
checked), Sub, Add, Div, Mul have none.
"""

from __future__ import annotations

from onnx import TensorProto

from onnxpass.passes.base import PatternPass, register
from onnxpass.patterns import (
    Alt,
    Const,
    Match,
    MatchFailure,
    PatternOps,
    PValue,
    RewriteBuilder,
    Rule,
)


def mask2pos_pattern(op: PatternOps, mask: PValue) -> PValue:
    valid = op.Cast(Alt(pad=op.Not(mask), valid=mask, tag="mask"), to=TensorProto.FLOAT)
    c = op.CumSum(valid.shared(), Const("axis"), exclusive=0, reverse=0)
    slice_args = (c, Const("starts"), Const("ends"), Const("axes"))
    last = op.Slice(*slice_args) | op.Slice(*slice_args, Const("steps"))
    pos = op.Div(op.Sub(c, Const("offset")).optional(), op.Add(last, Const("eps")).optional())
    return op.Mul(pos, Const("scale")).optional()


def check_mask2pos(m: Match[int]) -> int | MatchFailure:
    """The cumsum axis, made non-negative."""
    for name in ("offset", "eps", "scale"):
        if name in m and m.const(name).size != 1:
            return MatchFailure(f"{name} has {m.const(name).size} elements, expected a scalar")
    shape = m.shape("mask")
    if not shape or m.const("axis").size != 1:
        return MatchFailure("the mask's rank is unknown or the cumsum axis is not a scalar")
    rank, axis = len(shape), int(m.const("axis").reshape(-1)[0])
    axis = axis + rank if axis < 0 else axis
    dim = shape[axis] if 0 <= axis < rank else None
    starts, ends, axes = (m.const(k).reshape(-1).tolist() for k in ("starts", "ends", "axes"))
    steps = m.const("steps").reshape(-1).tolist() if "steps" in m else [1]
    static = isinstance(dim, int)
    takes_last = (starts == [-1] or (static and starts == [dim - 1])) and len(ends) == 1 and (
        ends[0] >= (dim if static else 2**31 - 1))
    if not (takes_last and steps == [1] and [a % rank for a in axes] == [axis]):
        return MatchFailure(f"Slice {starts}:{ends} on axes {axes} is not the last element "
                            f"along the cumsum axis {axis}")
    return axis


def emit(op: RewriteBuilder, m: Match[int]) -> str:
    def scalar(name: str, default: float) -> float:
        return float(m.const(name).reshape(-1)[0]) if name in m else default

    return op.plugin("Mask2PosPlugin", m["mask"], axis=m.facts,
                     offset=scalar("offset", 0.0), eps=scalar("eps", 0.0),
                     scale=scalar("scale", 1.0), invert=int(m.tag("mask") == "pad"))


@register
class Mask2Pos(PatternPass):
    name = "mask2pos"
    summary = "fuse a mask's normalized cumulative position (DETR, AnchorDETR) -> Mask2PosPlugin"
    forms = ("plugin",)
    default_form = "plugin"

    def rules(self) -> list[Rule]:
        return [Rule(name="mask2pos", pattern=mask2pos_pattern, check=check_mask2pos, rewrite=emit)]

