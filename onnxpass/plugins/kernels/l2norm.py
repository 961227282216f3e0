"""L2NormPlugin: NumPy reference and Triton kernels.

x is viewed as [outer, n, inner] with n the normalized axis. The sum of squares is taken in
float32 whatever the input dtype; y = x / denom is a true division, so an all-zero row with
mode 0 and eps = 0 gives NaN, and mode 2 clips an infinite norm to FLT_MAX, as the function does.

- ``l2norm_rows`` (inner = 1, n known when compiled, up to 16384): ROWS whole rows per program,
  in registers: x read once, y written once.
- ``l2norm_looped`` (inner = 1, n known only at run time, or longer): SPLIT programs a row (1;
  4 where there are fewer than SPLIT_BELOW rows), in chunks. Each sums the whole row's squares
  in the same order (so every part of a row divides by the same bits), then writes its part:
  x read twice (SPLIT times for the sums, the repeats mostly from L2). One launch, and no
  program waits for another: a plugin's enqueue is one kernel.
- ``l2norm_strided`` (inner > 1, e.g. axis 1 of NCHW): a program takes BLOCK_I neighbouring
  columns of one outer index and walks n in chunks, x read twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxpass.plugins.kernels.base import (
    Case,
    KernelSpec,
    Launch,
    cdiv,
    helper,
    jit,
    next_pow2,
    np_dtype,
    prod,
    register_kernel,
    static,
    tl,
)

MAX_ROW = 16384
# rows (static) under which a long row is split over programs: one program a row would keep
# fewer than half the H200's 132 SMs busy
SPLIT_BELOW = 66
FLT_MAX = float(np.finfo(np.float32).max)


def reference(x: np.ndarray, *, eps: float, axis: int, mode: int) -> tuple[np.ndarray]:
    x64 = x.astype(np.float64)
    ss = (x64 * x64).sum(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        if mode == 0:
            denom = np.sqrt(ss + eps)
        else:
            denom = np.maximum(np.sqrt(ss), eps)
            if mode == 2:
                denom = np.minimum(denom, FLT_MAX)
        return ((x64 / denom).astype(x.dtype),)


@helper
def _denom(ss, EPS: tl.constexpr, MODE: tl.constexpr):
    if MODE == 0:
        d = tl.sqrt(ss + EPS)
    else:
        d = tl.maximum(tl.sqrt(ss), EPS)
        if MODE == 2:
            d = tl.minimum(d, 3.4028234663852886e38)
    return d


@jit
def l2norm_rows(x_ptr, n_rows, n_cols, y_ptr, EPS: tl.constexpr, MODE: tl.constexpr,
                BLOCK_N: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    d = _denom(tl.sum(x * x, axis=1), EPS, MODE)
    tl.store(y_ptr + offs, (x / d[:, None]).to(y_ptr.dtype.element_ty), mask=mask)


@jit
def l2norm_looped(x_ptr, n_rows, n_cols, y_ptr, EPS: tl.constexpr, MODE: tl.constexpr,
                  BLOCK_N: tl.constexpr, SPLIT: tl.constexpr):
    # program (row, s) sums the squares of the whole row, in the same order as the row's other
    # programs (the same bits for every part of a row; their loads of a line at about the same
    # time are one read from memory), then writes part s of SPLIT. Parts start at multiples of
    # BLOCK_N; the last ones may be short or empty.
    row = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        x = tl.load(x_ptr + row + start + cols, mask=start + cols < n_cols, other=0.0)
        acc += x.to(tl.float32) * x.to(tl.float32)
    d = _denom(tl.sum(acc, axis=0), EPS, MODE)
    # SPLIT 1, the whole row: no part bounds from program_id(1) (MST++ b1 on the H200: 23.2
    # against 24.0 us in float16, 24.2 against 25.9 in bfloat16 with them)
    if SPLIT == 1:
        lo = 0
        hi = n_cols
    else:
        part = tl.cdiv(tl.cdiv(n_cols, SPLIT), BLOCK_N) * BLOCK_N
        lo = tl.program_id(1) * part
        hi = tl.minimum(lo + part, n_cols)
    for start in range(lo, hi, BLOCK_N):
        m = start + cols < n_cols
        x = tl.load(x_ptr + row + start + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + row + start + cols, (x / d).to(y_ptr.dtype.element_ty), mask=m)


@jit
def l2norm_strided(x_ptr, n, inner, y_ptr, EPS: tl.constexpr, MODE: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_I: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    base = tl.program_id(1).to(tl.int64) * n * inner + cols[None, :]
    ks = tl.arange(0, BLOCK_K)
    col_ok = (cols < inner)[None, :]
    acc = tl.zeros([BLOCK_K, BLOCK_I], dtype=tl.float32)
    for start in range(0, n, BLOCK_K):
        m = ((start + ks) < n)[:, None] & col_ok
        x = tl.load(x_ptr + base + (start + ks)[:, None] * inner, mask=m, other=0.0)
        acc += x.to(tl.float32) * x.to(tl.float32)
    d = _denom(tl.sum(acc, axis=0), EPS, MODE)
    for start in range(0, n, BLOCK_K):
        m = ((start + ks) < n)[:, None] & col_ok
        offs = base + (start + ks)[:, None] * inner
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, (x / d[None, :]).to(y_ptr.dtype.element_ty), mask=m)


def plan(shapes: list[list[Any]], dtypes: list[str], attrs: dict[str, Any],
         rows_per_program: int | None = None, num_warps: int | None = None,
         block_n: int | None = None, split: int | None = None) -> Launch:
    x = shapes[0]
    axis = attrs["axis"] % len(x)
    outer, n, inner = prod(x[:axis]), x[axis], prod(x[axis + 1:])
    c = {"EPS": attrs["eps"], "MODE": attrs["mode"]}
    if static(inner) != 1:
        bi = min(64, next_pow2(static(inner) or 64))
        return Launch(l2norm_strided, grid=(cdiv(inner, bi), outer), args=(n, inner),
                      constexprs={**c, "BLOCK_K": max(1, 2048 // bi), "BLOCK_I": bi},
                      num_warps=num_warps or 4)
    cols = static(n)
    if cols is None or cols > MAX_ROW:
        # one program a row, 32 warps of 16-byte loads in flight: MST++'s 31 rows of 246784
        # (a row per SM) ran 2.6x faster than 8 warps of 2048 on the H200. Fewer than
        # SPLIT_BELOW rows (static): 4 programs a row, 17.1 against 23.1 us there, where 8
        # parts took 17.1-17.4, 2 parts 18.8, 16 warps 22-33 (bench/probe_kernels.py --parts grid)
        rows = static(outer)
        if split is None:
            split = 4 if rows is not None and rows < SPLIT_BELOW else 1
        return Launch(l2norm_looped, grid=(outer, split), args=(outer, n),
                      constexprs={**c, "BLOCK_N": block_n or 8192, "SPLIT": split},
                      num_warps=num_warps or 32)
    block = next_pow2(cols)
    r = rows_per_program or max(1, 2048 // block)
    w = num_warps or (4 if block * r <= 2048 else 8 if block * r <= 8192 else 16)
    return Launch(l2norm_rows, grid=(cdiv(outer, r),), args=(outer, n),
                  constexprs={**c, "BLOCK_N": block, "ROWS": r}, num_warps=w)


def _zero_row(dtype: str, rng: np.random.Generator) -> list[np.ndarray]:
    x = rng.standard_normal((3, 5, 19)).astype(np.float64)
    x[1, 2] = 0.0
    return [x.astype(np_dtype(dtype))]


# Launch configs bench/plugins.py --configs times at every bench shape (plan keyword arguments).
CONFIGS = [{"rows_per_program": r, "num_warps": w} for r in (1, 2, 4) for w in (4, 8, 16)] + [
    {"block_n": b, "num_warps": w, "split": 1} for b in (4096, 8192, 16384) for w in (8, 16, 32)
] + [{"split": s, "block_n": b, "num_warps": 32} for s in (2, 4, 8) for b in (8192, 16384)]


KERNELS = register_kernel(KernelSpec(
    plugin="L2NormPlugin",
    reference=reference,
    plan=plan,
    cases=(
        Case("mst_last_axis", ((2, 3, 7, 40),), {"eps": 1e-12, "mode": 2}),
        Case("eps_added", ((3, 5, 37),), {"eps": 1e-6, "mode": 0}),
        Case("max_zero_row", ((3, 5, 19),), {"eps": 1e-12, "mode": 1}, make=_zero_row),
        Case("no_eps_zero_row", ((3, 5, 19),), {"eps": 0.0, "mode": 0}, make=_zero_row),
        Case("channels_nchw", ((2, 6, 5, 7),), {"axis": 1, "eps": 1e-12, "mode": 2}),
        Case("split", ((3, 20001),), {"eps": 1e-12, "mode": 1}),
        Case("looped", ((70, 16400),), {"eps": 1e-12, "mode": 0}),
    ),
))
