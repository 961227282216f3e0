"""add_bias_transpose: the bias add and head split of attention's Q, K and V projections.

Matches  y = Transpose(Reshape(x + bias, (B, S, H, d)), perm)  with x of shape (B, S, N), bias a
constant row vector of N = H * d elements on either side of the Add (in std form, any row
vector), and perm (0, 2, 1, 3) (Q, V; K in dynamo exports) or (0, 2, 3, 1) (K already
transposed, as TorchScript exports merge two transposes). The Reshape must provably keep B and
S in place: a constant target whose 0s copy them or whose -1 resolves to them, or an inferred
output shape naming x's own dims (the Shape/Gather/Concat targets TorchScript writes).

Forms:
- ``std`` (default): where x + bias is MatMul(a, W) + bias with a 2-D W, the bias moves into a
  Gemm (C = bias), which computes the same sum. A 3-D a is flattened to 2-D for it (as matmul2d
  does) and the Gemm's output reshaped straight to (B, S, H, d): one Reshape instead of the
  Reshape back plus the head split. A 2-D a feeds the Gemm as it is, and the Reshape and
  Transpose stay. Nothing else fires in this form.
- ``plugin``: AddBiasTransposePlugin(x, bias) with ``num_heads`` and ``perm``; its local function
  is the reference.

Never fires when the bias varies along B or S or broadcasts x up, x (or a 3-D a) is not 3-D, a
3-D a is a DequantizeLinear's output in std form (a QAT graph: see matmul2d),
the Reshape may move B or S (a target (S, B, H, d) has the same element count), the split of N
is not known, or a value inside the match feeds anything else.

Attributes checked: Transpose ``perm`` (one of the two above); Reshape ``allowzero`` (bound: a 0
in the target copies x's dim only when it is 0, which reshape_dims follows, and the std form
re-emits it); Add and MatMul have none.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxpass.passes.base import PatternPass, register
from onnxpass.passes.dims import UnprovenDims, proving_dims, reshape_dims, reshape_to, same
from onnxpass.passes.matmul2d import check_bias, check_not_dequantized, gemm_2d
from onnxpass.passes.normalize import FLOATS
from onnxpass.patterns import (
    Attr,
    Const,
    Match,
    MatchFailure,
    PatternOps,
    PValue,
    RewriteBuilder,
    Rule,
    Var,
)

PERMS = ([0, 2, 1, 3], [0, 2, 3, 1])


def _head_perm(perm: list[int]) -> bool:
    """(0, 2, 1, 3) or (0, 2, 3, 1)"""
    return list(perm) in PERMS


def head_split(op: PatternOps, biased: PValue) -> PValue:
    split = op.Reshape(biased, Var("shape"), allowzero=Var("allowzero"))
    return op.Transpose(split, perm=Attr(_head_perm, "perm"))


def plugin_pattern(op: PatternOps, x: PValue) -> PValue:
    return head_split(op, op.Add(x, Const("bias")))


def std_pattern(op: PatternOps, x: PValue, w: PValue, bias: PValue) -> PValue:
    return head_split(op, op.Add(op.MatMul(x, w), bias))


@dataclass(frozen=True)
class HeadSplit:
    """How the Reshape splits x's N features: H heads of d."""

    heads: int
    head_size: int


@proving_dims
def check(m: Match[HeadSplit]) -> HeadSplit | MatchFailure:
    xs = m.shape("x")
    if m.dtype("x") not in FLOATS:
        return MatchFailure(f"x has dtype {m.dtype('x')}, not a float type")
    if "w" in m:  # std: x @ w + bias, the bias a Gemm's C
        if m.rank("w") != 2:
            return MatchFailure(f"the weight has rank {m.rank('w')}, not 2")
        n = m.shape("w")[1]  # type: ignore[index]
        if xs is None or len(xs) not in (2, 3) or 0 in xs or not isinstance(n, int):
            return MatchFailure(f"x of shape {xs} @ a weight of shape {m.shape('w')} is not a "
                                f"2-D or 3-D GEMM")
        bad = check_bias(m, "bias", len(xs), n)
        if bad is None and len(xs) == 3:
            bad = check_not_dequantized(m)
    else:
        n = xs[-1] if xs is not None and len(xs) == 3 else None
        if not isinstance(n, int):
            return MatchFailure(f"x has shape {xs}, not (B, S, N) with a static N")
        bad = _check_row_vector(m, n)
    if bad is not None:
        return bad
    return _check_split(m, n)


def _check_row_vector(m: Match[HeadSplit], n: int) -> MatchFailure | None:
    """The plugin's bias: N elements along the last dim, after leading 1s."""
    bs = m.shape("bias")
    if bs is None or m.dtype("bias") != m.dtype("x"):
        return MatchFailure("bias has unknown shape or another dtype")
    if not bs or bs[-1] != n or len(bs) > 3 or any(d != 1 for d in bs[:-1]):
        return MatchFailure(f"bias of shape {bs} is not a row vector of x's {n} features")
    return None


def _check_split(m: Match[HeadSplit], n: int) -> HeadSplit | MatchFailure:
    """The Reshape turns (B, S, N) into (B, S, H, d): how it splits N."""
    reshape = m.node("Reshape")
    xs = m.graph.shape(reshape.inputs[0])
    dims = reshape_dims(m.graph, reshape.inputs[0], m["shape"], reshape.outputs[0],
                        m.attr("allowzero") or 0)
    if dims is None or len(dims) != 4:
        return MatchFailure(f"the Reshape's target is not known to be 4-D: {dims}")
    h, d = dims[2:]
    if isinstance(h, int) and not isinstance(d, int) and h and n % h == 0:
        d = n // h
    if isinstance(d, int) and not isinstance(h, int) and d and n % d == 0:
        h = n // d
    if not (isinstance(h, int) and isinstance(d, int) and h * d == n):
        return MatchFailure(f"the Reshape to {dims} does not split {n} features into heads")
    if len(xs) == 3 and not (same(dims[0], xs[0]) and same(dims[1], xs[1])):  # type: ignore
        return UnprovenDims(f"the Reshape to {dims} may not keep (B, S) of {xs}")
    return HeadSplit(heads=h, head_size=d)


def emit_std(op: RewriteBuilder, m: Match[HeadSplit]) -> str:
    y2 = gemm_2d(op, m, "bias")
    if m.rank("x") == 2:  # the Reshape's target already works on the 2-D product
        split = op.Reshape(y2, m["shape"], allowzero=m.attr("allowzero") or None)
    else:
        split = reshape_to(op, m.graph, y2, m["x"], 2, [m.facts.heads, m.facts.head_size])
    return op.Transpose(split, perm=m.attr("perm"))


def emit_plugin(op: RewriteBuilder, m: Match[HeadSplit]) -> str:
    bias = m["bias"]
    if m.rank("bias") != 1:
        bias = op.const(m.const("bias").reshape(-1), hint="bias")
    return op.plugin("AddBiasTransposePlugin", m["x"], bias, num_heads=m.facts.heads,
                     perm=m.attr("perm"))


@register
class AddBiasTranspose(PatternPass):
    name = "add_bias_transpose"
    summary = ("Q/K/V bias + head split -> Gemm with the bias (std) or AddBiasTransposePlugin "
               "(plugin)")
    forms = ("std", "plugin")
    default_form = "std"

    def rules(self) -> list[Rule]:
        plugin = self.form == "plugin"
        return [Rule(name="add_bias_transpose", pattern=plugin_pattern if plugin else std_pattern,
                     check=check, rewrite=emit_plugin if plugin else emit_std)]
