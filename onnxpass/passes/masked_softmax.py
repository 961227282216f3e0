"""masked_softmax: fuse a softmax over masked attention scores.

Matches  y = softmax(z)  over the last axis, where z masks the scores x with a bool or integer
mask m, in the forms exporters write:

- ``scaled``:  z = x + (1 - m) * fill   (HF's extended mask; fill -10000 or finfo.min);
  ``scaled_pad``: z = x + m * fill      (m marks padding);
- ``add``:     z = x + where(m, 0, fill);  ``add_pad``: z = x + where(m, fill, 0);
- ``select``:  z = where(m, x, fill);      ``select_pad``: z = where(m, fill, x)  (masked_fill).

m reaches z through an optional Cast (to the scores' type, or to bool) and an optional Expand to
the full score shape, in either order; Unsqueezes before them stay as they are. The mask
expression may be shared (one mask for every layer): it is left in place and dropped once unused.
A Reshape between z and the Softmax (AnchorDETR's view - masked_fill - view) is allowed when it
keeps the last dim.

Exactness: the additive forms and the select form differ when a row is fully masked (-10000
leaves softmax(x), finfo.min a uniform row, -inf NaN), so each form keeps its own formula: the
plugin's ``mode`` and ``fill`` say which, and nothing is turned into another form. The Expand is
dropped only where the last axis provably keeps its size (else the expanded bool/int mask is
used as it is); where shape inference cannot show that it adds nothing to the other dims (a
symbolic batch), the result is expanded to the same target instead: the softmax rows are the
same either way.

Forms:
- ``plugin`` (default): MaskedSoftmaxPlugin(x, m) with m the compact bool/int mask, never a float
  mask expanded to the scores' shape.
- ``std``: the same Where or Add on the compact mask, broadcast by the op instead of an Expand to
  full size; fires only where there is such an Expand to drop.

Never fires when the mask is a float tensor (an additive bias, not a mask), fill is not a scalar
constant, the "1" or "0" is not exactly that, the Softmax is not over the last axis, the shapes
are unknown, or a Reshape changes the last dim.

Constants: "1" and "0" exactly (0 ULP); fill is bound; none may broadcast the scores to a
bigger shape. Attributes checked: Softmax ``axis`` (bound, the last axis); Cast ``to`` (bound
and re-emitted), ``saturate``/``round_mode`` (irrelevant unless the target is float8/float4,
else the match is refused); Reshape ``allowzero`` (bound, re-emitted); Expand, Sub, Mul, Add,
Where have none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import helper

from onnxpass.passes.base import PatternPass, register
from onnxpass.passes.normalize import FLOATS
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
from onnxpass.plugins.masked_softmax import MASKED_SOFTMAX

FORMS = {"scaled": (0, 0), "scaled_pad": (0, 1), "select": (1, 0), "select_pad": (1, 1),
         "add": (2, 0), "add_pad": (2, 1)}  # tag -> (plugin mode, invert)


def dtype_name(elem: int | None) -> str:
    return "unknown" if not elem else str(helper.tensor_dtype_to_np_dtype(elem))


def compact(op: PatternOps, mask: PValue) -> PValue:
    """The mask, maybe cast and expanded to full size (in either order)."""
    def cast(v: PValue) -> PValue:
        return op.Cast(v, to=Var("to"))

    def expand(v: PValue) -> PValue:
        return op.Expand(v, Var("full"))

    return Alt(cast(expand(mask)), expand(cast(mask)), cast(mask), expand(mask), mask).shared()


def masked_softmax_pattern(op: PatternOps, x: PValue, mask: PValue) -> PValue:
    m, fill, zero = compact(op, mask), Const("fill"), Const("zero")
    additive = Alt(scaled=op.Mul(op.Sub(Const("one"), m), fill), scaled_pad=op.Mul(m, fill),
                   add=op.Where(m, zero, fill), add_pad=op.Where(m, fill, zero), tag="form")
    z = op.Add(x, additive.shared()) | Alt(select=op.Where(m, x, fill),
                                           select_pad=op.Where(m, fill, x), tag="form")
    return op.Softmax(op.Reshape(z, Var("shape"), allowzero=Var("allowzero")).optional(),
                      axis=Var("axis"))


@dataclass(frozen=True)
class Masking:
    """What the check worked out for the rewrite."""

    widens: bool  # the Expand's result is not known to have x's shape: expand the result back


def check_masked_softmax(m: Match[Masking]) -> Masking | MatchFailure:
    dtype = m.dtype("x")
    if dtype not in FLOATS:
        return MatchFailure(f"scores have dtype {dtype}, not a float type")
    if dtype_name(m.dtype("mask")) not in MASKED_SOFTMAX.allowed_dtypes("mask"):
        return MatchFailure(f"mask has dtype {dtype_name(m.dtype('mask'))}: not a bool or integer "
                            f"mask (one of {', '.join(MASKED_SOFTMAX.allowed_dtypes('mask'))})")
    for name, exact in (("one", 1.0), ("zero", 0.0)):
        if name in m and not np.array_equal(m.const(name).reshape(-1), [exact]):
            return MatchFailure(f"{name} is {m.const(name).reshape(-1)[:4]}, not exactly {exact}")
    if m.const("fill").size != 1:
        return MatchFailure(f"fill has {m.const('fill').size} elements, expected a scalar")
    scores = m.graph.shape(m.node("Softmax").inputs[0])
    if scores is None or not scores or m.attr("axis") not in (-1, len(scores) - 1):
        return MatchFailure(f"softmax axis {m.attr('axis')} is not the last axis of {scores}")
    x, mask = m.shape("x"), m.shape("mask")
    z = m.graph.shape(m.node("Reshape" if "shape" in m else "Softmax").inputs[0])  # masked x
    if x is None or mask is None or not z:
        return MatchFailure("the shapes of the scores, the mask or the masked scores are unknown")
    if "full" in m and not _same_dim(_broadcast(x[-1], mask[-1] if mask else 1), z[-1]):
        return MatchFailure(f"the Expand to {m['full']!r} may widen the last axis {z[-1]}")
    if "shape" in m and not _same_dim(z[-1], scores[-1]):
        return MatchFailure(f"the Reshape changes the last dim {z[-1]} -> {scores[-1]}")
    # Without the Expand, x and the mask broadcast to x's shape; where shape inference cannot
    # tell that the Expand's result had it too (a symbolic batch), the result is expanded back.
    return Masking(widens="full" in m and not (len(x) == len(z) and all(map(_same_dim, x, z))))


def _broadcast(a: Any, b: Any) -> Any:
    return b if a == 1 else a if b in (1, a) else None


def _same_dim(a: Any, b: Any) -> bool:
    return a is not None and a == b


def emit(op: RewriteBuilder, m: Match[Masking], plugin: bool) -> str:
    """Softmax over the last axis commutes with an Expand or Reshape that keeps that axis."""
    mode, invert = FORMS[m.tag("form") or ""]
    if plugin:
        y = op.plugin("MaskedSoftmaxPlugin", m["x"], m["mask"], mode=mode, invert=invert,
                      fill=float(m.const("fill").reshape(-1)[0]))
    else:
        y = op.Softmax(_std_masked(op, m, mode, invert), axis=-1)
    if m.facts.widens:
        y = op.Expand(y, m["full"])
    if "shape" in m:
        y = op.Reshape(y, m["shape"], allowzero=m.attr("allowzero") or None)
    return y


def _std_masked(op: RewriteBuilder, m: Match, mode: int, invert: int) -> str:
    """The matched masking, with the compact mask in place of the expanded one."""
    mask = op.Cast(m["mask"], to=m.attr("to")) if "to" in m else m["mask"]
    x, fill = m["x"], m["fill"]
    if mode == 0:
        return op.Add(x, op.Mul(mask if invert else op.Sub(m["one"], mask), fill))
    if mode == 1:
        return op.Where(mask, fill, x) if invert else op.Where(mask, x, fill)
    zero = m["zero"]
    return op.Add(x, op.Where(mask, fill, zero) if invert else op.Where(mask, zero, fill))


def _check_std(m: Match[Masking]) -> Masking | MatchFailure:
    if "full" not in m:
        return MatchFailure("the mask is not expanded: nothing to simplify")
    return check_masked_softmax(m)


@register
class MaskedSoftmax(PatternPass):
    name = "masked_softmax"
    summary = ("fuse softmax over scores masked by Add or Where -> MaskedSoftmaxPlugin (plugin) or "
               "the same ops on the compact mask (std)")
    forms = ("std", "plugin")
    default_form = "plugin"

    def rules(self) -> list[Rule]:
        plugin = self.form == "plugin"
        return [Rule(name="masked_softmax", pattern=masked_softmax_pattern,
                     check=check_masked_softmax if plugin else _check_std,
                     rewrite=lambda op, m: emit(op, m, plugin))]
