"""Mask2PosPlugin: NumPy reference and Triton kernel.

The mask (bool or integer, its values used as numbers as the function's Cast does) is viewed as
[outer, n, inner] with n the counted axis. A program takes BLOCK_I neighbouring columns of one
outer index and walks n twice in chunks of BLOCK_N: first the totals c[last], then the running
count (``tl.cumsum`` per chunk plus the carry of the chunks before), written normalized. Counts
are float32, exact for the integer counts of any real mask, as in the function.
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


def reference(mask: np.ndarray, *, axis: int, offset: float, eps: float, scale: float,
              invert: int) -> tuple[np.ndarray]:
    v = mask.astype(np.float64)
    v = 1.0 - v if invert else v
    c = np.cumsum(v, axis=axis)
    last = np.take(c, [-1], axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (((c - offset) / (last + eps) * scale).astype(np.float32),)


@jit
def mask2pos_kernel(mask_ptr, n, inner, pos_ptr, OFFSET: tl.constexpr, EPS: tl.constexpr,
                    SCALE: tl.constexpr, INVERT: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_I: tl.constexpr, ONE_BLOCK: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    base = tl.program_id(1).to(tl.int64) * n * inner + cols[None, :]
    ks = tl.arange(0, BLOCK_N)
    col_ok = (cols < inner)[None, :]
    if ONE_BLOCK:  # n <= BLOCK_N, known when compiled: one load gives the total and the sums
        ok = (ks < n)[:, None] & col_ok
        offs = base + ks[:, None] * inner
        v = tl.load(mask_ptr + offs, mask=ok, other=0).to(tl.float32)
        if INVERT:
            v = tl.where(ok, 1.0 - v, 0.0)
        den = (tl.sum(v, axis=0) + EPS).to(tl.float32)
        tl.store(pos_ptr + offs, (tl.cumsum(v, axis=0) - OFFSET) / den[None, :] * SCALE, mask=ok)
        return
    total = tl.zeros([BLOCK_I], dtype=tl.float32)
    for start in range(0, n, BLOCK_N):
        ok = ((start + ks) < n)[:, None] & col_ok
        v = tl.load(mask_ptr + base + (start + ks)[:, None] * inner, mask=ok, other=0)
        v = v.to(tl.float32)
        if INVERT:
            v = tl.where(ok, 1.0 - v, 0.0)
        total += tl.sum(v, axis=0)
    den = total + EPS
    carry = tl.zeros([BLOCK_I], dtype=tl.float32)
    for start in range(0, n, BLOCK_N):
        ok = ((start + ks) < n)[:, None] & col_ok
        offs = base + (start + ks)[:, None] * inner
        v = tl.load(mask_ptr + offs, mask=ok, other=0).to(tl.float32)
        if INVERT:
            v = tl.where(ok, 1.0 - v, 0.0)
        c = tl.cumsum(v, axis=0) + carry[None, :]
        carry += tl.sum(v, axis=0)
        tl.store(pos_ptr + offs, (c - OFFSET) / den[None, :] * SCALE, mask=ok)


def plan(shapes: list[list[Any]], dtypes: list[str], attrs: dict[str, Any],
         num_warps: int = 4) -> Launch:
    m = shapes[0]
    axis = attrs["axis"] % len(m)
    outer, n, inner = prod(m[:axis]), m[axis], prod(m[axis + 1:])
    bi = min(64, next_pow2(static(inner) or 64))
    bn = min(max(1, 2048 // bi), next_pow2(static(n) or 2048))
    return Launch(mask2pos_kernel, grid=(cdiv(inner, bi), outer), args=(n, inner),
                  constexprs={"OFFSET": attrs["offset"], "EPS": attrs["eps"],
                              "SCALE": attrs["scale"], "INVERT": bool(attrs["invert"]),
                              "BLOCK_N": bn, "BLOCK_I": bi,
                              # DETR's y_embed (25 of 34 columns): 2.45 us in two passes, 2.35
                              # for Inductor's one (H200)
                              "ONE_BLOCK": (static(n) or bn + 1) <= bn},
                  num_warps=num_warps)


def _mask(shape: tuple[int, ...], dtype: str, pad_rows: int = 0) -> Any:
    """A DETR-like padding mask (True = padding at the bottom/right of each image) or a random
    one; ``dtype`` of the make function is the output's (float32)."""
    def make(_: str, rng: np.random.Generator) -> list[np.ndarray]:
        m = rng.random(shape) < 0.3
        if pad_rows:
            m[...] = False
            m[0, -pad_rows:, :] = True
            m[-1, :, -pad_rows - 1:] = True
        return [m.astype(dtype)]
    return make


TWO_PI = 6.283185307179586
KERNELS = register_kernel(KernelSpec(
    plugin="Mask2PosPlugin",
    reference=reference,
    plan=plan,
    dtypes=("float32",),
    cases=(
        Case("detr_y", ((2, 25, 34),),
             {"axis": 1, "offset": 0.0, "eps": 1e-6, "scale": TWO_PI, "invert": 1},
             make=_mask((2, 25, 34), "bool", pad_rows=3)),
        Case("detr_x", ((2, 25, 34),),
             {"axis": 2, "offset": 0.0, "eps": 1e-6, "scale": TWO_PI, "invert": 1},
             make=_mask((2, 25, 34), "bool", pad_rows=3)),
        Case("anchor_offset_i64", ((3, 7, 9),), {"axis": 1, "offset": 0.5},
             make=_mask((3, 7, 9), "int64")),
        Case("last_axis_i32_long", ((2, 3000),), {"axis": 1, "eps": 1e-6, "scale": 2.0},
             make=_mask((2, 3000), "int32")),
        Case("leading_dims_i8", ((2, 3, 5, 4, 6),), {"axis": 2, "invert": 1, "eps": 1e-6},
             make=_mask((2, 3, 5, 4, 6), "int8")),
    ),
))
