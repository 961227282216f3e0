"""RotaryEmbeddingPlugin: NumPy reference and Triton kernel.

x (B, H, S, D) is viewed as B*H*S rows of D; row r = (b, h, s) reads its cos and sin from
(b or 0, s or 0) of the (B or 1, S or 1, RD/2) caches, the 0 where a cache dim is 1. A program
rotates ROWS rows: the RD/2 pairs of each held in registers (the interleaved pairs loaded and
stored as one contiguous (ROWS, RD) tile, reshaped to (ROWS, RD/2, 2) and split: a tile of
(ROWS, RD/2, 2) loaded directly moves 2 elements a load and ran at 0.79x a copy), computed in
float32 whatever the input dtype, rounded once when stored; dims RD.. of a partial rotation are
copied.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxpass.plugins.kernels.base import (
    Case,
    KernelSpec,
    Launch,
    cdiv,
    jit,
    next_pow2,
    prod,
    register_kernel,
    static,
    tl,
)


def reference(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, *, interleaved: int,
              rotary_embedding_dim: int) -> tuple[np.ndarray]:
    rd = rotary_embedding_dim or x.shape[-1]
    x64 = x.astype(np.float64)
    c = cos.astype(np.float64)[:, None]  # (B or 1, 1, S or 1, RD/2) against (B, H, S, RD/2)
    s = sin.astype(np.float64)[:, None]
    first = slice(0, rd, 2) if interleaved else slice(0, rd // 2)
    second = slice(1, rd, 2) if interleaved else slice(rd // 2, rd)
    x1, x2 = x64[..., first], x64[..., second]
    y = x64.copy()
    y[..., first] = c * x1 - s * x2
    y[..., second] = s * x1 + c * x2
    return (y.astype(x.dtype),)


@jit
def rotary_kernel(x_ptr, cos_ptr, sin_ptr, n_rows, seq, rows_per_batch, cos_batch, cos_seq,
                  y_ptr, D: tl.constexpr, HALF: tl.constexpr, INTERLEAVED: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    b = rows // rows_per_batch
    s = rows % seq
    cache_row = (tl.where(cos_batch == 1, 0, b) * cos_seq + tl.where(cos_seq == 1, 0, s))
    cache = cache_row.to(tl.int64)[:, None] * HALF
    k = tl.arange(0, BLOCK_H)
    m = row_ok[:, None] & (k < HALF)[None, :]
    base = rows.to(tl.int64)[:, None] * D
    c = tl.load(cos_ptr + cache + k[None, :], mask=m, other=0.0).to(tl.float32)
    sn = tl.load(sin_ptr + cache + k[None, :], mask=m, other=0.0).to(tl.float32)
    out = y_ptr.dtype.element_ty
    if INTERLEAVED:  # pairs (2k, 2k + 1): a (ROWS, 2 BLOCK_H) tile, reshaped and split in two
        j = tl.arange(0, 2 * BLOCK_H)
        m2 = row_ok[:, None] & (j < 2 * HALF)[None, :]
        offs = base + j[None, :]
        x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        x1, x2 = tl.split(tl.reshape(x, (ROWS, BLOCK_H, 2)))
        y = tl.reshape(tl.join(c * x1 - sn * x2, sn * x1 + c * x2), (ROWS, 2 * BLOCK_H))
        tl.store(y_ptr + offs, y.to(out), mask=m2)
    else:  # the two halves
        x1 = tl.load(x_ptr + base + k[None, :], mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + base + HALF + k[None, :], mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + base + k[None, :], (c * x1 - sn * x2).to(out), mask=m)
        tl.store(y_ptr + base + HALF + k[None, :], (sn * x1 + c * x2).to(out), mask=m)
    if D > 2 * HALF:  # a partial rotation: the other dims pass through
        p = 2 * HALF + tl.arange(0, BLOCK_P)
        pm = row_ok[:, None] & (p < D)[None, :]
        v = tl.load(x_ptr + base + p[None, :], mask=pm, other=0.0)
        tl.store(y_ptr + base + p[None, :], v, mask=pm)


def plan(shapes: list[list[Any]], dtypes: list[str], attrs: dict[str, Any],
         rows_per_program: int | None = None, num_warps: int | None = None) -> Launch:
    x, cos = shapes[0], shapes[1]
    if len(x) != 4 or len(cos) != 3:
        raise ValueError(f"RotaryEmbeddingPlugin: x {x} must be (B, H, S, D), cos {cos} "
                         f"(B or 1, S or 1, rotary_embedding_dim / 2)")
    d = static(x[3])
    if d is None:
        raise ValueError("RotaryEmbeddingPlugin: the head size must be known when compiled")
    rd = attrs["rotary_embedding_dim"] or d
    half = rd // 2
    if rd % 2 or rd > d or static(cos[2]) not in (None, half):
        raise ValueError(f"RotaryEmbeddingPlugin: rotary_embedding_dim {rd} for head size {d} "
                         f"and caches {cos}")
    rows = prod(x[:3])
    block_h, block_p = next_pow2(max(half, 1)), next_pow2(max(d - rd, 1))
    # about 1024 elements and 4 warps a program: 8 rows of Llama-7B's 128, the best of
    # bench/probe_kernels.py's sweep on the H200 for both forms (float16 and bfloat16)
    r = rows_per_program or max(1, 1024 // next_pow2(2 * block_h + (block_p if d > rd else 0)))
    return Launch(rotary_kernel, grid=(cdiv(rows, r),),
                  args=(rows, x[2], prod(x[1:3]), cos[0], cos[1]),
                  constexprs={"D": d, "HALF": half, "INTERLEAVED": bool(attrs["interleaved"]),
                              "BLOCK_H": block_h, "BLOCK_P": block_p, "ROWS": r},
                  num_warps=num_warps or 4)


# Launch configs bench/plugins.py --configs times at every bench shape (plan keyword arguments).
CONFIGS = [{"rows_per_program": r, "num_warps": w} for r in (1, 2, 4, 8, 16) for w in (2, 4, 8)]


KERNELS = register_kernel(KernelSpec(
    plugin="RotaryEmbeddingPlugin",
    reference=reference,
    plan=plan,
    cases=(
        Case("llama", ((2, 4, 12, 8), (1, 12, 4), (1, 12, 4)), {}),
        Case("neox_partial", ((2, 2, 12, 16), (1, 12, 4), (1, 12, 4)),
             {"rotary_embedding_dim": 8}),
        Case("gptj_interleaved", ((2, 2, 5, 16), (2, 5, 4), (2, 5, 4)),
             {"interleaved": 1, "rotary_embedding_dim": 8}),
        Case("odd_half", ((3, 1, 7, 10), (3, 1, 3), (3, 1, 3)), {"rotary_embedding_dim": 6}),
        Case("full_interleaved", ((1, 3, 4, 64), (1, 4, 32), (1, 4, 32)), {"interleaved": 1}),
    ),
))
