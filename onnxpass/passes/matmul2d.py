"""matmul2d: MatMuls of 3-D and 4-D activations by a constant weight as 2-D GEMMs.

Matches  y = x @ W (+ b)  where x has rank 3 or 4, W is a constant (K, N) matrix and b, when
present, is a row vector: shape (N,) or (1, N), or (1, .., 1, N) no longer than x's rank, or a
single element.

Emits  Reshape(x, (-1, K)) -> Gemm(., W, b) -> Reshape(., x.shape[:-1] + (N,)). A Gemm with C = b
computes the same sum as MatMul then Add. The shape back is a constant when at most one outer dim
is symbolic (it becomes -1), else it is computed at run time by Shape/Slice/Concat.

Never fires when W is not a constant or not 2-D (x @ activation, batched weights), x's rank is
unknown or not 3 or 4 (a 2-D MatMul is a GEMM already), a static dim of x is 0, x is not a
float tensor, or x or W is a DequantizeLinear's output (a QAT graph: the Reshape would stand
between the DQ and the GEMM TensorRT runs in int8/fp8). A bias that varies along other dims (an
(S, N) positional term) stays an Add after the Gemm.

Attributes checked: MatMul and Add have none (a Gemm's transA/transB/alpha/beta never occur
in the match; the emitted Gemm uses the defaults, which compute x @ W + b).
"""

from __future__ import annotations

import numpy as np

from onnxpass.graph import Graph, dequantized
from onnxpass.passes.base import PatternPass, register
from onnxpass.passes.dims import reshape_to
from onnxpass.passes.normalize import FLOATS
from onnxpass.patterns import (
    Alt,
    Match,
    MatchFailure,
    PatternOps,
    PValue,
    RewriteBuilder,
    Rule,
    Var,
)


def matmul_pattern(op: PatternOps, x: PValue, w: PValue) -> PValue:
    mm = op.MatMul(x, w)
    return Alt(bias=op.Add(mm, Var("bias")), plain=mm, tag="bias")


def check_matmul(m: Match) -> MatchFailure | None:
    if (bad := check_not_dequantized(m, ("x", "w"))) is not None:
        return bad
    if not m.is_const("w") or m.rank("w") != 2:
        return MatchFailure("the weight is not a constant 2-D matrix")
    xs = m.shape("x")
    if xs is None or len(xs) not in (3, 4):
        return MatchFailure(f"x has rank {None if xs is None else len(xs)}, not 3 or 4")
    if 0 in xs:
        return MatchFailure(f"x has an empty dim: {xs}")
    if m.dtype("x") not in FLOATS or m.dtype("w") != m.dtype("x"):
        return MatchFailure("x and the weight are not float tensors of one type")
    if m.tag("bias") == "bias":
        return check_bias(m, "bias", len(xs), int(m.shape("w")[1]))  # type: ignore[index]
    return None


def check_not_dequantized(m: Match, names: tuple[str, ...] = ("x",)) -> MatchFailure | None:
    """No input in ``names`` is a DequantizeLinear's output: rewriting the GEMM around it would
    put a Reshape between the DQ and its GEMM (or fold a DQ'd weight), so TensorRT would no
    longer run it quantized as exported."""
    for name in names:
        if dequantized(m.graph, m[name]):
            return MatchFailure(f"{name} comes from DequantizeLinear (a Q/DQ graph): a Reshape "
                                f"to 2-D would separate the Q/DQ from its GEMM")
    return None


def check_bias(m: Match, name: str, rank: int, n: int) -> MatchFailure | None:
    """``name`` broadcasts as a Gemm's C over the rows of an (M, n) product."""
    bs = m.shape(name)
    if bs is None or m.dtype(name) != m.dtype("x"):
        return MatchFailure(f"{name} has unknown shape or another dtype")
    if len(bs) > rank or any(d != 1 for d in bs[:-1]) or (bs and bs[-1] not in (1, n)):
        return MatchFailure(f"{name} of shape {bs} is not a row vector of {n} elements")
    if len(bs) > 2 and not m.is_const(name):
        return MatchFailure(f"{name} of shape {bs} needs a Reshape to become a Gemm's C")
    return None


def gemm_2d(op: RewriteBuilder, m: Match, bias: str | None) -> str:
    """Reshape(x, (-1, K)) -> Gemm(., W, bias): the (M, N) product of the match's x and w."""
    k = m.shape("w")[0]  # type: ignore[index]
    x2 = op.Reshape(m["x"], op.const(np.array([-1, k], dtype=np.int64), hint="shape"))
    if bias is not None and (m.rank(bias) or 0) > 2:
        bias = op.const(m.const(bias).reshape(-1), hint="bias")
    elif bias is not None:
        bias = m[bias]
    return op.Gemm(x2, m["w"], bias)


def emit(op: RewriteBuilder, m: Match, graph: Graph) -> str:
    y2 = gemm_2d(op, m, "bias" if m.tag("bias") == "bias" else None)
    outer, n = len(m.shape("x")) - 1, m.shape("w")[1]  # type: ignore[arg-type, index]
    return reshape_to(op, graph, y2, m["x"], outer, [n])  # type: ignore[list-item]


@register
class MatMul2D(PatternPass):
    name = "matmul2d"
    summary = "3-D/4-D MatMul by a constant weight (+ bias) -> Reshape, Gemm, Reshape"

    def rules(self) -> list[Rule]:
        return [Rule(name="matmul2d", pattern=matmul_pattern, check=check_matmul,
                     rewrite=lambda op, m: emit(op, m, m.graph))]
