"""MaskedSoftmaxPlugin: NumPy reference and Triton kernels.

The masked scores z are formed by the formula of the mode, in float32 whatever the scores'
dtype (ONNX Runtime, too, runs the function's float16 nodes in float32): the mask's values as
numbers, ``fill`` as a float32 (finfo(float32).min stays finite for float16 scores). So a fully
masked row gives what the function gives (softmax of x, a uniform row, or NaN, by mode and
fill), and mode 0 with fill = -inf is NaN wherever 0 * -inf is. The softmax of z is taken in
float32 (float64 in the reference).

The output has the broadcast shape of x and mask (rank <= 5); it is viewed as rows of its last
dim n, and each of x and mask is read through strides that are 0 along its broadcast dims, so a
compact [B, 1, 1, n] key-padding mask is read as it is.

- ``masked_softmax_rows`` (n known when compiled, up to 16384): ROWS whole rows per program.
- ``masked_softmax_looped`` (n known only at run time, or longer): one row per program, an online
  max and sum in one pass, the output in a second.
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
    static_factor,
    tl,
)

MAX_ROW = 16384
LEAD = 4  # leading (non-softmax) dims the kernels index


def reference(x: np.ndarray, mask: np.ndarray, *, mode: int, fill: float, invert: int
              ) -> tuple[np.ndarray]:
    x32, m = x.astype(np.float32), mask.astype(np.float32)
    f = np.float32(fill)
    keep = (mask != 0) ^ bool(invert)
    with np.errstate(invalid="ignore", over="ignore"):
        if mode == 0:
            z = x32 + (m if invert else 1 - m) * f
        elif mode == 1:
            z = np.where(keep, x32, f)
        else:
            z = x32 + np.where(keep, np.float32(0), f)
        z64 = z.astype(np.float64)
        e = np.exp(z64 - z64.max(axis=-1, keepdims=True))
        return ((e / e.sum(axis=-1, keepdims=True)).astype(x.dtype),)


@helper
def _masked(x, mk, FILL: tl.constexpr, MODE: tl.constexpr, INVERT: tl.constexpr):
    """z from float32 scores x and the mask's values."""
    if MODE == 0:
        w = mk.to(tl.float32)
        if not INVERT:
            w = 1.0 - w
        z = x + w * FILL
    elif MODE == 1:
        z = tl.where((mk != 0) ^ INVERT, x, FILL)
    else:
        z = x + tl.where((mk != 0) ^ INVERT, 0.0, FILL)
    return z


