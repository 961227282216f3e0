"""AttentionPlugin: NumPy reference and a Triton flash-attention kernel.

y = softmax(scale * q k^T + mask) v over (B, H, S, d) x (B, Hkv, L, d) -> (B, H, S, dv), where
Hkv divides H: query head h reads key/value head h // (H / Hkv) (MHA: Hkv = H; grouped-query
attention; MQA: Hkv = 1; K and V may differ in Hkv). ``mask`` is additive, broadcastable to
(B, H, S, L) (a scalar, a key-padding (B, 1, 1, L), a causal (S, L), a bias (H, S, L), ...).

``attention_fwd``: one program computes BLOCK_M rows of one (b, h): it walks the keys in tiles
of BLOCK_N with an online softmax (running max and sum in float32), so the S x L scores never
reach memory. q k^T and p v are tensor-core dots in the input dtype with float32 accumulation
(``ieee`` dots for float32, not tf32). The mask is read through broadcast strides (0 where its
dim is 1): once for a scalar, one vector per key tile for a key-padding mask, a tile otherwise.

Masked rows, as the ONNX function and the original model compute them:
- z = scale * q k^T + mask is formed in float32 in natural units and rounded there, as the
  model's float32 Add rounds it; log2(e) is applied only to z - max (a score of finfo.min
  times log2(e) would overflow to -inf). So a row masked by finfo.min everywhere has equal
  scores, a uniform softmax and the output mean(v); one masked by -10000 gives softmax(z) with
  z rounded at 10000's ulp, like the model's.
- A row whose scores are all -inf (a fully masked -inf mask, Where(mask, scores, -inf)) keeps
  its running max at 0 instead of -inf, so its probabilities and sum are 0 and its output 0:
  the function's guard Where(IsNaN(p), 0, p) turns that row's NaN into 0.
- A +inf or NaN score makes the row's sum NaN; its output is 0, as the guard gives.

float16: p is rounded to float16 for the p v dot, as in the ONNX function (which casts p to
q's dtype before its MatMul) and torch's flash kernels: an absolute error up to about
2^-11 max|v|, hence the float16 tolerance (1e-2, 2e-3) against the float64 reference.
``plan(..., p_split=True)`` adds a second dot with p's rounding error (p = hi + lo): float32
accuracy, 7 to 30% slower on an H100 (docs/plugins.md).

The softmax runs in float32 for any ``softmax_precision`` the exporters write (FLOAT, FLOAT16,
BFLOAT16: never less precise than asked); DOUBLE has no kernel. d and dv must be known when
compiled (they are constexprs), and so must H and Hkv where they differ (the head group is a
constexpr; Hkv = 1 may go with a symbolic H); B, S and L may be symbolic. A mask dim broadcasts
when it is a static 1; a symbolic one must equal the scores' dim at run time. Launch defaults
come from float16 sweeps on an H100 and an H200 (bench/plugins.py --configs,
bench/probe_kernels.py): 32-row blocks for up to 128 queries (cross-attention), and no key
bounds (EVEN) where BLOCK_N divides a static L. They stay within 48 KB of shared memory, except
the JIT-only config below (``max_shared``: aot_kernel passes 48 KB).

``has_mask`` 0 (a model without a mask; the mask input is ignored): float16 and bfloat16 fold
scale and log2(e) into one FMA on raw scores, ``exp2(s c - m c)``, and read no mask (``FOLD``);
float32 keeps natural units, where the fold's rounding (about |m| 2^-23 relative in p) would
exceed its tolerance. At 1024 or more queries, JIT launches take 128x64 tiles in 3 stages
(64 KB at d = 64): 0.94x SDPA at 16x8x4096x64 on the H200, where 40 KB gave 0.86x.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto

from onnxpass.plugins.kernels.base import (
    Case,
    KernelSpec,
    Launch,
    cdiv,
    jit,
    next_pow2,
    np_dtype,
    prod,
    register_kernel,
    static,
    tl,
)


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, *, scale: float,
              softmax_precision: int, has_mask: int = 1) -> tuple[np.ndarray]:
    mask = mask if has_mask else np.zeros((), mask.dtype)
    q64 = q.astype(np.float64)
    k64, v64 = (_repeat_heads(a.astype(np.float64), q.shape[1]) for a in (k, v))
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf: a NaN row, made 0 below
        s = scale * q64 @ np.swapaxes(k64, -1, -2) + mask.astype(np.float64)
        # the model's float32 Add rounds z: at a mask of -10000 or finfo.min that decides p
        s = s.astype(np.float32).astype(np.float64)
        m = s.max(axis=-1, keepdims=True)
        m = np.where(np.isneginf(m), 0.0, m)  # a fully masked row: every p is 0
        p = np.exp(s - m)
        total = p.sum(axis=-1, keepdims=True)
        p = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    return ((p @ v64).astype(q.dtype),)


def _repeat_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """x's Hkv heads, each repeated H / Hkv times in a row: query head h reads x's head
    h // (H / Hkv), as ONNX Attention and HF's repeat_kv group them."""
    if heads % x.shape[1]:
        raise ValueError(f"AttentionPlugin: {x.shape[1]} key/value heads do not divide {heads}")
    return np.repeat(x, heads // x.shape[1], axis=1)


@jit
def attention_fwd(q_ptr, k_ptr, v_ptr, m_ptr, H, S, L, msb, msh, mss, y_ptr,
                  SCALE: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, K_GROUP: tl.constexpr, V_GROUP: tl.constexpr,
                  MASK: tl.constexpr, MASK_L: tl.constexpr, PRECISION: tl.constexpr,
                  P_SPLIT: tl.constexpr, EVEN: tl.constexpr, FOLD: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < S
    dq, dv, cols = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV), tl.arange(0, BLOCK_N)
    dq_ok, dv_ok = dq < D, dv < DV
    # (b, h)'s key and value heads: b * Hkv + h // group is bh // group (group divides H);
    # group 0: one head shared by all (H may be symbolic)
    k_bh = b if K_GROUP == 0 else bh // K_GROUP
    v_bh = b if V_GROUP == 0 else bh // V_GROUP
    q_base = q_ptr + bh.to(tl.int64) * S * D
    k_base = k_ptr + k_bh.to(tl.int64) * L * D
    v_base = v_ptr + v_bh.to(tl.int64) * L * DV
    m_base = m_ptr + b.to(tl.int64) * msb + h.to(tl.int64) * msh
    q = tl.load(q_base + rows[:, None] * D + dq[None, :],
                mask=row_ok[:, None] & dq_ok[None, :], other=0.0)
    ninf = float("-inf")
    LOG2E = 1.4426950408889634
    m_i = tl.full([BLOCK_M], ninf, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    if MASK == 1:  # a scalar
        bias = tl.load(m_ptr).to(tl.float32)
    for start in range(0, L, BLOCK_N):
        n = start + cols
        n_ok = n < L
        if EVEN:  # BLOCK_N divides L: no key bounds
            k = tl.load(k_base + n[None, :] * D + dq[:, None], mask=dq_ok[:, None], other=0.0)
            v = tl.load(v_base + n[:, None] * DV + dv[None, :], mask=dv_ok[None, :], other=0.0)
        else:
            k = tl.load(k_base + n[None, :] * D + dq[:, None],
                        mask=n_ok[None, :] & dq_ok[:, None], other=0.0)
            v = tl.load(v_base + n[:, None] * DV + dv[None, :],
                        mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
        s = tl.dot(q, k, input_precision=PRECISION)
        if FOLD:  # no mask and SCALE > 0: the max of raw scores; scale and log2(e) in one FMA
            if not EVEN:
                s = tl.where(n_ok[None, :], s, ninf)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2((m_i - m_new) * (SCALE * LOG2E))
            p = tl.math.exp2(s * (SCALE * LOG2E) - (m_new * (SCALE * LOG2E))[:, None])
        else:
            s = s * SCALE
            # natural units: the mask is added as the model adds it (finfo.min stays finite);
            # keys past L get -inf through the mask term, not a select on the whole tile
            if MASK == 0:  # no mask, and a scale FOLD does not take
                if not EVEN:
                    s = tl.where(n_ok[None, :], s, ninf)
            elif MASK == 1:
                # MASK is a constexpr: bias is bound above whenever MASK == 1
                if EVEN:
                    s += bias  # pyright: ignore[reportPossiblyUnboundVariable]
                else:
                    s += tl.where(n_ok, bias, ninf)[None, :]  # pyright: ignore[reportPossiblyUnboundVariable]
            elif MASK == 2:  # the same for every query row (a key-padding mask): one vector
                if EVEN:
                    s += tl.load(m_base + n * MASK_L).to(tl.float32)[None, :]
                else:
                    s += tl.load(m_base + n * MASK_L, mask=n_ok, other=ninf
                                 ).to(tl.float32)[None, :]
            elif EVEN:
                s += tl.load(m_base + rows[:, None] * mss + n[None, :] * MASK_L,
                             mask=row_ok[:, None], other=ninf).to(tl.float32)
            else:
                s += tl.load(m_base + rows[:, None] * mss + n[None, :] * MASK_L,
                             mask=row_ok[:, None] & n_ok[None, :], other=ninf).to(tl.float32)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == ninf, 0.0, m_new)
            alpha = tl.math.exp2((m_i - m_safe) * LOG2E)
            p = tl.math.exp2((s - m_safe[:, None]) * LOG2E)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        p_hi = p.to(v.dtype)
        if P_SPLIT:  # p = p_hi + p_lo: p v as accurate as with p in float32
            acc = tl.dot((p - p_hi.to(tl.float32)).to(v.dtype), v, acc)
        acc = tl.dot(p_hi, v, acc, input_precision=PRECISION)
        m_i = m_new
    # l_i = 0: all scores -inf (acc is 0); l_i NaN: a +inf or NaN score: 0, as the guard gives
    y = tl.where((l_i == l_i)[:, None], acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None], 0.0)
    tl.store(y_ptr + bh.to(tl.int64) * S * DV + rows[:, None] * DV + dv[None, :],
             y.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])


