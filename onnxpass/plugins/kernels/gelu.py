"""GeluPlugin: NumPy reference and Triton kernel.

Elementwise over any shape, computed in float32 whatever the input dtype. The tanh form is
written x * sigmoid(2u), which equals 0.5 x (1 + tanh(u)) and needs one exp.

The erf form: a float32 output uses libdevice's erff (about 1 ulp). A float16 or bfloat16
output uses Abramowitz and Stegun's 7.1.26, erf(|x|) = 1 - t (a1 + t (a2 + ... a5 t)) e^-x^2
with t = 1 / (1 + p |x|): absolute error below 1.5e-7, under a thousandth of float16's rounding
step at GELU's scale, in a third of the instructions and without erff's branch on |x| (its two
polynomials both ran in every warp of mixed inputs: the kernel was compute-bound at 0.72x of a
copy on the H200, the tanh form at 1.0x).
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
    helper,
    jit,
    prod,
    register_kernel,
    static_factor,
    tl,
)

BLOCK = 4096  # the best of CONFIGS at every bench shape on the H200 (bench/plugins.py --configs)


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


@helper
def _erf_as(z):
    """erf by Abramowitz and Stegun 7.1.26 (absolute error < 1.5e-7), branch-free."""
    a = tl.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    p = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                        + t * 1.061405429))))
    r = 1.0 - p * tl.exp(-a * a)
    return tl.where(z < 0, -r, r)


@jit
def gelu_kernel(x_ptr, n, y_ptr, APPROXIMATE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if APPROXIMATE:
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        y = x / (1.0 + tl.exp(-2.0 * u))
    elif y_ptr.dtype.element_ty == tl.float32:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    else:  # float16, bfloat16 (module doc)
        y = 0.5 * x * (1.0 + _erf_as(x * 0.7071067811865476))
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
