"""LayerNormPlugin: NumPy reference and Triton kernels.

x is viewed as [rows, cols] with cols = prod(x.shape[axis:]); gamma and beta hold cols values.
Statistics are computed in float32 whatever the input dtype (float32, float16, bfloat16):
the mean first, then the variance as the mean of squared deviations (no E[x^2] - E[x]^2
cancellation).

Constant rows: ``layernorm_rows`` takes the plain float32 mean, as ONNX Runtime's and torch's
kernels do, so a constant row of value c gives beta only to about n ulp(c) / sqrt(epsilon) (a
float32 mean of 37 copies of 0.1 is not 0.1), the same bound the original model's ONNX function
has. Making it exact (the deviations' own mean and mean square in one more reduction) cost
1-11% on the H200 (bench/probe_kernels.py, variant ind_shift_joint) and made the kernel slower
than torch.compile's, so it is not done. ``layernorm_looped`` shifts by the row's first value
x0 (mean = x0 + mean(x - x0)): a constant row gives exactly beta there.

- ``layernorm_rows`` (cols known when compiled, up to 16384): a program normalizes ROWS whole
  rows held in registers, so x is read once and y written once. A static row count lets the
  launch drop the row mask (ROWS divides it) and use int32 offsets.
- ``layernorm_looped`` (cols known only at run time, or longer): a program walks one row in
  chunks, reading it three times.
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
    prod,
    register_kernel,
    static,
    tl,
)

MAX_ROW = 16384
# programs a launch of layernorm_rows should have at least (8 on each of an H200's 132 SMs):
# DETR's 6800 rows of 256 ran 3.9 us in 850 programs of 8 rows, 3.6 in 1700 of 4
MIN_PROGRAMS = 1024


def reference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, epsilon: float, axis: int
              ) -> tuple[np.ndarray]:
    x64 = x.astype(np.float64)
    axes = tuple(range(axis % x.ndim, x.ndim))
    d = x64 - x64.mean(axis=axes, keepdims=True)
    var = (d * d).mean(axis=axes, keepdims=True)
    y = d / np.sqrt(var + epsilon) * gamma.astype(np.float64) + beta.astype(np.float64)
    return (y.astype(x.dtype),)


@helper
def row_tile(n_rows, N: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr,
             EVEN_ROWS: tl.constexpr, I64: tl.constexpr):
    """The (ROWS, BLOCK_N) tile of this program's rows: columns, their mask, the tile's mask
    (no row mask when ROWS divides the rows) and element offsets (int32 where they fit)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    if EVEN_ROWS:
        mask = (rows >= 0)[:, None] & col_ok[None, :]
    else:
        mask = (rows < n_rows)[:, None] & col_ok[None, :]
    if I64:
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    else:
        offs = rows[:, None] * N + cols[None, :]
    return cols, col_ok, mask, offs