def plan(shapes: list[list[Any]], dtypes: list[str], attrs: dict[str, Any],
         block_m: int | None = None, block_n: int | None = None, num_warps: int | None = None,
         p_split: bool = False, num_stages: int | None = None,
         max_shared: int | None = None) -> Launch:
    q, k, v, mask = shapes
    if len(q) != 4 or len(k) != 4 or len(v) != 4 or len(mask) > 4:
        raise ValueError(f"AttentionPlugin: q, k, v must be 4-d and mask at most 4-d: {shapes}")
    if attrs["softmax_precision"] == TensorProto.DOUBLE:
        raise ValueError("AttentionPlugin: no kernel computes the softmax in float64")
    d, dv = static(q[3]), static(v[3])
    if d is None or dv is None:
        raise ValueError("AttentionPlugin: head sizes d and dv must be static")
    B, H, S, L = q[0], q[1], q[2], k[2]
    m4 = [1] * (4 - len(mask)) + list(mask)
    strides, acc = [], 1
    for dim in reversed(m4):  # contiguous strides, 0 where the mask broadcasts
        strides.insert(0, 0 if static(dim) == 1 else acc)
        acc = prod([acc, dim])
    fp32 = dtypes[0] == "float32"
    scale = float(attrs["scale"])
    no_mask = not attrs.get("has_mask", 1)
    mask_kind = (0 if no_mask else 1 if all(static(x) == 1 for x in m4)
                 else 2 if static(m4[2]) == 1 else 3)
    # the fold rounds s c - m c, not z = s scale as the model does: about |m| 2^-23 relative
    # error in p, over float32's tolerance at scores in the hundreds, far under float16's
    # rounding of p (2^-11) for the dots
    fold = no_mask and scale > 0 and not fp32
    long = (static(S) or 0) >= 1024 and max(d, dv) <= 64 and not fp32
    # no mask, long sequences: 128x64 tiles in 3 stages (64 KB of shared memory at d = 64):
    # 0.97x SDPA at 16x8x4096x64 on the H200 where 64x64 in 2 stages (40 KB) gave 0.86-0.90x
    # (bench/probe_kernels.py --parts attention). JIT launches only: an AOT kernel stays
    # within 48 KB (max_shared, see aot_kernel)
    big = fold and long and (max_shared is None or max_shared >= 64 * 1024)
    # few queries (a decoder's cross-attention: DETR's 100 x 850) split into 32-row blocks,
    # more programs to fill the SMs: 1.6x SDPA there on the H200 where 64 rows gave 0.83x
    s_static, l_static = static(S), static(L)
    short = s_static is not None and s_static <= 128 and not fp32
    bm = block_m or (32 if short else 128 if big else 64)
    wide = short and max(d, dv) <= 32 and mask_kind != 3  # a mask tile too: over 48 KB
    bn = block_n or (128 if wide else 64 if long or short else 32)
    stages = num_stages or (1 if fp32 else 3 if wide or big
                            else 2 if long or short or max(d, dv) > 64 else 3)
    even = l_static is not None and l_static % bn == 0
    return Launch(
        attention_fwd, grid=(cdiv(S, bm), prod([B, H])),
        args=(H, S, L, strides[0], strides[1], strides[2]),
        constexprs={"SCALE": scale, "D": d, "DV": dv,
                    "BLOCK_D": max(16, next_pow2(d)), "BLOCK_DV": max(16, next_pow2(dv)),
                    "BLOCK_M": bm, "BLOCK_N": bn,
                    "K_GROUP": _group(H, k[1]), "V_GROUP": _group(H, v[1]),
                    "MASK": mask_kind, "MASK_L": 0 if static(m4[3]) == 1 else 1,
                    "PRECISION": "ieee" if fp32 else "tf32", "P_SPLIT": p_split and not fp32,
                    "EVEN": even, "FOLD": fold},
        num_warps=num_warps or (2 if bm <= 32 else 4 if bm <= 64 else 8), num_stages=stages)


