"""AddBiasTransposePlugin: NumPy reference and Triton kernel.

x [B, S, N] + bias [N], split into H heads of d = N / H and written as [B, H, S, d]
(perm 0 2 1 3) or [B, H, d, S] (perm 0 2 3 1). The sum is taken in float32 and rounded once
(the function adds in x's dtype: the same rounding). N is known when compiled (it is the
model's hidden size); B and S may be symbolic. A program takes BLOCK_S positions of one head of
one batch: its loads are contiguous along d and its stores along d (0 2 1 3) or along S
(0 2 3 1; Triton transposes the tile through shared memory).
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
    register_kernel,
    static,
    tl,
)

PERMS = {(0, 2, 1, 3): False, (0, 2, 3, 1): True}  # perm -> K transposed


def reference(x: np.ndarray, bias: np.ndarray, *, num_heads: int, perm: list[int]
              ) -> tuple[np.ndarray]:
    b, s, n = x.shape
    y = (x.astype(np.float64) + bias.astype(np.float64)).astype(x.dtype)
    return (np.ascontiguousarray(y.reshape(b, s, num_heads, n // num_heads).transpose(perm)),)


@jit
def add_bias_transpose_kernel(x_ptr, bias_ptr, seq, y_ptr, H: tl.constexpr, D: tl.constexpr,
                              BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                              TRANSPOSE_K: tl.constexpr):
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    j = tl.arange(0, BLOCK_D)
    ok = (s < seq)[:, None] & (j < D)[None, :]
    x = tl.load(x_ptr + (b * seq + s)[:, None] * (H * D) + h * D + j[None, :], mask=ok,
                other=0.0)
    bias = tl.load(bias_ptr + h * D + j, mask=j < D, other=0.0)
    y = (x.to(tl.float32) + bias.to(tl.float32)[None, :]).to(y_ptr.dtype.element_ty)
    head = (b * H + h) * seq * D
    if TRANSPOSE_K:
        tl.store(y_ptr + head + j[None, :] * seq + s[:, None], y, mask=ok)
    else:
        tl.store(y_ptr + head + s[:, None] * D + j[None, :], y, mask=ok)


def plan(shapes: list[list[Any]], dtypes: list[str], attrs: dict[str, Any],
         block_s: int | None = None, num_warps: int | None = None) -> Launch:
    b, s, n = shapes[0]
    perm, h = tuple(attrs["perm"]), attrs["num_heads"]
    if perm not in PERMS:
        raise ValueError(f"AddBiasTransposePlugin: perm {perm} is not one of {list(PERMS)}")
    if static(n) is None or static(n) % h:
        raise ValueError(f"AddBiasTransposePlugin: the hidden size must be static and a "
                         f"multiple of num_heads={h}, got {n}")
    d = static(n) // h
    bd = next_pow2(d)
    # K transposed: 4096-element tiles (the transpose goes through shared memory). Otherwise
    # about 1024: 16 positions at ViT-B/16's Q ran 11.66 us against 11.85 with 64, float16
    # (H200, bench/probe_kernels.py --parts pointwise)
    bs = block_s or max(16, (4096 if PERMS[perm] else 1024) // bd)
    return Launch(add_bias_transpose_kernel, grid=(cdiv(s, bs), h, b), args=(s,),
                  constexprs={"H": h, "D": d, "BLOCK_S": bs, "BLOCK_D": bd,
                              "TRANSPOSE_K": PERMS[perm]},
                  # K transposed: 8 warps, 14.5-14.7 us against 15.3-15.5 with 4 at ViT-B/16
                  # (float16 and bfloat16, two --configs runs on the H200)
                  num_warps=num_warps or (8 if PERMS[perm] else 4))


# Launch configs bench/plugins.py --configs times at every bench shape (plan keyword arguments).
CONFIGS = [{"block_s": b, "num_warps": w} for b in (16, 32, 64) for w in (4, 8)]


KERNELS = register_kernel(KernelSpec(
    plugin="AddBiasTransposePlugin",
    reference=reference,
    plan=plan,
    cases=(
        Case("vit_qkv", ((2, 7, 32), (32,)), {"num_heads": 4}),
        Case("k_transposed", ((2, 7, 32), (32,)), {"num_heads": 4, "perm": (0, 2, 3, 1)}),
        Case("odd_head_size", ((3, 19, 36), (36,)), {"num_heads": 3}),
        Case("odd_k_transposed", ((1, 37, 20), (20,)), {"num_heads": 1, "perm": (0, 2, 3, 1)}),
        Case("long_seq", ((1, 300, 24), (24,)), {"num_heads": 2}),
    ),
))
