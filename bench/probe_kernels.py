"""Probes: which detail of a kernel costs time against its peer, each variant timed in CUDA graphs
over rotating buffers (bench/timing.py) in the same run as the peer. GPU only:

    python bench/probe_kernels.py --out $OUT [--parts norms,attention,pointwise,ties,...]

- ties: bench/plugins.py's rows within about 1% of their peer, kernel, torch.compile and copy
  timed in alternating rounds;
- inductor: the config Inductor launches (read from its autotuner) and its own kernel
  launched by plain Triton, next to the compiled function and ours (LayerNorm at ViT
  bfloat16, AddBiasTranspose Q);
- grid: GRID_ROWS, a bench row's shipped plan and a grid of plan keyword arguments
  (LayerNorm's launch configs at ViT, L2Norm split over programs at MST++ b1), alternating
  rounds with both torch.compile forms and a copy;
- configs: LayerNorm with one warp (Inductor's config at ViT) at every LayerNorm shape, and
  AddBiasTranspose Q in Inductor's unmasked flat form;
- pointwise: rotary (both forms) and AddBiasTranspose Q against Inductor's kernels: flat
  walks, whole rows with a second load for each element's partner, the interleaved pairs
  loaded as one tile and split, or as 32-bit words;
- norms (with attention, the default parts): variants of the LayerNorm rows kernel (VARIANTS:
  the shift of the mean, int32 or int64 offsets, rsqrt, a static row count, no row mask) at
  bench/plugins.py's LayerNorm shapes, against torch.compile of the decomposed op;
- attention: the shipped kernel's launch configs (with their shared memory) and a variant
  kernel (FOLD: exp2(s c - m c) as one FMA on unscaled scores, valid without a mask; EVEN:
  whole key tiles) at DETR's cross-attention and 16x8x4096x64, against SDPA's default backend.

docs/plugins.md says what these measured and what the kernels took from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton
import triton.language as tl

from onnxpass.plugins.kernels.base import jit
from onnxpass.plugins.kernels.layernorm import row_tile


@triton.jit
def _add2(a0, a1, b0, b1):
    return a0 + b0, a1 + b1


@triton.jit
def ln_variant(x_ptr, g_ptr, b_ptr, n_rows, y_ptr, EPS: tl.constexpr, N: tl.constexpr,
               BLOCK_N: tl.constexpr, ROWS: tl.constexpr, SHIFT: tl.constexpr,
               I64: tl.constexpr, RSQRT: tl.constexpr, NROWS: tl.constexpr,
               EVEN_ROWS: tl.constexpr = False):
    if NROWS > 0:
        nr = NROWS
    else:
        nr = n_rows
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    row_ok = rows < nr
    if EVEN_ROWS:
        mask = (rows >= 0)[:, None] & col_ok[None, :]
    else:
        mask = row_ok[:, None] & col_ok[None, :]
    if I64:
        base = rows.to(tl.int64) * N
    else:
        base = rows * N
    offs = base[:, None] + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if SHIFT == 1:
        x0 = tl.load(x_ptr + base, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        mean = x0 + tl.sum(tl.where(mask, x - x0, 0.0), axis=1, keep_dims=True) / N
    elif SHIFT == 2:
        x0 = tl.sum(tl.where(cols[None, :] == 0, x, 0.0), axis=1, keep_dims=True)
        mean = x0 + tl.sum(tl.where(mask, x - x0, 0.0), axis=1, keep_dims=True) / N
    elif SHIFT == 4:  # d from the plain mean m1; its mean c and mean square in one reduction
        m1 = tl.sum(x, axis=1, keep_dims=True) / N
        d1 = tl.where(mask, x - m1, 0.0)
        s1, s2 = tl.reduce((d1, d1 * d1), 1, _add2, keep_dims=True)
        c = s1 / N
        mean = m1 + c
    elif SHIFT == 3:  # the mean corrected by the mean deviation from it
        m1 = tl.sum(x, axis=1, keep_dims=True) / N
        mean = m1 + tl.sum(tl.where(mask, x - m1, 0.0), axis=1, keep_dims=True) / N
    else:
        mean = tl.sum(x, axis=1, keep_dims=True) / N
    if SHIFT == 4:
        d = d1 - c
        var = tl.sum(s2, axis=1) / N - tl.sum(c * c, axis=1)
    else:
        d = tl.where(mask, x - mean, 0.0)
        var = tl.sum(d * d, axis=1) / N
    if RSQRT:
        rstd = tl.rsqrt(var + EPS)
    else:
        rstd = 1.0 / tl.sqrt(var + EPS)
    g = tl.load(g_ptr + cols, mask=col_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)
    y = d * rstd[:, None] * g[None, :] + b[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def attn_variant(q_ptr, k_ptr, v_ptr, m_ptr, H, S, L, y_ptr, SCALE: tl.constexpr,
                 D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 MASK: tl.constexpr, FOLD: tl.constexpr, EVEN: tl.constexpr,
                 WS: tl.constexpr):
    # MASK 0: none; 2: key padding (B, 1, 1, L). FOLD: exp2(s * c - m * c) as one FMA (no
    # mask only). EVEN: L % BLOCK_N == 0, no key bounds.
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b = bh // H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < S
    dq, cols = tl.arange(0, D), tl.arange(0, BLOCK_N)
    q_base = q_ptr + bh.to(tl.int64) * S * D
    k_base = k_ptr + bh.to(tl.int64) * L * D
    v_base = v_ptr + bh.to(tl.int64) * L * D
    q = tl.load(q_base + rows[:, None] * D + dq[None, :], mask=row_ok[:, None], other=0.0)
    ninf = float("-inf")
    m_i = tl.full([BLOCK_M], ninf, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    C: tl.constexpr = SCALE * 1.4426950408889634
    for start in tl.range(0, L, BLOCK_N, warp_specialize=WS):
        n = start + cols
        if EVEN:
            k = tl.load(k_base + n[None, :] * D + dq[:, None])
            v = tl.load(v_base + n[:, None] * D + dq[None, :])
        else:
            k = tl.load(k_base + n[None, :] * D + dq[:, None], mask=(n < L)[None, :], other=0.0)
            v = tl.load(v_base + n[:, None] * D + dq[None, :], mask=(n < L)[:, None], other=0.0)
        s = tl.dot(q, k)
        if FOLD:
            if not EVEN:
                s = tl.where((n < L)[None, :], s, ninf)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2((m_i - m_new) * C)
            p = tl.math.exp2(s * C - (m_new * C)[:, None])
        else:
            s = s * SCALE
            if MASK == 2:
                s += tl.load(m_ptr + b * L + n, mask=n < L, other=ninf).to(tl.float32)[None, :]
            elif not EVEN:
                s = tl.where((n < L)[None, :], s, ninf)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == ninf, 0.0, m_new)
            alpha = tl.math.exp2((m_i - m_safe) * 1.4426950408889634)
            p = tl.math.exp2((s - m_safe[:, None]) * 1.4426950408889634)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    y = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(y_ptr + bh.to(tl.int64) * S * D + rows[:, None] * D + dq[None, :],
             y.to(y_ptr.dtype.element_ty), mask=row_ok[:, None])


def probe_attention(say, t0, parts_att=("cross", "4096"), shipped=True):
    import torch
    import torch.nn.functional as F

    from bench.plugins import ATTENTION_CASES, attention_inputs
    from bench.timing import graph_stats, rotations_for
    from onnxpass.plugins import get_plugin
    from onnxpass.plugins.kernels import attention as att

    out = []
    for label, q, k, mask in ATTENTION_CASES:
        if not any(x in label for x in parts_att):
            continue
        ins = attention_inputs(q, k, mask, "float16")
        scale = q[-1] ** -0.5
        values = get_plugin("AttentionPlugin").attr_values(
            {"scale": scale, "has_mask": int(mask is not None)})
        shapes, dts = [list(t.shape) for t in ins], ["float16"] * 4
        y = torch.empty(*q[:-1], k[-1], device="cuda", dtype=torch.float16)
        nbytes = sum(t.numel() * t.element_size() for t in [*ins, y])
        rot = rotations_for(nbytes)
        flops = 2 * q[0] * q[1] * q[2] * k[2] * (q[3] + k[3])

        def make(i):
            return ([t.clone() for t in ins], [torch.empty_like(y)])
        am = None if mask is None else ins[3]
        ref = F.scaled_dot_product_attention(*ins[:3], attn_mask=am, scale=scale)
        sd = graph_stats(lambda qq, kk, vv, mm: F.scaled_dot_product_attention(
            qq, kk, vv, attn_mask=mm if mask is not None else None, scale=scale),
            lambda i: [t.clone() for t in ins], rot)["us"]
        row = {"label": label, "sdpa_us": sd, "configs": []}
        say(f"[{time.time() - t0:6.1f}s] attention {label}: SDPA {sd:.1f} us "
            f"({flops / sd / 1e6:.0f} TFLOP/s)")
        from onnxpass.plugins.kernels.base import launch
        for bm in ((16, 32, 64, 128) if shipped else ()):
            for bn in (32, 64, 128):
                for w in (2, 4, 8):
                    for st in (2, 3):
                        if w * 16 > bm * 2 or (bm >= 128 and w < 4):
                            continue
                        c = {"bm": bm, "bn": bn, "w": w, "st": st}
                        try:
                            pl = att.plan(shapes, dts, values, block_m=bm, block_n=bn,
                                          num_warps=w, num_stages=st)
                            ck = pl.kernel.compiled[tuple(int(g) for g in pl.grid)](
                                *ins, *(int(a) for a in pl.args), y, num_warps=w,
                                num_stages=st, **pl.constexprs)
                            c["shared"] = ck.metadata.shared
                            c["err"] = (y.float() - ref.float()).abs().max().item()
                            c["us"] = graph_stats(lambda i_, o_, pl=pl: launch(pl, i_, o_),
                                                  make, rot)["us"]
                        except Exception as exc:
                            c["error"] = f"{type(exc).__name__}: {str(exc)[:150]}"
                        row["configs"].append(c)
        ok = [c for c in row["configs"] if "us" in c]
        for cap, name in ((48 * 1024, "<=48K"), (1 << 30, "any")):
            best = min((c for c in ok if c["shared"] <= cap), key=lambda c: c["us"], default=None)
            if best:
                row["best_" + name] = best
                say(f"   shipped kernel best {name}: {best} vs SDPA {sd / best['us']:.3f}x")
        # the variants: no mask -> MASK 0 (FOLD possible); key padding -> MASK 2
        B, H, S, D = q
        L = k[2]
        mk = 0 if mask is None else 2
        for fold in ((0, 1) if mk == 0 else (0,)):
            for even in ((0, 1) if L % 64 == 0 else (0,)):
                for ws in (0,):  # warp_specialize=True aborts Triton 3.6 (WSLowerToken assertion)
                    best = None
                    for bm, bn, w, st in ((64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2),
                                          (128, 64, 8, 3), (128, 128, 8, 2), (64, 32, 4, 3),
                                          (32, 64, 4, 2), (32, 32, 2, 3), (16, 64, 2, 2),
                                          (128, 32, 8, 3), (64, 128, 4, 2)):
                        if even and L % bn:
                            continue
                        def k_(qq, kk, vv, mm, yy, bm=bm, bn=bn, w=w, st=st):
                            return attn_variant[(triton.cdiv(S, bm), B * H)](
                                qq, kk, vv, mm, H, S, L, yy, SCALE=scale, D=D, BLOCK_M=bm,
                                BLOCK_N=bn, MASK=mk, FOLD=fold, EVEN=even, WS=bool(ws),
                                num_warps=w, num_stages=st)
                        try:
                            ck = k_(*ins, y)
                            err = (y.float() - ref.float()).abs().max().item()
                            us = graph_stats(lambda i_, o_: k_(*i_, *o_), make, rot)["us"]
                        except Exception as exc:
                            say(f"   variant fold{fold} even{even} ws{ws} {bm}x{bn} w{w} s{st}: "
                                f"{type(exc).__name__}: {str(exc)[:100]}")
                            continue
                        sh = ck.metadata.shared
                        say(f"     fold{fold} even{even} {bm}x{bn} w{w} s{st}: {us:.1f} us "
                            f"smem {sh} vs SDPA {sd / us:.3f}x")
                        if best is None or us < best["us"]:
                            best = {"us": us, "cfg": (bm, bn, w, st), "err": err,
                                    "shared": sh}
                    if best:
                        row[f"variant_fold{fold}_even{even}_ws{ws}"] = best
                        say(f"   variant fold{fold} even{even} ws{ws}: {best} vs SDPA "
                            f"{sd / best['us']:.3f}x")
        out.append(row)
        torch.cuda.empty_cache()
    return out


@triton.jit
def rot_flat(x_ptr, cos_ptr, sin_ptr, y_ptr, NUMEL: tl.constexpr, D: tl.constexpr,
             HALF: tl.constexpr, SEQ: tl.constexpr, INTERLEAVED: tl.constexpr,
             XBLOCK: tl.constexpr, EVEN: tl.constexpr, EVICT: tl.constexpr):
    # Inductor's form: a flat walk over y, each element's pair partner read by a second load
    i = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
    if EVEN:
        m = i >= 0
    else:
        m = i < NUMEL
    d = i % D
    s = (i // D) % SEQ
    if INTERLEAVED:
        k = d // 2
        first = (d % 2) == 0
        partner = i ^ 1
    else:
        k = d % HALF
        first = d < HALF
        partner = tl.where(first, i + HALF, i - HALF)
    x = tl.load(x_ptr + i, mask=m, other=0.0).to(tl.float32)
    xp = tl.load(x_ptr + partner, mask=m, other=0.0).to(tl.float32)
    if EVICT:
        c = tl.load(cos_ptr + s * HALF + k, mask=m, other=0.0,
                    eviction_policy="evict_last").to(tl.float32)
        sn = tl.load(sin_ptr + s * HALF + k, mask=m, other=0.0,
                     eviction_policy="evict_last").to(tl.float32)
    else:
        c = tl.load(cos_ptr + s * HALF + k, mask=m, other=0.0).to(tl.float32)
        sn = tl.load(sin_ptr + s * HALF + k, mask=m, other=0.0).to(tl.float32)
    y = tl.where(first, x * c - xp * sn, x * c + xp * sn)
    tl.store(y_ptr + i, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def rot_rows(x_ptr, cos_ptr, sin_ptr, y_ptr, NROWS: tl.constexpr, D: tl.constexpr,
             HALF: tl.constexpr, SEQ: tl.constexpr, INTERLEAVED: tl.constexpr,
             ROWS: tl.constexpr, EVICT: tl.constexpr):
    # whole rows (ROWS, D) read contiguously, the partner tile by a second (cached) load
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    d = tl.arange(0, D)
    s = rows % SEQ
    if INTERLEAVED:
        k = d // 2
        first = (d % 2) == 0
        pd = d ^ 1
    else:
        k = d % HALF
        first = d < HALF
        pd = (d + HALF) % D
    offs = rows[:, None] * D + d[None, :]
    x = tl.load(x_ptr + offs).to(tl.float32)
    xp = tl.load(x_ptr + rows[:, None] * D + pd[None, :]).to(tl.float32)
    co = s[:, None] * HALF + k[None, :]
    if EVICT:
        c = tl.load(cos_ptr + co, eviction_policy="evict_last").to(tl.float32)
        sn = tl.load(sin_ptr + co, eviction_policy="evict_last").to(tl.float32)
    else:
        c = tl.load(cos_ptr + co).to(tl.float32)
        sn = tl.load(sin_ptr + co).to(tl.float32)
    y = tl.where(first[None, :], x * c - xp * sn, x * c + xp * sn)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty))


@triton.jit
def abt_flat(x_ptr, bias_ptr, y_ptr, NUMEL: tl.constexpr, SEQ: tl.constexpr,
             H: tl.constexpr, D: tl.constexpr, XBLOCK: tl.constexpr, EVEN: tl.constexpr,
             OVER_X: tl.constexpr, EVICT: tl.constexpr):
    # y[b, h, s, j] = x[b, s, h * D + j] + bias[h * D + j]: a flat walk over y (Inductor's
    # order) or over x (OVER_X: loads contiguous, stores in D-long runs)
    i = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
    if EVEN:
        m = None  # Inductor's form: no mask at all
    else:
        m = i < NUMEL
    if OVER_X:
        c = i % (H * D)
        bs = i // (H * D)
        h = c // D
        j = c % D
        b = bs // SEQ
        s = bs % SEQ
        xi = i
        yi = ((b * H + h) * SEQ + s) * D + j
    else:
        j = i % D
        s = (i // D) % SEQ
        h = (i // (D * SEQ)) % H
        b = i // (D * SEQ * H)
        c = h * D + j
        xi = (b * SEQ + s) * (H * D) + c
        yi = i
    if EVEN:
        bias = tl.load(bias_ptr + c, eviction_policy="evict_last")
        x = tl.load(x_ptr + xi)
    elif EVICT:
        bias = tl.load(bias_ptr + c, mask=m, other=0.0, eviction_policy="evict_last")
        x = tl.load(x_ptr + xi, mask=m, other=0.0)
    else:
        bias = tl.load(bias_ptr + c, mask=m, other=0.0)
        x = tl.load(x_ptr + xi, mask=m, other=0.0)
    y = x.to(tl.float32) + bias.to(tl.float32)
    tl.store(y_ptr + yi, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def abt_pos(x_ptr, bias_ptr, y_ptr, NPOS: tl.constexpr, SEQ: tl.constexpr, H: tl.constexpr,
            D: tl.constexpr, POS: tl.constexpr):
    # POS positions (b, s) per program, every head: x rows read whole, no masked tail tile
    p = tl.program_id(0) * POS + tl.arange(0, POS)
    j = tl.arange(0, D)
    b = p // SEQ
    s = p % SEQ
    pm = (p < NPOS)[:, None]
    for h in tl.static_range(H):
        x = tl.load(x_ptr + p[:, None] * (H * D) + h * D + j[None, :], mask=pm, other=0.0)
        bias = tl.load(bias_ptr + h * D + j)
        y = x.to(tl.float32) + bias.to(tl.float32)[None, :]
        tl.store(y_ptr + ((b * H + h) * SEQ + s)[:, None] * D + j[None, :],
                 y.to(y_ptr.dtype.element_ty), mask=pm)


@triton.jit
def rot_pairs(x_ptr, cos_ptr, sin_ptr, y_ptr, NROWS: tl.constexpr, D: tl.constexpr,
              HALF: tl.constexpr, SEQ: tl.constexpr, ROWS: tl.constexpr, FORM: tl.constexpr):
    # interleaved pairs (2k, 2k + 1). FORM 1: each pair as one 2x-wide integer word, loaded
    # (ROWS, HALF) with full-width vectors and unpacked in registers; FORM 2: a (ROWS, D) tile
    # reshaped to (ROWS, HALF, 2) and split (what rotary.py took). FORM 3: rotate-half pairs
    # (k, k + HALF) from one (ROWS, D) tile
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    k = tl.arange(0, HALF)
    s = rows % SEQ
    co = s[:, None] * HALF + k[None, :]
    c = tl.load(cos_ptr + co).to(tl.float32)
    sn = tl.load(sin_ptr + co).to(tl.float32)
    dt = y_ptr.dtype.element_ty
    if FORM == 1:
        if dt.primitive_bitwidth == 16:
            W: tl.constexpr = tl.uint32
            U: tl.constexpr = tl.uint16
        else:
            W: tl.constexpr = tl.uint64
            U: tl.constexpr = tl.uint32
        xw = x_ptr.to(tl.pointer_type(W), bitcast=True)
        yw = y_ptr.to(tl.pointer_type(W), bitcast=True)
        offs = rows[:, None] * HALF + k[None, :]
        w = tl.load(xw + offs)
        x1 = w.to(U).to(dt, bitcast=True).to(tl.float32)
        x2 = (w >> dt.primitive_bitwidth).to(U).to(dt, bitcast=True).to(tl.float32)
        y1 = (c * x1 - sn * x2).to(dt).to(U, bitcast=True).to(W)
        y2 = (sn * x1 + c * x2).to(dt).to(U, bitcast=True).to(W)
        tl.store(yw + offs, y1 | (y2 << dt.primitive_bitwidth))
    elif FORM == 2:
        offs = rows[:, None] * D + tl.arange(0, D)[None, :]
        x = tl.load(x_ptr + offs).to(tl.float32)
        x1, x2 = tl.split(tl.reshape(x, (ROWS, HALF, 2)))
        y = tl.reshape(tl.join(c * x1 - sn * x2, sn * x1 + c * x2), (ROWS, D))
        tl.store(y_ptr + offs, y.to(dt))
    else:  # FORM 3, rotate-half: one (ROWS, D) tile, its halves split through a permute
        offs = rows[:, None] * D + tl.arange(0, D)[None, :]
        x = tl.load(x_ptr + offs).to(tl.float32)
        x1, x2 = tl.split(tl.permute(tl.reshape(x, (ROWS, 2, HALF)), (0, 2, 1)))
        y = tl.join(c * x1 - sn * x2, sn * x1 + c * x2)
        tl.store(y_ptr + offs, tl.reshape(tl.permute(y, (0, 2, 1)), (ROWS, D)).to(dt))


def probe_pointwise(say, t0, dtypes, only=("rotate-half", "interleaved", "ABT Q"),
                    flat=True):
    """Rotary (both forms) at Llama-7B's Q and AddBiasTranspose Q at ViT's: the shipped kernel
    (its CONFIGS), Inductor's kernel (torch.compile of both of bench/plugins.py's forms), a
    copy, and the variants above, each over its launch configs."""
    import torch

    from bench.plugins import compiled, decomposed_fn, inputs, kernel_configs, shapes_of, torch_fn
    from bench.timing import graph_stats, rotations_for
    from onnxpass.plugins import get_plugin
    from onnxpass.plugins.kernels import get_kernel
    from onnxpass.plugins.kernels.base import launch

    cases = [("RotaryEmbeddingPlugin", "rotate-half", (4, 32, 2048, 128), {"interleaved": 0}),
             ("RotaryEmbeddingPlugin", "interleaved", (4, 32, 2048, 128), {"interleaved": 1}),
             ("AddBiasTransposePlugin", "ABT Q", (64, 197, 768), {"num_heads": 12})]
    out = []
    for plugin, label, x, attrs in cases:
        if label not in only:
            continue
        for dt in dtypes:
            shapes = shapes_of(plugin, x)
            ins = inputs(plugin, shapes, dt)
            values = get_plugin(plugin).attr_values(attrs)
            spec = get_kernel(plugin)
            pl = spec.plan(shapes, [dt] * len(ins), values)
            ref = torch.empty(get_plugin(plugin).output_shapes(shapes, values)[0],
                              dtype=ins[0].dtype, device="cuda")
            launch(pl, ins, [ref])
            nbytes = sum(t.numel() * t.element_size() for t in [*ins, ref])
            rot = rotations_for(nbytes)

            def make(i):
                return ([t.clone() for t in ins], [torch.empty_like(ref)])
            row = {"case": label, "dtype": dt, "times": {}}

            def rec(name, fn, mk=make, check=None):
                try:
                    st = graph_stats(fn, mk, rot)
                except Exception as exc:
                    say(f"   {name}: {type(exc).__name__}: {str(exc)[:150]}")
                    return None
                row["times"][name] = [st["us"], st["min_us"], st["max_us"]]
                err = "" if check is None else f" err {check:.3g}"
                say(f"   {name:36s} {st['us']:7.2f} us "
                    f"[{st['min_us']:.2f}-{st['max_us']:.2f}]{err}")
                return st["us"]
            say(f"[{time.time() - t0:6.1f}s] {plugin} {label} {dt} {x}")
            half = max(16, nbytes // 2 // 16 * 16)
            rec("copy", lambda s, d: d.copy_(s),
                lambda i: (torch.zeros(half // 8, dtype=torch.int64, device="cuda"),
                           torch.empty(half // 8, dtype=torch.int64, device="cuda")))
            prepare, f = torch_fn(plugin, attrs)
            for form, fn, mk in (("decomposed", decomposed_fn(plugin, attrs),
                                  lambda i: [t.clone() for t in ins]),
                                 ("torch", f, lambda i: prepare([t.clone() for t in ins]))):
                cf = compiled(("pw", label, dt, form), fn)
                got = cf(*mk(0))
                rec("compile_" + form, cf, mk, (got.float() - ref.float()).abs().max().item())
            rec("shipped", lambda i_, o_: launch(pl, i_, o_))
            for cfg in kernel_configs(plugin):
                p2 = spec.plan(shapes, [dt] * len(ins), values, **cfg)
                rec(f"shipped {cfg}", lambda i_, o_, p2=p2: launch(p2, i_, o_))
            y = torch.empty_like(ref)

            def var(name, k):
                try:
                    k(*ins, y)
                    err = (y.float() - ref.float()).abs().max().item()
                except Exception as exc:
                    say(f"   {name}: {type(exc).__name__}: {str(exc)[:150]}")
                    return
                rec(name, lambda i_, o_: k(*i_, *o_), check=err)
            if plugin == "RotaryEmbeddingPlugin":
                B, H, S, D = x
                numel = B * H * S * D
                il = bool(attrs["interleaved"])
                for xb in ((512, 1024, 2048, 4096) if flat else ()):
                    for w in (4, 8):
                        for ev in (0, 1):
                            var(f"flat xb{xb} w{w} ev{ev}", lambda a, c, s_, yy, xb=xb, w=w, ev=ev:
                                rot_flat[(triton.cdiv(numel, xb),)](
                                    a, c, s_, yy, NUMEL=numel, D=D, HALF=D // 2, SEQ=S,
                                    INTERLEAVED=il, XBLOCK=xb, EVEN=numel % xb == 0, EVICT=ev,
                                    num_warps=w))
                for r in (4, 8, 16, 32):
                    for w in (2, 4, 8):
                        for form in ((1, 2) if il else (3,)):
                            var(f"pairs form{form} r{r} w{w}", lambda a, c, s_, yy, r=r, w=w,
                                form=form: rot_pairs[(B * H * S // r,)](
                                    a, c, s_, yy, NROWS=B * H * S, D=D, HALF=D // 2, SEQ=S,
                                    ROWS=r, FORM=form, num_warps=w))
                for r in ((4, 8, 16, 32) if not il and flat else ()):
                    for w in (2, 4, 8):
                        for ev in (0, 1):
                            var(f"rows r{r} w{w} ev{ev}", lambda a, c, s_, yy, r=r, w=w, ev=ev:
                                rot_rows[(B * H * S // r,)](
                                    a, c, s_, yy, NROWS=B * H * S, D=D, HALF=D // 2, SEQ=S,
                                    INTERLEAVED=il, ROWS=r, EVICT=ev, num_warps=w))
            else:
                B, S, N = x
                Hh = attrs["num_heads"]
                numel = B * S * N
                for xb in ((512, 1024, 2048) if flat else ()):
                    for w in (4, 8):
                        for ox in (0, 1):
                            for ev in (0, 1):
                                var(f"flat xb{xb} w{w} overx{ox} ev{ev}",
                                    lambda a, bb, yy, xb=xb, w=w, ox=ox, ev=ev:
                                    abt_flat[(triton.cdiv(numel, xb),)](
                                        a, bb, yy, NUMEL=numel, SEQ=S, H=Hh, D=N // Hh,
                                        XBLOCK=xb, EVEN=numel % xb == 0, OVER_X=ox, EVICT=ev,
                                        num_warps=w))
                for pos in ((1, 2, 4, 8, 16) if flat else ()):
                    for w in (1, 2, 4):
                        var(f"pos p{pos} w{w}", lambda a, bb, yy, pos=pos, w=w:
                            abt_pos[(triton.cdiv(B * S, pos),)](
                                a, bb, yy, NPOS=B * S, SEQ=S, H=Hh, D=N // Hh, POS=pos,
                                num_warps=w))
            ts = row["times"]
            best = min((k for k in ts if k not in ("copy",) and not k.startswith("compile")),
                       key=lambda k: ts[k][0])
            comp = min(ts[k][0] for k in ts if k.startswith("compile"))
            say(f"   => best ours {best} {ts[best][0]:.2f} us; compile {comp:.2f}: "
                f"{comp / ts[best][0]:.3f}x; shipped {comp / ts['shipped'][0]:.3f}x; "
                f"copy {ts['copy'][0] / ts[best][0]:.3f}x")
            out.append(row)
            torch.cuda.empty_cache()
    return out


def _bench_row(plugin: str, label: str, dt: str) -> Any:
    """bench/plugins.py's CASES row (plugin, label) in dtype dt, set up as its graph rows are:
    x's shape, attrs, input shapes, inputs, attribute values, the shipped plan, an output, and
    the rotations of the CUDA-graph timing."""
    from types import SimpleNamespace

    import torch

    from bench.plugins import CASES, inputs, shapes_of
    from bench.timing import rotations_for
    from onnxpass.plugins import get_plugin
    from onnxpass.plugins.kernels import get_kernel

    x, attrs = next((c[2], c[3]) for c in CASES if c[0] == plugin and c[1] == label)
    shapes = shapes_of(plugin, x)
    ins = inputs(plugin, shapes, dt)
    values = get_plugin(plugin).attr_values(attrs)
    plan = get_kernel(plugin).plan(shapes, [dt] * len(ins), values)  # type: ignore[misc]
    y = torch.empty(get_plugin(plugin).output_shapes(shapes, values)[0], dtype=ins[0].dtype,
                    device="cuda")
    nbytes = sum(t.numel() * t.element_size() for t in [*ins, y])
    return SimpleNamespace(plugin=plugin, label=label, dt=dt, x=x, attrs=attrs, shapes=shapes,
                           ins=ins, values=values, plan=plan, y=y, nbytes=nbytes,
                           rot=rotations_for(nbytes))


def _peers(r: Any, tag: str) -> dict[str, Any]:
    """The peers of a _bench_row ``r``, as (fn, make) for graph_stats: torch.compile of the
    decomposed op and of the torch call, and a copy of the row's bytes (half read, half
    written)."""
    import torch

    from bench.plugins import compiled, decomposed_fn, torch_fn

    ins = r.ins
    half = max(16, r.nbytes // 2 // 16 * 16)
    prepare, f = torch_fn(r.plugin, r.attrs)
    return {"compile_decomposed": (compiled((tag, r.label, r.dt, "d"),
                                            decomposed_fn(r.plugin, r.attrs)),
                                   lambda i: [t.clone() for t in ins]),
            "compile_torch": (compiled((tag, r.label, r.dt, "t"), f),
                              lambda i: prepare([t.clone() for t in ins])),
            "copy": (lambda s, d: d.copy_(s),
                     lambda i: (torch.zeros(half // 8, dtype=torch.int64, device="cuda"),
                                torch.empty(half // 8, dtype=torch.int64, device="cuda")))}


TIE_ROWS = [("LayerNormPlugin", "ViT-B/16 64x197", "bfloat16"),
            ("LayerNormPlugin", "ViT-B/16 64x197", "float16"),
            ("LayerNormPlugin", "DETR-R50 8x850 encoder", "float16"),
            ("L2NormPlugin", "MST++ b20 128x128 stage 1", "float16"),
            ("L2NormPlugin", "MST++ b20 128x128 stage 1", "bfloat16"),
            ("AddBiasTransposePlugin", "ViT-B/16 64x197 Q", "float16"),
            ("AddBiasTransposePlugin", "ViT-B/16 64x197 Q", "bfloat16"),
            ("RotaryEmbeddingPlugin", "Llama-7B Q 4x2048", "float16"),
            ("RotaryEmbeddingPlugin", "Llama-7B Q 4x2048", "bfloat16")]


def probe_ties(say, t0, rounds=5):
    """bench/plugins.py's rows where kernel and peer come within about 1%: the kernel, both
    torch.compile forms and the copy timed in ``rounds`` alternating rounds (so a drift of the
    GPU's clock over the row cannot favour the one timed later), each round's ratio kept."""
    import statistics

    import torch

    from bench.timing import graph_stats
    from onnxpass.plugins.kernels.base import launch

    out = []
    for plugin, label, dt in TIE_ROWS:
        r = _bench_row(plugin, label, dt)
        ins, pl, y, rot = r.ins, r.plan, r.y, r.rot
        fns = {"kernel": (lambda i_, o_: launch(pl, i_, o_),
                          lambda i: ([t.clone() for t in ins], [torch.empty_like(y)])),
               **_peers(r, "tie")}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for name, (fn, mk) in fns.items():
                times[name].append(graph_stats(fn, mk, rot)["us"])
        med = {k: statistics.median(v) for k, v in times.items()}
        peer = [min(times["compile_decomposed"][i], times["compile_torch"][i])
                for i in range(rounds)]
        ratios = [p / k for p, k in zip(peer, times["kernel"])]
        row = {"plugin": plugin, "label": label, "dtype": dt, "times": times, "median": med,
               "ratios": ratios, "grid": [int(g) for g in pl.grid], "warps": pl.num_warps}
        comp = min(med["compile_decomposed"], med["compile_torch"])
        say(f"[{time.time() - t0:6.1f}s] {plugin} {label} {dt}: kernel {med['kernel']:.3f} us, "
            f"compile {comp:.3f}, copy {med['copy']:.3f}; per-round vs compile "
            + " ".join(f"{r:.3f}" for r in ratios))
        out.append(row)
        torch.cuda.empty_cache()
    return out


def _inductor_kernels() -> dict[str, Any]:
    """Every Triton kernel Inductor has loaded in this process, by name: its autotuner (with
    the config it launches) and the JITFunction behind it."""
    from torch._inductor.codecache import PyCodeCache

    found: dict[str, Any] = {}
    mods = getattr(PyCodeCache, "modules", None) or getattr(PyCodeCache, "cache", {})
    for mod in list(mods.values() if isinstance(mods, dict) else mods):
        for name in dir(mod):
            obj = getattr(mod, name, None)
            if name.startswith("triton_") and hasattr(obj, "launchers") and hasattr(obj, "fn"):
                found[name] = obj
    return found


def probe_inductor(say, t0, rounds=5):
    """LayerNorm at ViT (bfloat16) and AddBiasTranspose Q (float16, bfloat16), where the kernel
    stays about 1% behind torch.compile: Inductor's own kernel (its JITFunction and the config
    it launches) launched by plain Triton, next to the compiled function and the shipped
    kernel, in alternating rounds."""
    import statistics

    import torch

    from bench.plugins import compiled, decomposed_fn
    from bench.timing import graph_stats
    from onnxpass.plugins.kernels.base import launch

    rows = [("LayerNormPlugin", "ViT-B/16 64x197", "bfloat16"),
            ("AddBiasTransposePlugin", "ViT-B/16 64x197 Q", "float16"),
            ("AddBiasTransposePlugin", "ViT-B/16 64x197 Q", "bfloat16")]
    out = []
    for plugin, label, dt in rows:
        r = _bench_row(plugin, label, dt)
        attrs, ins, pl, y, rot = r.attrs, r.ins, r.plan, r.y, r.rot
        launch(pl, ins, [y])
        before = set(_inductor_kernels())
        cf = compiled(("ind", label, dt), decomposed_fn(plugin, attrs))
        got = cf(*ins)
        new = {k: v for k, v in _inductor_kernels().items() if k not in before}
        row: dict[str, Any] = {"plugin": plugin, "label": label, "dtype": dt, "kernels": {}}
        fns = {"kernel": (lambda i_, o_: launch(pl, i_, o_), None),
               "compile": (cf, None)}
        for name, at in new.items():
            cfgs = [(dict(lc.config.kwargs), lc.config.num_warps, lc.config.num_stages)
                    for lc in at.launchers]
            row["kernels"][name] = [str(c) for c in cfgs]
            say(f"   inductor kernel {name}: launches {cfgs}")
            if len(new) == 1 and len(cfgs) == 1:
                kw, w, st = cfgs[0]
                blk = kw.get("XBLOCK", 1)
                n = y.numel() if plugin != "LayerNormPlugin" else y.numel() // y.shape[-1]
                grid = (triton.cdiv(n, blk),)

                def ind(*a, at=at, kw=kw, w=w, st=st, grid=grid):
                    extra = (0, 0) if plugin == "LayerNormPlugin" else (0,)
                    at.fn[grid](*a, *extra, **kw, num_warps=w, num_stages=st)
                yy = torch.empty_like(y)
                try:
                    ind(*ins, yy)
                    row["inductor_kernel_err"] = (yy.float() - got.float()).abs().max().item()
                    fns["inductor kernel, plain triton"] = (lambda i_, o_: ind(*i_, *o_), None)
                except Exception as exc:
                    say(f"   plain launch failed: {type(exc).__name__}: {str(exc)[:200]}")
        makes = {"kernel": lambda i: ([t.clone() for t in ins], [torch.empty_like(y)]),
                 "compile": lambda i: [t.clone() for t in ins],
                 "inductor kernel, plain triton":
                     lambda i: ([t.clone() for t in ins], [torch.empty_like(y)])}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for k, (fn, _) in fns.items():
                times[k].append(graph_stats(fn, makes[k], rot)["us"])
        row["times"] = times
        say(f"[{time.time() - t0:6.1f}s] {plugin} {label} {dt}: "
            + "; ".join(f"{k} {statistics.median(v):.3f} us" for k, v in times.items())
            + f"; err {row.get('inductor_kernel_err')}")
        out.append(row)
    return out



def probe_configs(say, t0, rounds=3):
    """LayerNorm's launch configs with one warp (Inductor launches ViT's 768-wide rows one per
    program with one warp) and AddBiasTranspose Q in Inductor's unmasked flat form, each next
    to torch.compile in alternating rounds."""
    import statistics

    import torch

    from bench.plugins import CASES, compiled, decomposed_fn, inputs, shapes_of
    from bench.timing import graph_stats, rotations_for
    from onnxpass.plugins import get_plugin
    from onnxpass.plugins.kernels import get_kernel
    from onnxpass.plugins.kernels.base import launch

    out = []
    for plugin, label, x, attrs in CASES:
        if plugin not in ("LayerNormPlugin", "AddBiasTransposePlugin") or "K^T" in label:
            continue
        for dt in ("float16", "bfloat16"):
            shapes = shapes_of(plugin, x)
            ins = inputs(plugin, shapes, dt)
            values = get_plugin(plugin).attr_values(attrs)
            k = get_kernel(plugin)
            y = torch.empty(get_plugin(plugin).output_shapes(shapes, values)[0],
                            dtype=ins[0].dtype, device="cuda")
            nbytes = sum(t.numel() * t.element_size() for t in [*ins, y])
            rot = rotations_for(nbytes)
            fns: dict[str, Any] = {}
            cf = compiled(("cfg", label, dt), decomposed_fn(plugin, attrs))
            fns["compile"] = (cf, lambda i: [t.clone() for t in ins])
            mk = lambda i: ([t.clone() for t in ins], [torch.empty_like(y)])
            cfgs = ([{}, {"rows_per_program": 1, "num_warps": 1},
                     {"rows_per_program": 2, "num_warps": 1},
                     {"rows_per_program": 4, "num_warps": 1},
                     {"rows_per_program": 1, "num_warps": 2}]
                    if plugin == "LayerNormPlugin" else [{}])
            for cfg in cfgs:
                pl = k.plan(shapes, [dt] * len(ins), values, **cfg)  # type: ignore[misc]
                fns[f"kernel {cfg}"] = (lambda i_, o_, pl=pl: launch(pl, i_, o_), mk)
            if plugin == "AddBiasTransposePlugin":
                B, S, N = x
                Hh = attrs["num_heads"]
                numel = B * S * N
                for xb in (1024, 2048):
                    fns[f"flat unmasked xb{xb}"] = (
                        lambda i_, o_, xb=xb: abt_flat[(triton.cdiv(numel, xb),)](
                            *i_, *o_, NUMEL=numel, SEQ=S, H=Hh, D=N // Hh, XBLOCK=xb,
                            EVEN=numel % xb == 0, OVER_X=0, EVICT=1, num_warps=4), mk)
            times: dict[str, list[float]] = {n: [] for n in fns}
            for _ in range(rounds):
                for n, (fn, m) in fns.items():
                    try:
                        times[n].append(graph_stats(fn, m, rot)["us"])
                    except Exception as exc:
                        say(f"   {n}: {type(exc).__name__}: {str(exc)[:150]}")
            med = {n: statistics.median(v) for n, v in times.items() if v}
            say(f"[{time.time() - t0:6.1f}s] {plugin} {label} {dt}: compile {med['compile']:.3f}; "
                + "; ".join(f"{n} {v:.3f} ({med['compile'] / v:.3f}x)" for n, v in med.items()
                            if n != "compile"))
            out.append({"plugin": plugin, "label": label, "dtype": dt, "times": times})
            torch.cuda.empty_cache()
    return out


@jit
def ln_rows_v(x_ptr, gamma_ptr, beta_ptr, n_rows, n_cols, y_ptr, EPS: tl.constexpr,
              N: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr,
              EVEN_ROWS: tl.constexpr, I64: tl.constexpr, EARLY: tl.constexpr,
              Y_FROM_X: tl.constexpr):
    """layernorm_rows with Inductor's details as flags: gamma and beta loaded with x (EARLY),
    y from x - mean unmasked rather than the masked deviations (Y_FROM_X)."""
    cols, col_ok, mask, offs = row_tile(n_rows, N, BLOCK_N, ROWS, EVEN_ROWS, I64)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if EARLY:
        g = tl.load(gamma_ptr + cols, mask=col_ok, other=0.0,
                    eviction_policy="evict_last").to(tl.float32)
        b = tl.load(beta_ptr + cols, mask=col_ok, other=0.0,
                    eviction_policy="evict_last").to(tl.float32)
    mean = tl.sum(x, axis=1, keep_dims=True) / N
    d = tl.where(mask, x - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(d * d, axis=1) / N + EPS)
    if not EARLY:
        g = tl.load(gamma_ptr + cols, mask=col_ok, other=0.0,
                    eviction_policy="evict_last").to(tl.float32)
        b = tl.load(beta_ptr + cols, mask=col_ok, other=0.0,
                    eviction_policy="evict_last").to(tl.float32)
    if Y_FROM_X:
        y = (x - mean) * rstd[:, None] * g[None, :] + b[None, :]
    else:
        y = d * rstd[:, None] * g[None, :] + b[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


PROBE_KERNELS = {"ln_rows_v": ln_rows_v}

# (plugin, bench/plugins.py label, plan keyword arguments to time besides the shipped plan;
# "_kernel": (name in PROBE_KERNELS, extra constexprs) launches a probe kernel in that plan)
GRID_ROWS = [
    ("LayerNormPlugin", "ViT-B/16 64x197",
     [{"rows_per_program": r, "num_warps": w, **k} for r, w in ((1, 1), (2, 2), (2, 4))
      for k in ({}, {"_kernel": ("ln_rows_v", {"EARLY": 0, "Y_FROM_X": 1})},
                {"_kernel": ("ln_rows_v", {"EARLY": 1, "Y_FROM_X": 1})},
                {"_kernel": ("ln_rows_v", {"EARLY": 1, "Y_FROM_X": 0})})]),
    ("L2NormPlugin", "MST++ b1 482x512 stage 1",
     [{"split": s, "num_warps": 32, "block_n": b} for s in (1, 2, 4, 8) for b in (8192, 16384)]),
]


def probe_grid(say, t0, dtypes=("float16", "bfloat16"), rounds=5):
    """GRID_ROWS: the shipped plan and each listed config of a bench row, next to both
    torch.compile forms and a copy of the row's bytes, in ``rounds`` alternating rounds;
    the median of each, and its ratio to the better compile form."""
    import statistics

    import torch

    from bench.timing import graph_stats
    from onnxpass.plugins.kernels import get_kernel
    from onnxpass.plugins.kernels.base import launch

    out = []
    for plugin, label, cfgs in GRID_ROWS:
        for dt in dtypes:
            r = _bench_row(plugin, label, dt)
            ins, y, rot, k = r.ins, r.y, r.rot, get_kernel(plugin)
            mk = lambda i: ([t.clone() for t in ins], [torch.empty_like(y)])
            fns: dict[str, Any] = _peers(r, "grid")
            errs = {}
            want = fns["compile_decomposed"][0](*ins).float()
            for cfg in [{}, *cfgs]:
                kw = {a: b for a, b in cfg.items() if a != "_kernel"}
                pl = k.plan(r.shapes, [dt] * len(ins), r.values, **kw)  # type: ignore[misc]
                name = "shipped" if not cfg else " ".join(f"{a}={b}" for a, b in kw.items())
                if "_kernel" in cfg:
                    kname, extra = cfg["_kernel"]
                    pl = dataclasses.replace(pl, kernel=PROBE_KERNELS[kname],
                                             constexprs={**pl.constexprs, **extra})
                    name += f" {kname} " + " ".join(f"{a}={b}" for a, b in extra.items())
                yy = torch.empty_like(y)
                try:
                    launch(pl, ins, [yy])
                except Exception as exc:
                    say(f"   {name}: {type(exc).__name__}: {str(exc)[:150]}")
                    continue
                errs[name] = (yy.float() - want).abs().max().item()
                fns[name] = (lambda i_, o_, pl=pl: launch(pl, i_, o_), mk)
            times: dict[str, list[float]] = {n: [] for n in fns}
            for _ in range(rounds):
                for n, (fn, m) in fns.items():
                    times[n].append(graph_stats(fn, m, rot)["us"])
            med = {n: statistics.median(v) for n, v in times.items()}
            comp = min(med["compile_decomposed"], med["compile_torch"])
            ranked = sorted((n for n in med if n not in ("compile_decomposed", "compile_torch",
                                                         "copy")), key=med.__getitem__)
            say(f"[{time.time() - t0:6.1f}s] {plugin} {label} {dt}: compile {comp:.3f} us "
                f"(decomposed {med['compile_decomposed']:.3f}, torch {med['compile_torch']:.3f}),"
                f" copy {med['copy']:.3f}")
            for n in ranked:
                say(f"   {n:40s} {med[n]:8.3f} us  {comp / med[n]:.3f}x compile  "
                    f"{med['copy'] / med[n]:.3f}x copy  max err {errs[n]:.3g}  rounds "
                    + " ".join(f"{t:.2f}" for t in times[n]))
            out.append({"plugin": plugin, "label": label, "dtype": dt, "times": times,
                        "errors": errs})
            torch.cuda.empty_cache()
    return out

SHAPES = [("ViT 64x197x768", 64 * 197, 768), ("MobileViT s3 256x256x144", 256 * 256, 144),
          ("MobileViT s4 256x64x192", 256 * 64, 192), ("MobileViT s5 256x16x240", 256 * 16, 240),
          ("DETR 850x8x256", 850 * 8, 256), ("anchor 32768x1024", 32768, 1024)]

VARIANTS = {
    "current": dict(SHIFT=1, I64=True, RSQRT=False, NROWS=0),
    "no_shift": dict(SHIFT=0, I64=True, RSQRT=False, NROWS=0),
    "int32": dict(SHIFT=1, I64=False, RSQRT=False, NROWS=0),
    "rsqrt": dict(SHIFT=1, I64=True, RSQRT=True, NROWS=0),
    "nrows_const": dict(SHIFT=1, I64=True, RSQRT=False, NROWS=-1),
    "tile_shift_i32_rsqrt": dict(SHIFT=2, I64=False, RSQRT=True, NROWS=0),
    "load_shift_i32_rsqrt": dict(SHIFT=1, I64=False, RSQRT=True, NROWS=0),
    "inductor_like": dict(SHIFT=0, I64=False, RSQRT=True, NROWS=-1),
    "inductor_like_dyn": dict(SHIFT=0, I64=False, RSQRT=True, NROWS=0),
    "ind_shift_load": dict(SHIFT=1, I64=False, RSQRT=True, NROWS=-1),
    "ind_shift_tile": dict(SHIFT=2, I64=False, RSQRT=True, NROWS=-1),
    "ind_shift_joint": dict(SHIFT=4, I64=False, RSQRT=True, NROWS=-1),
    "ind_shift_joint_even_dyn": dict(SHIFT=4, I64=False, RSQRT=True, NROWS=0, EVEN_ROWS=True),
    "ind_shift_correct": dict(SHIFT=3, I64=False, RSQRT=True, NROWS=-1),
    "ind_shift_load_i64": dict(SHIFT=1, I64=True, RSQRT=True, NROWS=-1),
    "ind_shift_load_even_dyn": dict(SHIFT=1, I64=False, RSQRT=True, NROWS=0, EVEN_ROWS=True),
    "ind_even_dyn": dict(SHIFT=0, I64=False, RSQRT=True, NROWS=0, EVEN_ROWS=True),
}
FULL_SWEEP = ("inductor_like", "ind_shift_load", "ind_shift_tile", "ind_shift_correct",
              "ind_shift_load_i64", "ind_shift_load_even_dyn", "ind_even_dyn")
CONFIGS = [(r, w) for r in (1, 2, 4, 8) for w in (2, 4, 8)]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtypes", default="float16")
    p.add_argument("--full-sweep", default=",".join(FULL_SWEEP))
    p.add_argument("--variants", default="")
    p.add_argument("--parts", default="norms,attention")
    p.add_argument("--attention-cases", default="cross,4096")
    p.add_argument("--attention-shipped", type=int, default=1)
    p.add_argument("--pointwise-cases", default="rotate-half,interleaved,ABT Q")
    p.add_argument("--pointwise-flat", type=int, default=1)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((args.out / "inductor").resolve()))
    import torch

    from bench.plugins import compiled, decomposed_fn, setup_compile
    from bench.timing import graph_stats, rotations_for

    setup_compile()
    full = set(args.full_sweep.split(","))
    results: list[dict[str, Any]] = []
    log = open(args.out / "probe_norms.log", "w")

    def say(s: str) -> None:
        print(s, flush=True)
        log.write(s + "\n")
        log.flush()

    t0 = time.time()
    if "grid" in args.parts:
        gr = probe_grid(say, t0, tuple(args.dtypes.split(",")))
        (args.out / "probe_grid.json").write_text(json.dumps(gr, indent=1))
    if "configs" in args.parts:
        cf = probe_configs(say, t0)
        (args.out / "probe_configs.json").write_text(json.dumps(cf, indent=1))
    if "inductor" in args.parts:
        ind = probe_inductor(say, t0)
        (args.out / "probe_inductor.json").write_text(json.dumps(ind, indent=1, default=str))
    if "ties" in args.parts:
        ties = probe_ties(say, t0)
        (args.out / "probe_ties.json").write_text(json.dumps(ties, indent=1))
    if "pointwise" in args.parts:
        pw = probe_pointwise(say, t0, args.dtypes.split(","),
                             tuple(args.pointwise_cases.split(",")), args.pointwise_flat)
        (args.out / "probe_pointwise.json").write_text(json.dumps(pw, indent=1))
    if "attention" in args.parts:
        att = probe_attention(say, t0, tuple(args.attention_cases.split(",")),
                              args.attention_shipped)
        (args.out / "probe_attention.json").write_text(json.dumps(att, indent=1))
    for label, rows, n in (SHAPES if "norms" in args.parts else []):
        for dt in args.dtypes.split(","):
            dtype = getattr(torch, dt)
            x = torch.randn(rows, n, device="cuda", dtype=dtype)
            g = torch.randn(n, device="cuda", dtype=dtype)
            b = torch.randn(n, device="cuda", dtype=dtype)
            nbytes = 2 * x.numel() * x.element_size()
            rot = rotations_for(nbytes)
            ref = torch.nn.functional.layer_norm(x.float(), (n,), g.float(), b.float(), 1e-5)

            def make(i: int) -> Any:
                return (x.clone(), torch.empty_like(x))
            fn = decomposed_fn("LayerNormPlugin", {"epsilon": 1e-5, "axis": -1})
            cf = compiled(("probe", label, dt), fn)
            st = graph_stats(lambda xx, yy: cf(xx, g, b), make, rot)
            comp = st["us"]
            row: dict[str, Any] = {"shape": label, "dtype": dt, "compile_us": comp,
                                   "variants": {}}
            say(f"[{time.time() - t0:6.1f}s] {label} {dt}: compile {comp:.2f} us "
                f"({st['min_us']:.2f}-{st['max_us']:.2f})")
            block = triton.next_power_of_2(n)
            for vname, flags in VARIANTS.items():
                if args.variants and vname not in args.variants.split(","):
                    continue
                cfgs = CONFIGS if vname in full else [(max(1, 2048 // block), 4)]
                best = None
                for r, w in cfgs:
                    fl = dict(flags)
                    if fl.get("EVEN_ROWS") and rows % r:
                        continue
                    if fl["NROWS"] < 0:
                        fl["NROWS"] = rows

                    def k(xx: Any, yy: Any, r: int = r, w: int = w, fl: dict = fl) -> None:
                        ln_variant[(triton.cdiv(rows, r),)](
                            xx, g, b, rows, yy, EPS=1e-5, N=n, BLOCK_N=block, ROWS=r,
                            num_warps=w, **fl)
                    try:
                        yy = torch.empty_like(x)
                        k(x, yy)
                        err = (yy.float() - ref).abs().max().item()
                        us = graph_stats(k, make, rot)["us"]
                    except Exception as exc:  # a config that does not compile
                        say(f"   {vname} r{r} w{w}: {type(exc).__name__}: {str(exc)[:120]}")
                        continue
                    if best is None or us < best[0]:
                        best = (us, r, w, err)
                if best:
                    row["variants"][vname] = {"us": best[0], "rows": best[1], "warps": best[2],
                                              "err": best[3]}
                    say(f"   {vname:24s} {best[0]:7.2f} us  vs compile {comp / best[0]:.3f}x"
                        f"  (rows {best[1]}, warps {best[2]}, max err {best[3]:.3g})")
            results.append(row)
    (args.out / "probe_norms.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