def _group(heads: Any, kv_heads: Any) -> int:
    """Query heads per key/value head (0: one head serves all, whatever H is at run time)."""
    h, hkv = static(heads), static(kv_heads)
    if hkv == 1:
        return 0
    if h is None or hkv is None:  # symbolic: taken to be H (the pass emits GQA with known heads)
        return 1
    if h % hkv:
        raise ValueError(f"AttentionPlugin: {hkv} key/value heads do not divide {h} query heads")
    return h // hkv


def _masked(kind: str, shapes: Any = None) -> Any:
    """q, k, v from N(0, 1) and a mask of this kind (with -inf entries), in the case's shapes."""
    shapes = shapes or CASE_SHAPES[kind]

    def make(dtype: str, rng: np.random.Generator) -> list[np.ndarray]:
        (B, H, S, _), (_, _, L, _) = shapes[:2]
        t = np_dtype(dtype)
        q, k, v = (rng.standard_normal(s).astype(t) for s in shapes[:3])
        if kind in ("padding", "gqa_padding"):  # keys past each batch's length; rows in batch 1
            m = np.zeros((B, 1, S, L))
            for b in range(B):
                m[b, :, :, L - 3 * b - 2:] = -np.inf
            m[1, 0, 2, :] = -np.inf   # a fully masked row
            m[1, 0, 4, ::2] = -np.inf
        elif kind == "key_padding":  # (B, 1, 1, L): batch 1's last 4 keys masked
            m = np.zeros((B, 1, 1, L))
            m[1, ..., -4:] = -np.inf
        elif kind == "causal":
            m = np.triu(np.full((S, L), -np.inf), 1)
        else:  # per-head bias, one head fully masked
            m = rng.standard_normal((H, S, L))
            m[1] = -np.inf
        return [q, k, v, m.astype(t)]
    return make


