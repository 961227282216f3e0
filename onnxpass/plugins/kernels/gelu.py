"""GeluPlugin: NumPy reference and Triton kernel.

Elementwise over any shape, computed in float32 whatever the input dtype. The tanh form is
written x * sigmoid(2u), which equals 0.5 x (1 + tanh(u)) and needs one exp.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from onnxpass.plugins.kernels.base import (
    Case,
    KernelSpec,
    Launch,
    cdiv,
    jit,
    prod,
    register_kernel,
    static_factor,
    tl,
)

BLOCK = 2048


def reference(x: np.ndarray, *, approximate: int) -> tuple[np.ndarray]:
    x64 = x.astype(np.float64)
    if approximate:
        y = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
    else:
        y = 0.5 * x64 * (1 + _erf(x64 / math.sqrt(2)))
    return (y.astype(x.dtype),)


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
    except ImportError:
        return np.asarray(np.frompyfunc(math.erf, 1, 1)(x)).astype(np.float64)
    return erf(x)


@jit
def gelu_kernel(x_ptr, n, y_ptr, APPROXIMATE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if APPROXIMATE:
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        y = x / (1.0 + tl.exp(-2.0 * u))
    else:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def plan(shapes: list[list[Any]], dtypes: list[str], attrs: dict[str, Any],
         block: int = BLOCK, num_warps: int = 4) -> Launch:
    n = prod(shapes[0])
    return Launch(gelu_kernel, grid=(cdiv(n, block),), args=(n,),
                  constexprs={"APPROXIMATE": bool(attrs["approximate"]), "BLOCK": block},
                  num_warps=num_warps, aligned=(0,) if static_factor(shapes[0]) % 16 == 0 else ())


# Launch configs bench/plugins.py --configs times at every bench shape (plan keyword arguments).
CONFIGS = [{"block": b, "num_warps": w} for b in (1024, 2048, 4096, 8192) for w in (4, 8)]


KERNELS = register_kernel(KernelSpec(
    plugin="GeluPlugin",
    reference=reference,
    plan=plan,
    cases=(
        Case("erf", ((2, 5, 64),), {"approximate": 0}),
        Case("tanh", ((2, 5, 64),), {"approximate": 1}),
        Case("odd_size", ((3, 7, 37),), {"approximate": 0}),
        Case("odd_size_tanh", ((4099,),), {"approximate": 1}),
    ),
))