@jit
def layernorm_rows(x_ptr, gamma_ptr, beta_ptr, n_rows, n_cols, y_ptr,
                   EPS: tl.constexpr, N: tl.constexpr, BLOCK_N: tl.constexpr,
                   ROWS: tl.constexpr, EVEN_ROWS: tl.constexpr, I64: tl.constexpr):
    # Inductor's form (bench/probe_kernels.py timed each detail on the H200): N (= n_cols)
    # known when compiled, no row mask when ROWS divides the rows (EVEN_ROWS), int32 offsets
    # where the tensor allows (I64 otherwise), rsqrt, and no shift of the mean
    cols, col_ok, mask, offs = row_tile(n_rows, N, BLOCK_N, ROWS, EVEN_ROWS, I64)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1, keep_dims=True) / N
    d = tl.where(mask, x - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(d * d, axis=1) / N + EPS)
    g = tl.load(gamma_ptr + cols, mask=col_ok, other=0.0,
                eviction_policy="evict_last").to(tl.float32)
    b = tl.load(beta_ptr + cols, mask=col_ok, other=0.0,
                eviction_policy="evict_last").to(tl.float32)
    y = d * rstd[:, None] * g[None, :] + b[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@jit
def layernorm_looped(x_ptr, gamma_ptr, beta_ptr, n_rows, n_cols, y_ptr,
                     EPS: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK_N)
    x0 = tl.load(x_ptr + row).to(tl.float32)  # shift: a constant row's mean is exactly x0
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        m = start + cols < n_cols
        x = tl.load(x_ptr + row + start + cols, mask=m, other=0.0).to(tl.float32)
        acc += tl.where(m, x - x0, 0.0)
    mean = x0 + tl.sum(acc, axis=0) / n_cols
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        m = start + cols < n_cols
        x = tl.load(x_ptr + row + start + cols, mask=m, other=0.0).to(tl.float32)
        d = tl.where(m, x - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / n_cols + EPS)
    for start in range(0, n_cols, BLOCK_N):
        m = start + cols < n_cols
        x = tl.load(x_ptr + row + start + cols, mask=m, other=0.0).to(tl.float32)
        g = tl.load(gamma_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
        b = tl.load(beta_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
        y = (x - mean) * rstd * g + b
        tl.store(y_ptr + row + start + cols, y.to(y_ptr.dtype.element_ty), mask=m)


def plan(shapes: list[list[Any]], dtypes: list[str], attrs: dict[str, Any],
         rows_per_program: int | None = None, num_warps: int | None = None) -> Launch:
    return row_plan("LayerNormPlugin", ("gamma", "beta"), layernorm_rows, layernorm_looped,
                    shapes, attrs, rows_per_program, num_warps)


def row_plan(plugin: str, params: tuple[str, ...], rows_kernel: Any, looped_kernel: Any,
             shapes: list[list[Any]], attrs: dict[str, Any], rows_per_program: int | None,
             num_warps: int | None) -> Launch:
    """The launch of a normalization over dims ``axis``.. of x (LayerNorm, RMSNorm): whole rows
    in registers, several per program for narrow rows; rows over MAX_ROW or of a length known
    only at run time loop. ``params`` (gamma, beta) must hold one value per row element."""
    x = shapes[0]
    axis = attrs["axis"] % len(x)
    rows, cols = prod(x[:axis]), prod(x[axis:])
    for name, shape in zip(params, shapes[1:]):
        n = static(prod(shape))
        if n is not None and static(cols) is not None and n != static(cols):
            raise ValueError(f"{plugin}: {name} has {n} values, the rows {static(cols)}")
    eps = attrs["epsilon"]
    n = static(cols)
    if n is None or n > MAX_ROW:
        return Launch(looped_kernel, grid=(rows,), args=(rows, cols),
                      constexprs={"EPS": eps, "BLOCK_N": 1024}, num_warps=num_warps or 4)
    block = next_pow2(n)
    r = rows_per_program or max(1, 2048 // block)
    m = static(rows)  # None: a dynamic batch; the kernel then masks rows and uses int64
    while rows_per_program is None and m is not None and r > 1 and cdiv(m, r) < MIN_PROGRAMS:
        r //= 2  # fewer rows a program, enough programs to hide the loads' latency
    # 2 warps for rows of up to 256 (MobileViT's 144 and 192: 12.4 against 13.4 us with 4 at
    # stage 3, float16, on the H200: bench/plugins.py --configs)
    w = num_warps or (2 if block <= 256 else 4 if block * r <= 2048
                      else 8 if block * r <= 8192 else 16)
    return Launch(rows_kernel, grid=(cdiv(rows, r),), args=(rows, cols),
                  constexprs={"EPS": eps, "N": n, "BLOCK_N": block, "ROWS": r,
                              "EVEN_ROWS": m is not None and m % r == 0,
                              "I64": m is None or (m + r) * n >= 2**31},
                  num_warps=w)


# Launch configs bench/plugins.py --configs times at every bench shape (plan keyword arguments).
# 1 warp: Inductor launches ViT's 768-wide rows one a program with 1 warp (bfloat16: 1.007x
# torch.compile where the default gave 0.993x, bench/probe_kernels.py --parts configs)
CONFIGS = [{"rows_per_program": r, "num_warps": w} for r in (1, 2, 4, 8) for w in (1, 2, 4, 8)]


KERNELS = register_kernel(KernelSpec(
    plugin="LayerNormPlugin",
    reference=reference,
    plan=plan,
    cases=(
        Case("vit", ((2, 5, 32), (32,), (32,)), {"epsilon": 1e-6}),
        Case("odd_cols", ((3, 7, 37), (37,), (37,)), {"epsilon": 1e-5}),
        Case("4d_two_axes", ((2, 3, 4, 6), (4, 6), (4, 6)), {"axis": -2}),
        Case("one_row", ((48,), (48,), (48,)), {"axis": 0}),
        Case("looped", ((3, 20000), (20000,), (20000,)), {"epsilon": 1e-5}),
    ),
))