EVEN_SHAPES = {
    "key_padding": ((2, 2, 19, 32), (2, 2, 128, 32), (2, 2, 128, 32), (2, 1, 1, 128)),
    "bias_mqa": ((2, 3, 5, 16), (2, 1, 128, 16), (2, 1, 128, 16), (3, 5, 128)),
}

CASE_SHAPES = {
    "padding": ((2, 2, 7, 8), (2, 2, 9, 8), (2, 2, 9, 12), (2, 1, 7, 9)),
    "key_padding": ((2, 2, 19, 32), (2, 2, 75, 32), (2, 2, 75, 32), (2, 1, 1, 75)),
    "causal": ((1, 2, 70, 32), (1, 2, 70, 32), (1, 2, 70, 32), (70, 70)),
    "bias_mqa": ((2, 3, 5, 16), (2, 1, 130, 16), (2, 1, 130, 16), (3, 5, 130)),
    # grouped-query attention: 4 query heads per key/value head; 2 per head, with a bias per
    # query head (one fully masked) that must follow the query head, not the key/value head
    "gqa_padding": ((2, 8, 7, 16), (2, 2, 9, 16), (2, 2, 9, 12), (2, 1, 7, 9)),
    "gqa_bias": ((2, 6, 5, 16), (2, 3, 40, 16), (2, 3, 40, 8), (6, 5, 40)),
}

