"""RMSNormPlugin: NumPy reference and Triton kernels.

x is viewed as [rows, cols] with cols = prod(x.shape[axis:]); gamma holds cols values. The mean
of squares is accumulated in float32 whatever the input dtype (float32, float16, bfloat16), so
float16 rows with values above 256 do not overflow; y = x * rstd * gamma is formed in float32
and rounded once. An all-zero row gives 0 for epsilon > 0 and NaN (0 * inf) for epsilon = 0, as
the reference's 0 / 0 does.

- ``rmsnorm_rows`` (cols known when compiled, up to 16384): a program normalizes ROWS whole rows
  held in registers (one row from 2048 columns up: a Llama-7B row of 4096), so x is read once
  and y written once.
- ``rmsnorm_looped`` (cols known only at run time, or longer): a program walks one row in
  chunks, reading it twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxpass.plugins.kernels.base import (
    Case,
    KernelSpec,
    Launch,
    jit,
    register_kernel,
    tl,
)
from onnxpass.plugins.kernels.layernorm import row_plan, row_tile  # the launch plan: LayerNorm's


def reference(x: np.ndarray, gamma: np.ndarray, *, epsilon: float, axis: int
              ) -> tuple[np.ndarray]:
    x64 = x.astype(np.float64)
    axes = tuple(range(axis % x.ndim, x.ndim))
    with np.errstate(invalid="ignore", divide="ignore"):
        y = x64 / np.sqrt((x64 * x64).mean(axis=axes, keepdims=True) + epsilon)
    return ((y * gamma.astype(np.float64)).astype(x.dtype),)


@jit
def rmsnorm_rows(x_ptr, gamma_ptr, n_rows, n_cols, y_ptr,
                 EPS: tl.constexpr, N: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr,
                 EVEN_ROWS: tl.constexpr, I64: tl.constexpr):
    # layernorm_rows' form: N = n_cols known when compiled, no row mask when ROWS divides the
    # rows, int32 offsets where the tensor allows, rsqrt
    cols, col_ok, mask, offs = row_tile(n_rows, N, BLOCK_N, ROWS, EVEN_ROWS, I64)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / N + EPS)
    g = tl.load(gamma_ptr + cols, mask=col_ok, other=0.0,
                eviction_policy="evict_last").to(tl.float32)
    y = x * rstd[:, None] * g[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@jit
def rmsnorm_looped(x_ptr, gamma_ptr, n_rows, n_cols, y_ptr,
                   EPS: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        m = start + cols < n_cols
        x = tl.load(x_ptr + row + start + cols, mask=m, other=0.0).to(tl.float32)
        acc += x * x
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / n_cols + EPS)
    for start in range(0, n_cols, BLOCK_N):
        m = start + cols < n_cols
        x = tl.load(x_ptr + row + start + cols, mask=m, other=0.0).to(tl.float32)
        g = tl.load(gamma_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + row + start + cols, (x * rstd * g).to(y_ptr.dtype.element_ty), mask=m)


def plan(shapes: list[list[Any]], dtypes: list[str], attrs: dict[str, Any],
         rows_per_program: int | None = None, num_warps: int | None = None) -> Launch:
    return row_plan("RMSNormPlugin", ("gamma",), rmsnorm_rows, rmsnorm_looped, shapes, attrs,
                    rows_per_program, num_warps)


# Launch configs bench/plugins.py --configs times at every bench shape (plan keyword arguments).
CONFIGS = [{"rows_per_program": r, "num_warps": w} for r in (1, 2, 4, 8) for w in (4, 8)]


KERNELS = register_kernel(KernelSpec(
    plugin="RMSNormPlugin",
    reference=reference,
    plan=plan,
    cases=(
        Case("llama", ((2, 5, 64), (64,)), {"epsilon": 1e-6}),
        Case("odd_cols", ((3, 7, 37), (37,)), {"epsilon": 1e-5}),
        Case("4d_two_axes", ((2, 3, 4, 6), (4, 6)), {"axis": -2}),
        Case("one_row", ((48,), (48,)), {"axis": 0}),
        Case("looped", ((3, 20000), (20000,)), {"epsilon": 1e-6}),
    ),
))