@helper
def _row_offsets(r, d1, d2, d3, s0, s1, s2, s3, ALIGN: tl.constexpr):
    """Offset of row r (an index over the output's leading dims d0..d3) for strides s0..s3,
    each a multiple of ALIGN. The index arithmetic is int32 (r < n_rows, an int32)."""
    i3 = r % d3
    r = r // d3
    i2 = r % d2
    r = r // d2
    i1 = r % d1
    if ALIGN > 1:  # (never 1 then: the JIT would have made it a constant)
        s0, s1 = tl.multiple_of(s0, ALIGN), tl.multiple_of(s1, ALIGN)
        s2, s3 = tl.multiple_of(s2, ALIGN), tl.multiple_of(s3, ALIGN)
    return ((r // d1).to(tl.int64) * s0 + i1.to(tl.int64) * s1 + i2.to(tl.int64) * s2
            + i3.to(tl.int64) * s3)


@jit
def masked_softmax_rows(x_ptr, mask_ptr, n_rows, d1, d2, d3, xs0, xs1, xs2, xs3,
                        ms0, ms1, ms2, ms3, y_ptr, FILL: tl.constexpr, MODE: tl.constexpr,
                        INVERT: tl.constexpr, N: tl.constexpr, XSN: tl.constexpr,
                        MSN: tl.constexpr, XA: tl.constexpr, MA: tl.constexpr,
                        BLOCK_N: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    n = N
    ok = (rows < n_rows)[:, None] & (cols < n)[None, :]
    xo = _row_offsets(rows, d1, d2, d3, xs0, xs1, xs2, xs3, XA)[:, None] + cols[None, :] * XSN
    mo = _row_offsets(rows, d1, d2, d3, ms0, ms1, ms2, ms3, MA)[:, None] + cols[None, :] * MSN
    x = tl.load(x_ptr + xo, mask=ok, other=0.0)
    mk = tl.load(mask_ptr + mo, mask=ok, other=0)
    z = _masked(x.to(tl.float32), mk, FILL, MODE, INVERT)
    z = tl.where(ok, z, float("-inf"))
    # Triton's annotations type tensor[...] with one constexpr, not a tuple of slices and None
    e = tl.exp(z - tl.max(z, axis=1)[:, None])  # pyright: ignore[reportCallIssue, reportArgumentType]
    y = e / tl.sum(e, axis=1)[:, None]  # pyright: ignore[reportArgumentType]
    yo = rows.to(tl.int64)[:, None] * n + cols[None, :]
    tl.store(y_ptr + yo, y.to(y_ptr.dtype.element_ty), mask=ok)


@jit
def masked_softmax_looped(x_ptr, mask_ptr, n_rows, n, d1, d2, d3, xs0, xs1, xs2, xs3,
                          ms0, ms1, ms2, ms3, y_ptr, FILL: tl.constexpr, MODE: tl.constexpr,
                          INVERT: tl.constexpr, XSN: tl.constexpr, MSN: tl.constexpr,
                          XA: tl.constexpr, MA: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    xo = _row_offsets(row, d1, d2, d3, xs0, xs1, xs2, xs3, XA)
    mo = _row_offsets(row, d1, d2, d3, ms0, ms1, ms2, ms3, MA)
    xsn, msn = XSN, MSN
    cols = tl.arange(0, BLOCK_N)
    mx = tl.full([BLOCK_N], float("-inf"), tl.float32)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, n, BLOCK_N):
        ok = start + cols < n
        x = tl.load(x_ptr + xo + (start + cols) * xsn, mask=ok, other=0.0)
        mk = tl.load(mask_ptr + mo + (start + cols) * msn, mask=ok, other=0)
        z = tl.where(ok, _masked(x.to(tl.float32), mk, FILL, MODE, INVERT),
                     float("-inf"))
        new = tl.maximum(mx, z)
        # lanes still at -inf keep a zero sum (exp(-inf - -inf) would be NaN)
        acc = tl.where(new == float("-inf"), 0.0, acc * tl.exp(mx - new) + tl.exp(z - new))
        mx = tl.where(z != z, z, new)  # a NaN score stays NaN, as in the reference
    top = tl.max(mx, axis=0)
    total = tl.sum(acc * tl.exp(mx - top), axis=0)
    for start in range(0, n, BLOCK_N):
        ok = start + cols < n
        x = tl.load(x_ptr + xo + (start + cols) * xsn, mask=ok, other=0.0)
        mk = tl.load(mask_ptr + mo + (start + cols) * msn, mask=ok, other=0)
        z = _masked(x.to(tl.float32), mk, FILL, MODE, INVERT)
        y = tl.exp(z - top) / total
        out = row.to(tl.int64) * n + start + cols
        tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=ok)


def _strides(shape: list[Any], out: list[Any]) -> tuple[list[Any], int]:
    """Element strides of a contiguous tensor of ``shape`` indexed by ``out``'s index: 0
    along dims where it has a static 1 and the output does not; and a power of two (<= 16)
    that divides every stride of the leading dims (so row starts vectorize as the JIT's would)."""
    strides, s, align = [], 1, 16
    for d, o in zip(reversed(shape), reversed(out)):
        strides.append(0 if static(d) == 1 and static(o) != 1 else s)
        if strides[-1] and len(strides) > 1:
            f = static_factor([s])
            align = min(align, f & -f)
        s = prod([s, d])
    return strides[::-1], align


def plan(shapes: list[list[Any]], dtypes: list[str], attrs: dict[str, Any],
         rows_per_program: int | None = None, num_warps: int | None = None) -> Launch:
    from onnxpass.plugins.masked_softmax import MASKED_SOFTMAX

    out = MASKED_SOFTMAX.output_shapes(shapes, attrs)[0]
    if len(out) > LEAD + 1:
        raise ValueError(f"MaskedSoftmaxPlugin: rank {len(out)} > {LEAD + 1}")
    x, mask = ([1] * (len(out) - len(s)) + list(s) for s in shapes)
    pad = LEAD + 1 - len(out)
    out, x, mask = ([1] * pad + v for v in (out, x, mask))
    (xs, xa), (ms, ma) = _strides(x, out), _strides(mask, out)
    n, n_rows = out[-1], prod(out[:-1])
    # the last-dim strides (1, or 0 when broadcast) are constexprs: the rows vectorize in AOT
    # PTX too (Triton's JIT specializes int arguments equal to 1, TensorRT's int32s are not)
    c = {"FILL": attrs["fill"], "MODE": attrs["mode"], "INVERT": bool(attrs["invert"]),
         "XSN": xs[-1], "MSN": ms[-1], "XA": xa, "MA": ma}
    strides = (*xs[:LEAD], *ms[:LEAD])
    cols = static(n)
    if cols is None or cols > MAX_ROW:
        return Launch(masked_softmax_looped, grid=(n_rows,),
                      args=(n_rows, n, *out[1:LEAD], *strides),
                      constexprs={**c, "BLOCK_N": 1024}, num_warps=num_warps or 4)
    block = next_pow2(cols)
    # float16 sweep on an H100 (docs/plugins.md): 2 warps, 4096 elements per program at n = 128
    # and 2048 at n = 1000 were best
    r = rows_per_program or max(1, (4096 if block <= 256 else 2048) // block)
    w = num_warps or (2 if block <= 1024 and block * r <= 4096 else 4 if block * r <= 2048
                      else 8 if block * r <= 8192 else 16)
    return Launch(masked_softmax_rows, grid=(cdiv(n_rows, r),),
                  args=(n_rows, *out[1:LEAD], *strides),
                  constexprs={**c, "N": cols, "BLOCK_N": block, "ROWS": r}, num_warps=w)


def _make(x_shape: tuple[int, ...], mask_shape: tuple[int, ...], mask_dtype: str,
          full_rows: bool = True) -> Any:
    """x ~ N(0, 1) in the dtype under test; a random mask with, if ``full_rows``, the first
    row fully masked and the second fully kept (for invert = 0)."""
    def make(dtype: str, rng: np.random.Generator) -> list[np.ndarray]:
        x = rng.standard_normal(x_shape).astype(np_dtype(dtype))
        m = rng.random(mask_shape) < 0.6
        if full_rows:
            m.reshape(-1, mask_shape[-1])[:2] = [[False], [True]]
        return [x, m.astype(mask_dtype)]
    return make


# Launch configs bench/plugins.py --configs times at every bench shape (plan keyword arguments).
CONFIGS = [{"rows_per_program": r, "num_warps": w} for r in (1, 2, 4, 8) for w in (4, 8)]


KERNELS = register_kernel(KernelSpec(
    plugin="MaskedSoftmaxPlugin",
    reference=reference,
    plan=plan,
    cases=(
        Case("where_ninf_key_pad", ((2, 3, 5, 37), (2, 1, 1, 37)), {"mode": 1},
             make=_make((2, 3, 5, 37), (2, 1, 1, 37), "bool")),
        Case("where_finite_full", ((2, 3, 7, 19), (2, 3, 7, 19)), {"mode": 1, "fill": -1e4},
             make=_make((2, 3, 7, 19), (2, 3, 7, 19), "bool")),
        Case("additive_min_int64", ((2, 2, 3, 33), (2, 1, 1, 33)),
             {"mode": 0, "fill": -3.4028234663852886e38},
             make=_make((2, 2, 3, 33), (2, 1, 1, 33), "int64")),
        Case("additive_invert_i32", ((3, 4, 21), (3, 1, 21)),
             {"mode": 0, "fill": -10000.0, "invert": 1},
             make=_make((3, 4, 21), (3, 1, 21), "int32")),
        Case("where_add_ninf_i8", ((2, 5, 6, 17), (1, 1, 6, 17)), {"mode": 2},
             make=_make((2, 5, 6, 17), (1, 1, 6, 17), "int8")),
        Case("where_add_finite_inv", ((2, 3, 29), (2, 1, 29)),
             {"mode": 2, "fill": -1e4, "invert": 1}, make=_make((2, 3, 29), (2, 1, 29), "bool")),
        Case("x_broadcast", ((2, 1, 1, 23), (2, 3, 4, 23)), {"mode": 1},
             make=_make((2, 1, 1, 23), (2, 3, 4, 23), "bool")),
        Case("looped", ((2, 1, 20000), (2, 1, 20000)), {"mode": 1},
             make=_make((2, 1, 20000), (2, 1, 20000), "bool")),
    ),
))