KERNELS = register_kernel(KernelSpec(
    plugin="AttentionPlugin",
    reference=reference,
    plan=plan,
    dtypes=("float32", "float16"),  # Triton's interpreter cannot run bfloat16 dots: untested
    tolerances={"float16": (1e-2, 2e-3)},
    cases=(
        Case("no_mask", ((2, 3, 5, 16), (2, 3, 6, 16), (2, 3, 6, 16), ()), {"scale": 0.25},
             make=lambda dt, rng: [*(rng.standard_normal(s).astype(np_dtype(dt)) for s in
                                     ((2, 3, 5, 16), (2, 3, 6, 16), (2, 3, 6, 16))),
                                   np.zeros((), np_dtype(dt))]),
        *(Case(kind, s, {"scale": float(s[0][3]) ** -0.5}, make=_masked(kind))
          for kind, s in CASE_SHAPES.items()),
        # 128 keys: a whole number of key tiles (the plan's EVEN loop, no key bounds)
        Case("no_mask_even", ((2, 2, 9, 32), (2, 2, 128, 32), (2, 2, 128, 32), ()),
             {"scale": 32 ** -0.5},
             make=lambda dt, rng: [*(rng.standard_normal(s).astype(np_dtype(dt)) for s in
                                     ((2, 2, 9, 32), (2, 2, 128, 32), (2, 2, 128, 32))),
                                   np.zeros((), np_dtype(dt))]),
        *(Case(f"{kind}_even", s, {"scale": float(s[0][3]) ** -0.5}, make=_masked(kind, s))
          for kind, s in EVEN_SHAPES.items()),
        # has_mask 0: the mask input (here a causal one) is ignored; 130 keys and 128 (EVEN)
        *(Case(f"has_mask_0_{n}", ((2, 2, 70, 32), (2, 2, n, 32), (2, 2, n, 32), (70, n)),
               {"scale": 32 ** -0.5, "has_mask": 0},
               make=_masked("causal", ((2, 2, 70, 32), (2, 2, n, 32), (2, 2, n, 32))))
          for n in (130, 128)),
    ),
))
