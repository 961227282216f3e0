"""Plugin kernels on a GPU at real model shapes: each kernel against its NumPy reference, its AOT
PTX launched with cupy exactly as ``aot_kernel`` describes it (grid, block, shared memory and the
int32 arguments between the input and output pointers), and its time against torch.

    python bench/plugins.py --out DIR                 # on the GPU machine
    python bench/plugins.py --emit-ptx DIR            # here, no GPU: PTX for sm_90 from this Triton
    python bench/plugins.py --out DIR --ptx-from DIR  # ...and launch that PTX on the GPU too
    python bench/plugins.py --check-decomposed        # here, no GPU: decomposed_op vs torch_op
    # the issue-14 table (CUDA graphs), every plugin and AttentionPlugin, on the H200:
    python bench/plugins.py --out DIR --dtypes float16,bfloat16 --no-aot [--configs]
    #   --only LayerNormPlugin,AttentionPlugin  --labels ViT  --no-graphs (do_bench only)

Prints a table and writes DIR/plugins.json and DIR/plugins.md. Effective bandwidth counts every
input and output byte once. Comparisons with the reference use a subset of rows when a tensor has
over 2M elements (the ops are row-wise or elementwise).

Two timings per kernel: the median of triton.testing.do_bench (columns ``*_ms``, launched from
Python one call at a time, L2 flushed), and, with ``--graphs`` (the default), a CUDA graph over
rotating buffers (bench/timing.py: no launch overhead, no L2 reuse) against (a) torch eager
(``torch_op``), (b) torch.compile of the op written in elementary torch ops as an exporter emits
it (``decomposed_op``) and of ``torch_op``, the better of the two, and (c) a same-size copy
(``dst.copy_(src)`` reading and writing as many bytes as the kernel does); AttentionPlugin against
torch SDPA's default backend, its flash backend and cuDNN's. Rows under the issue-14 bars (kernel
< 1.0x the better of eager and compile; < 0.8x the copy where a tensor is >= 8 MiB; attention
< 0.9x SDPA's default) are marked MISS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from onnxpass.plugins import get_plugin
from onnxpass.plugins.kernels import (
    add_bias_transpose as abt_kernels,
    aot_kernel,
    gelu as gelu_kernels,
    get_kernel,
    layernorm as ln_kernels,
    masked_softmax as ms_kernels,
    rmsnorm as rms_kernels,
)
from onnxpass.plugins.kernels.base import _driver_ptx_version, launch, np_dtype
from onnxpass.plugins.kernels.check import TOLERANCES, sym, tolerance, value
from onnxpass.verify import error_stats

T0 = time.time()

DTYPES = ["float32", "float16", "bfloat16"]
# (plugin, model and shape, x shape, attrs); LayerNorm over the last dim
CASES = [
    ("LayerNormPlugin", "ViT-B/16 64x197", (64, 197, 768), {"epsilon": 1e-12}),
    ("LayerNormPlugin", "MobileViT-S b64 stage 3", (256, 256, 144), {}),
    ("LayerNormPlugin", "MobileViT-S b64 stage 4", (256, 64, 192), {}),
    ("LayerNormPlugin", "MobileViT-S b64 stage 5", (256, 16, 240), {}),
    ("LayerNormPlugin", "DETR-R50 8x850 encoder", (850, 8, 256), {}),
    ("LayerNormPlugin", "anchor 32768x1024", (32768, 1024), {}),
    # RMSNorm over the last dim: Llama-7B's hidden size at 8192 tokens, ViT-B's rows
    ("RMSNormPlugin", "Llama-7B 8192 tokens", (8192, 4096), {"epsilon": 1e-6}),
    ("RMSNormPlugin", "ViT-B/16 64x197 rows", (64 * 197, 768), {"epsilon": 1e-6}),
    # Llama-7B prefill, Q of 4 sequences x 2048 tokens (B, H, S, D), caches (1, S, D/2)
    ("RotaryEmbeddingPlugin", "Llama-7B Q 4x2048", (4, 32, 2048, 128), {"interleaved": 0}),
    ("RotaryEmbeddingPlugin", "GPT-J-style Q 4x2048, interleaved", (4, 32, 2048, 128),
     {"interleaved": 1}),
    ("GeluPlugin", "ViT-B/16 64x197 MLP", (64, 197, 3072), {"approximate": 0}),
    ("GeluPlugin", "ViT-B/16 64x197 MLP, tanh", (64, 197, 3072), {"approximate": 1}),
    ("GeluPlugin", "anchor 12608x768", (12608, 768), {"approximate": 0}),
    # MST++ (spectral recon.): F.normalize(q, dim=-1) on [b, heads, 31, hw] per stage
    ("L2NormPlugin", "MST++ b20 128x128 stage 1", (20, 1, 31, 16384), {"eps": 1e-12, "mode": 2}),
    ("L2NormPlugin", "MST++ b20 128x128 stage 2", (20, 2, 31, 4096), {"eps": 1e-12, "mode": 2}),
    ("L2NormPlugin", "MST++ b1 482x512 stage 1", (1, 1, 31, 246784), {"eps": 1e-12, "mode": 2}),
    # AnchorDETR-like encoder self-attention over HW ~ 1000 with a key-padding mask [B,1,1,HW]
    ("MaskedSoftmaxPlugin", "AnchorDETR-like 8x8 heads HW=1000", (8, 8, 1000, 1000), {"mode": 1}),
    ("MaskedSoftmaxPlugin", "BERT-base b32 s128, (1-m)*min", (32, 12, 128, 128),
     {"mode": 0, "fill": -3.4028234663852886e38}),
    ("AddBiasTransposePlugin", "ViT-B/16 64x197 Q", (64, 197, 768), {"num_heads": 12}),
    ("AddBiasTransposePlugin", "ViT-B/16 64x197 K^T", (64, 197, 768),
     {"num_heads": 12, "perm": (0, 2, 3, 1)}),
    ("Mask2PosPlugin", "DETR 2x(25x34) y_embed", (2, 25, 34),
     {"axis": 1, "eps": 1e-6, "scale": 6.283185307179586, "invert": 1}),
    ("Mask2PosPlugin", "DETR 2x(25x34) x_embed", (2, 25, 34),
     {"axis": 2, "eps": 1e-6, "scale": 6.283185307179586, "invert": 1}),
]


def shapes_of(plugin: str, x: tuple[int, ...]) -> list[list[int]]:
    if plugin == "LayerNormPlugin":
        return [list(x), [x[-1]], [x[-1]]]
    if plugin == "RMSNormPlugin":
        return [list(x), [x[-1]]]
    if plugin == "RotaryEmbeddingPlugin":
        return [list(x), [1, x[2], x[3] // 2], [1, x[2], x[3] // 2]]
    if plugin == "MaskedSoftmaxPlugin":
        return [list(x), [x[0]] + [1] * (len(x) - 2) + [x[-1]]]
    if plugin == "AddBiasTransposePlugin":
        return [list(x), [x[-1]]]
    return [list(x)]


def dtypes_of(plugin: str, dtype: str, n: int) -> list[str]:
    """Input dtypes: masks are bool."""
    return {"MaskedSoftmaxPlugin": [dtype, "bool"], "Mask2PosPlugin": ["bool"]}.get(
        plugin, [dtype] * n)


def outputs(plugin: str, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    """NaN-filled outputs of the spec's shapes and dtypes."""
    import torch

    spec = get_plugin(plugin)
    shapes = spec.output_shapes([list(t.shape) for t in ins], spec.attr_values(attrs))
    dtypes = spec.output_dtypes([str(t.dtype).removeprefix("torch.") for t in ins])
    return [torch.full(s, float("nan"), dtype=getattr(torch, d), device=ins[0].device)
            for s, d in zip(shapes, dtypes)]


def dynamic(shapes: list[list[int]]) -> tuple[list[list[Any]], dict[str, int]]:
    """The first dim of x symbolic, as TensorRT sees a dynamic batch."""
    return [[sym("batch")] + shapes[0][1:]] + shapes[1:], {"batch": shapes[0][0]}


# -- here, no GPU ------------------------------------------------------------------------------

def emit_ptx(out: Path) -> None:
    from triton.backends.compiler import GPUTarget

    out.mkdir(parents=True, exist_ok=True)
    target, rows = GPUTarget("cuda", 90, 32), []
    for plugin, label, x, attrs in CASES:
        for dtype in DTYPES:
            if dtype not in get_kernel(plugin).dtypes:  # type: ignore[union-attr]
                continue
            shapes = shapes_of(plugin, x)
            for dyn, ptx_version in ((False, 90), (True, 90), (False, 84)):
                s, env = dynamic(shapes) if dyn else (shapes, {})
                a = aot_kernel(plugin, s, dtypes_of(plugin, dtype, len(shapes)), attrs,
                               target=target,
                               ptx_version=ptx_version)
                rows.append({"plugin": plugin, "label": label, "dtype": dtype, "dynamic": dyn,
                             "name": a.name, "ptx": a.ptx, "block": a.block,
                             "shared_mem": a.shared_mem, "grid": [value(g, env) for g in a.grid],
                             "args": [value(v, env) for v in a.args]})
    (out / "manifest.json").write_text(json.dumps(rows))
    print(f"wrote {len(rows)} kernels to {out / 'manifest.json'}")


# -- on the GPU --------------------------------------------------------------------------------

def inputs(plugin: str, shapes: list[list[int]], dtype: str, device: str = "cuda") -> list[Any]:
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    t = getattr(torch, dtype)
    if plugin == "Mask2PosPlugin":  # DETR padding: the bottom rows / right columns of image 0
        m = torch.zeros(shapes[0], dtype=torch.bool, device=device)
        m[0, -3:, :] = True
        m[0, :, -5:] = True
        return [m]
    x = torch.randn(shapes[0], generator=g, device=device).to(t)
    if plugin == "MaskedSoftmaxPlugin":
        mask = torch.rand(shapes[1], generator=g, device=device) < 0.8
        mask.view(-1, shapes[1][-1])[0] = False  # a fully masked row
        return [x, mask]
    if plugin == "AddBiasTransposePlugin":
        return [x, (0.1 * torch.randn(shapes[1], generator=g, device=device)).to(t)]
    if plugin == "LayerNormPlugin":
        n = shapes[1][0]
        return [x, (1 + 0.2 * torch.randn(n, generator=g, device=device)).to(t),
                (0.1 * torch.randn(n, generator=g, device=device)).to(t)]
    if plugin == "RMSNormPlugin":
        return [x, (1 + 0.2 * torch.randn(shapes[1][0], generator=g, device=device)).to(t)]
    if plugin == "RotaryEmbeddingPlugin":  # cos and sin of real angles
        angles = torch.rand(shapes[1], generator=g, device=device) * 100
        return [x, angles.cos().to(t), angles.sin().to(t)]
    return [x]


def to_numpy(t: Any) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).cpu().numpy().view(np_dtype("bfloat16"))
    return t.cpu().numpy()


def against_reference(plugin: str, ins: list[Any], out: Any, attrs: dict[str, Any]) -> Any:
    """On the first entries along dim 0, about 2M elements: every op here is independent along
    dim 0 (inputs with another dim 0, such as biases, are passed whole)."""
    k = get_kernel(plugin)
    n0 = ins[0].shape[0]
    b = max(1, 2_000_000 // max(1, ins[0].numel() // n0)) if ins[0].dim() > 1 else n0
    sub = [to_numpy(t[:b] if t.dim() > 1 and t.shape[0] == n0 else t) for t in ins]
    want = k.reference(*sub, **get_plugin(plugin).attr_values(attrs))[0]  # type: ignore[union-attr]
    got = to_numpy(out[:b])
    dtype = str(out.dtype).removeprefix("torch.")
    return error_stats("y", want.astype(np.float32), got.astype(np.float32), *TOLERANCES[dtype])


class Ptx:
    """A PTX kernel loaded with cupy, launched with explicit grid, block, shared memory and
    arguments: inputs' pointers, int32 args, outputs' pointers (TensorRT's order)."""

    def __init__(self, name: str, ptx: str, block: Any, shared_mem: int) -> None:
        import cupy

        self.module = cupy.cuda.function.Module()
        self.module.load(ptx.encode())
        self.fn = self.module.get_function(name)
        if shared_mem > 48 * 1024:
            self.fn.max_dynamic_shared_size_bytes = shared_mem
        self.block, self.shared_mem = tuple(block), shared_mem

    def __call__(self, grid: list[int], args: list[int], ins: list[Any], outs: list[Any]) -> None:
        params = ([np.uint64(t.data_ptr()) for t in ins] + [np.int32(a) for a in args]
                  + [np.uint64(t.data_ptr()) for t in outs])
        self.fn(tuple(int(g) for g in grid), self.block, tuple(params),
                shared_mem=self.shared_mem)


def bench(fn: Any) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def torch_fn(plugin: str, attrs: dict[str, Any]
             ) -> tuple[Callable[[list[Any]], list[Any]], Callable[..., Any]]:
    """The torch call a user would write instead of the plugin, as ``(prepare, f)``: the op is
    ``f(*prepare(ins))``; ``prepare`` does what a model does once, outside the op (rotary's
    full-width caches), and is not timed."""
    import torch
    import torch.nn.functional as F

    def same(ins: list[Any]) -> list[Any]:
        return ins

    if plugin == "LayerNormPlugin":
        eps = attrs.get("epsilon", 1e-5)
        return same, lambda x, g, b: F.layer_norm(x, x.shape[-1:], g, b, eps)
    if plugin == "RMSNormPlugin":
        eps = attrs.get("epsilon", 1e-5)
        return same, lambda x, g: F.rms_norm(x, x.shape[-1:], g, eps)
    if plugin == "RotaryEmbeddingPlugin":  # HF's eager form; the full-width caches made once
        if attrs.get("interleaved"):
            def caches(ins: list[Any]) -> list[Any]:
                return [ins[0], *(t.repeat_interleave(2, -1)[:, None] for t in ins[1:])]

            def rotate(v: Any) -> Any:
                return torch.stack((-v[..., 1::2], v[..., ::2]), -1).flatten(-2)
        else:
            def caches(ins: list[Any]) -> list[Any]:
                return [ins[0], *(torch.cat((t, t), -1)[:, None] for t in ins[1:])]

            def rotate(v: Any) -> Any:
                half = v.shape[-1] // 2
                return torch.cat((-v[..., half:], v[..., :half]), -1)
        return caches, lambda x, c, s: x * c + rotate(x) * s
    if plugin == "L2NormPlugin":
        axis, eps = attrs.get("axis", -1), attrs["eps"]
        return same, lambda x: F.normalize(x, dim=axis, eps=eps)
    if plugin == "MaskedSoftmaxPlugin":
        fill = attrs.get("fill", float("-inf"))
        if attrs["mode"] == 0:
            return same, lambda x, m: torch.softmax(x + (1 - m.to(x.dtype)) * fill, -1)
        return same, lambda x, m: torch.softmax(x.masked_fill(~m, fill), -1)
    if plugin == "AddBiasTransposePlugin":
        h, perm = attrs["num_heads"], tuple(attrs.get("perm", (0, 2, 1, 3)))
        return same, lambda x, b: (x + b).view(*x.shape[:2], h, x.shape[2] // h).permute(
            perm).contiguous()
    if plugin == "Mask2PosPlugin":
        axis, eps, scale = attrs["axis"], attrs["eps"], attrs["scale"]

        def mask2pos(m: Any) -> Any:
            c = (~m).cumsum(axis, dtype=torch.float32)
            return c / (c.narrow(axis, -1, 1) + eps) * scale
        return same, mask2pos
    approx = "tanh" if attrs.get("approximate") else "none"
    return same, lambda x: F.gelu(x, approximate=approx)


def torch_op(plugin: str, ins: list[Any], attrs: dict[str, Any]) -> Any:
    """A no-argument call of torch_fn's op on ``ins`` (what do_bench times)."""
    prepare, f = torch_fn(plugin, attrs)
    args = prepare(list(ins))
    return lambda: f(*args)


FLT_MAX = 3.4028234663852886e38


def decomposed_fn(plugin: str, attrs: dict[str, Any]) -> Callable[..., Any]:
    """The op in elementary torch ops, as an exporter writes it in ONNX (what torch.compile
    should fuse into one kernel): ``f(*ins)`` on the plugin's inputs. Reductions and the
    masked scores in float32, as the kernels and ONNX Runtime take them."""
    import torch

    v = get_plugin(plugin).attr_values(attrs)
    if plugin == "LayerNormPlugin":
        eps, axis = v["epsilon"], v["axis"]

        def layernorm(x: Any, g: Any, b: Any) -> Any:
            dims = tuple(range(axis % x.dim(), x.dim()))
            xf = x.float()
            d = xf - xf.mean(dims, keepdim=True)
            var = (d * d).mean(dims, keepdim=True)
            return (d * torch.rsqrt(var + eps) * g.float() + b.float()).to(x.dtype)
        return layernorm
    if plugin == "RMSNormPlugin":
        eps, axis = v["epsilon"], v["axis"]

        def rmsnorm(x: Any, g: Any) -> Any:
            dims = tuple(range(axis % x.dim(), x.dim()))
            xf = x.float()
            return (xf * torch.rsqrt((xf * xf).mean(dims, keepdim=True) + eps)
                    * g.float()).to(x.dtype)
        return rmsnorm
    if plugin == "RotaryEmbeddingPlugin":
        interleaved, rd0 = v["interleaved"], v["rotary_embedding_dim"]

        def rotary(x: Any, cos: Any, sin: Any) -> Any:
            rd = rd0 or x.shape[-1]
            c, s = cos[:, None], sin[:, None]  # (B or 1, 1, S, rd/2) against (B, H, S, rd/2)
            if interleaved:  # pairs (2i, 2i+1)
                pairs = x[..., :rd].unflatten(-1, (rd // 2, 2))
                x1, x2 = pairs[..., 0], pairs[..., 1]
                y = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), -1).flatten(-2)
            else:  # rotate half: (i, i + rd/2)
                x1, x2 = x[..., :rd // 2], x[..., rd // 2:rd]
                y = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), -1)
            return torch.cat((y, x[..., rd:]), -1) if rd < x.shape[-1] else y
        return rotary
    if plugin == "GeluPlugin":
        if v["approximate"]:
            k = math.sqrt(2 / math.pi)
            return lambda x: 0.5 * x * (1 + torch.tanh(k * (x + 0.044715 * x.pow(3))))
        return lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    if plugin == "L2NormPlugin":
        eps, axis, mode = v["eps"], v["axis"], v["mode"]

        def l2norm(x: Any) -> Any:
            xf = x.float()
            ss = (xf * xf).sum(axis, keepdim=True)
            if mode == 0:
                d = torch.sqrt(ss + eps)
            else:  # x / max(norm, eps), the norm clipped to FLT_MAX in mode 2
                d = torch.sqrt(ss).clamp_min(eps)
                if mode == 2:
                    d = d.clamp_max(FLT_MAX)
            return (xf / d).to(x.dtype)
        return l2norm
    if plugin == "MaskedSoftmaxPlugin":
        mode, fill, invert = v["mode"], v["fill"], v["invert"]

        def masked_softmax(x: Any, m: Any) -> Any:
            xf = x.float()
            if mode == 0:  # x + (1 - m) * fill (x + m * fill inverted)
                mf = m.float()
                z = xf + (mf if invert else 1 - mf) * fill
            else:
                keep = (m != 0) if m.dtype != torch.bool else m
                keep = ~keep if invert else keep
                z = (xf.masked_fill(~keep, fill) if mode == 1
                     else xf + torch.where(keep, 0.0, fill))
            return torch.softmax(z, -1).to(x.dtype)
        return masked_softmax
    if plugin == "AddBiasTransposePlugin":
        h, perm = v["num_heads"], tuple(v["perm"])

        def add_bias_transpose(x: Any, b: Any) -> Any:
            shape = (*x.shape[:2], h, x.shape[2] // h)
            return (x + b).view(shape).permute(perm).contiguous()
        return add_bias_transpose
    if plugin == "Mask2PosPlugin":
        axis, offset, eps, scale, invert = (v[n] for n in ("axis", "offset", "eps", "scale",
                                                           "invert"))

        def mask2pos(m: Any) -> Any:
            keep = m if m.dtype == torch.bool else m != 0
            c = (~keep if invert else keep).float().cumsum(axis)
            last = c.narrow(axis, c.shape[axis] - 1, 1)
            return (c - offset) / (last + eps) * scale
        return mask2pos
    raise NotImplementedError(f"no decomposed form of {plugin}")


def decomposed_op(plugin: str, ins: list[Any], attrs: dict[str, Any]) -> Any:
    """A no-argument call of decomposed_fn's op on ``ins`` (like torch_op)."""
    f = decomposed_fn(plugin, attrs)
    return lambda: f(*ins)


def small_shape(x: tuple[int, ...]) -> tuple[int, ...]:
    """A CPU-sized version of a bench shape: the last dim kept (rows, heads, axes as they are),
    the one before it at most 64, the others at most 2."""
    if len(x) == 1:
        return x
    return (*(min(d, 2) for d in x[:-2]), min(x[-2], 64), x[-1])


def check_decomposed() -> int:
    """decomposed_op against torch_op on the CPU in float32, every CASES row at small_shape."""
    worst, bad = 0.0, 0
    for plugin, label, x, attrs in CASES:
        xs = x if plugin == "Mask2PosPlugin" else small_shape(x)
        ins = inputs(plugin, shapes_of(plugin, xs), "float32", device="cpu")
        want = torch_op(plugin, ins, attrs)().float()
        got = decomposed_op(plugin, ins, attrs)().float()
        if want.shape != got.shape:
            err = math.inf
        else:
            both_nan = want.isnan() & got.isnan()
            diff = (want - got).abs().masked_fill(both_nan, 0)
            err = float(diff.nan_to_num(math.inf).max()) if diff.numel() else 0.0
        worst, bad = max(worst, err), bad + (not err < 1e-5)
        k = get_kernel(plugin)
        want64 = k.reference(*(t.numpy() for t in ins),  # type: ignore[union-attr]
                             **get_plugin(plugin).attr_values(attrs))[0]
        ref = float(np.nanmax(np.abs(want64.astype(np.float64) - got.numpy())))
        print(f"{plugin:24} {label:40} {'x'.join(map(str, xs)):16} max abs err {err:.2e}"
              f"{'' if err < 1e-5 else '  FAIL'} (vs NumPy reference {ref:.1e})")
    print(f"worst {worst:.2e}; {bad} over 1e-5")
    return 1 if bad else 0


@dataclass
class Options:
    """What a GPU run does besides the do_bench table (main's flags)."""

    graphs: bool = True
    graph_dtypes: tuple[str, ...] = ("float16", "bfloat16")
    configs: bool = False
    compile: str = "both"  # both | decomposed | torch | none
    aot: bool = True
    attention: bool = True  # the AttentionPlugin rows too (with graphs)
    target_mb: int = 256
    rounds: int = 3  # the kernel, eager, compile and copy timed in turn this many times


def progress(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f} s] {msg}", flush=True)


def env_info(torch: Any) -> dict[str, Any]:
    import triton

    env: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                           "triton": triton.__version__,
                           "driver_ptx_version": _driver_ptx_version(),
                           "cuda": torch.version.cuda,
                           "command": shlex.join([Path(sys.executable).name, *sys.argv])}
    try:
        import cupy

        env["cupy"] = cupy.__version__
        env["driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception as exc:  # only the AOT PTX launches need cupy
        env["cupy"] = f"unavailable: {type(exc).__name__}"
        env["driver"] = "?"
    return env


def row_dtypes(k: Any, selected: list[str]) -> list[str]:
    """The selected dtypes the kernel takes; a kernel of no float input dtype among them
    (Mask2Pos: a bool mask in, float32 out) runs in its own."""
    return [d for d in selected if d in k.dtypes] or list(k.dtypes[:1])


def gpu(out_dir: Path, ptx_from: Path | None, sweep: bool, opts: Options | None = None) -> None:
    import torch

    opts = opts or Options(graphs=False)
    env = env_info(torch)
    print(json.dumps(env))
    if opts.graphs:
        setup_compile()
    results: list[dict[str, Any]] = []
    for plugin, label, x, attrs in CASES:
        for dtype in row_dtypes(get_kernel(plugin), DTYPES):
            results.append(case_row(plugin, label, x, attrs, dtype, opts))
            torch.cuda.empty_cache()
        save(out_dir, env, results)
    if opts.graphs and opts.attention:
        results += attention_bench(sweep, opts)
        save(out_dir, env, results)
    print(markdown(env, results))
    if ptx_from is not None:
        results += launch_manifest(ptx_from)
        save(out_dir, env, results)
    if sweep:
        results += sweeps()
        save(out_dir, env, results)


def case_row(plugin: str, label: str, x: tuple[int, ...], attrs: dict[str, Any], dtype: str,
             opts: Options) -> dict[str, Any]:
    """One CASES row: checks and do_bench times (JIT, torch, AOT PTX), then graph_row."""
    import torch

    spec, k = get_plugin(plugin), get_kernel(plugin)
    values = spec.attr_values(attrs)
    shapes = shapes_of(plugin, x)
    r: dict[str, Any] = {"plugin": plugin, "label": label, "shape": list(x), "dtype": dtype,
                         "attrs": values}
    try:
        ins = inputs(plugin, shapes, dtype)
        in_dtypes = dtypes_of(plugin, dtype, len(ins))
        y = outputs(plugin, ins, attrs)[0]
        plan = k.plan(shapes, in_dtypes, values)  # type: ignore[union-attr]
    except Exception as exc:
        r["error"] = f"{type(exc).__name__}: {exc}"[:500]
        print(_line(r), flush=True)
        return r
    nbytes = sum(t.numel() * t.element_size() for t in [*ins, y])
    try:
        launch(plan, ins, [y])
        torch.cuda.synchronize()
        r["jit"] = against_reference(plugin, ins, y, attrs).__dict__
        r["jit_ms"] = bench(lambda: launch(plan, ins, [y]))
        r["torch_ms"] = bench(torch_op(plugin, ins, attrs))
        r["torch"] = against_reference(plugin, ins, torch_op(plugin, ins, attrs)(),
                                       attrs).__dict__
        for kind in ("aot", "aot_dynamic") if opts.aot else ():
            s, e = dynamic(shapes) if kind == "aot_dynamic" else (shapes, {})
            a = aot_kernel(plugin, s, in_dtypes, attrs)
            kern = Ptx(a.name, a.ptx, a.block, a.shared_mem)
            grid, args = [value(g, e) for g in a.grid], [value(v, e) for v in a.args]
            ya = torch.full_like(y, float("nan"))
            kern(grid, args, ins, [ya])
            torch.cuda.synchronize()
            r[kind] = against_reference(plugin, ins, ya, attrs).__dict__
            r[kind + "_equals_jit"] = bool(torch.equal(ya, y))
            r[kind + "_ms"] = bench(lambda: kern(grid, args, ins, [ya]))
            r[kind + "_launch"] = {"grid": grid, "block": list(a.block),
                                   "shared_mem": a.shared_mem, "args": args,
                                   "ptx_version": a.ptx.split(".version ")[1].split()[0]}
        for key in ("jit", "torch", "aot", "aot_dynamic"):
            if key + "_ms" in r:
                r[key + "_GBps"] = nbytes / (r[key + "_ms"] * 1e-3) / 1e9
    except Exception as exc:  # report and go on: one GPU session is all there is
        r["error"] = f"{type(exc).__name__}: {exc}"[:500]
    print(_line(r), flush=True)
    graph_dtypes = set(opts.graph_dtypes)
    if opts.graphs and (dtype in graph_dtypes or not set(k.dtypes) & graph_dtypes):  # type: ignore
        try:
            r["graph"] = graph_row(plugin, label, dtype, ins, y, plan, attrs,
                                   (shapes, in_dtypes, values), opts)
        except Exception as exc:
            r["graph"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        progress(_graph_line(r))
    return r


# -- CUDA-graph timing: kernel, torch eager, torch.compile, copy --------------------------------

BIG_TENSOR = 8 << 20  # bytes: from here a kernel must reach 0.8x a same-size copy
_COMPILED: dict[tuple[Any, ...], Any] = {}


def setup_compile() -> None:
    """torch.compile once per (plugin, shape, dtype, form), never again per buffer: static
    shapes, and room in dynamo's cache for every row (the forms' code objects are shared by the
    rows, each row a cache entry: over the default limit of 8, dynamo would fall back to eager)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name, v in (("cache_size_limit", 4096), ("recompile_limit", 4096),
                    ("accumulated_cache_size_limit", 65536),
                    ("accumulated_recompile_limit", 65536), ("automatic_dynamic_shapes", False)):
        if hasattr(cfg, name):
            setattr(cfg, name, v)


def compiled(key: tuple[Any, ...], f: Callable[..., Any]) -> Any:
    import torch

    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(f, dynamic=False, fullgraph=True, mode="default")
    return _COMPILED[key]


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def kernel_configs(plugin: str) -> list[dict[str, Any]]:
    """The kernel module's CONFIGS (plan keyword arguments to try), if it has any."""
    k = get_kernel(plugin)
    module = sys.modules.get(getattr(k.plan, "__module__", ""))  # type: ignore[union-attr]
    return list(getattr(module, "CONFIGS", None) or [])


def sweep_configs(g: dict[str, Any], plugin: str, planned: tuple[Any, Any, Any],
                  make: Callable[[int], Any], rotations: int) -> None:
    """Time each of the kernel's CONFIGS in the graph (g["configs"]) and name the fastest
    (g["best_config"]); a config its plan does not take is skipped, one that fails recorded,
    and one whose launch an earlier config already gave (a plan may ignore a keyword at some
    shapes, say L2Norm's split where the rows kernel runs) is marked ``same_as`` that one."""
    shapes, dtypes, values = planned
    g["configs"] = []
    seen: dict[str, dict[str, Any]] = {}
    for cfg in kernel_configs(plugin):
        c: dict[str, Any] = {"config": cfg}
        try:
            pl = get_kernel(plugin).plan(shapes, dtypes, values, **cfg)  # type: ignore[union-attr]
        except TypeError as exc:  # the plan takes no such keyword
            c["skipped"] = str(exc)[:200]
        except Exception as exc:
            c["error"] = f"{type(exc).__name__}: {exc}"[:200]
        else:
            key = repr((pl.kernel.__name__, [str(d) for d in pl.grid], [str(a) for a in pl.args],
                        sorted(pl.constexprs.items()), pl.num_warps, pl.num_stages))
            if key in seen:
                c["same_as"] = seen[key]
            else:
                seen[key] = cfg
                _time(c, "kernel", lambda i_, o_, pl=pl: launch(pl, i_, o_), make, rotations)
        g["configs"].append(c)
    ok = [c for c in g["configs"] if "kernel_us" in c]
    if ok:
        g["best_config"] = min(ok, key=lambda c: c["kernel_us"])


def _time(g: dict[str, Any], name: str, fn: Callable[..., Any],
          make: Callable[[int], Any], rotations: int) -> None:
    """g[name + '_us'] (and its spread), or g['errors'][name]: one failure stops nothing."""
    from bench.timing import graph_stats

    try:
        st = graph_stats(fn, make, rotations)
        g[name + "_us"] = st["us"]
        g[name + "_spread_us"] = [st["min_us"], st["max_us"]]
    except Exception as exc:
        g.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:300]


def _time_rounds(g: dict[str, Any], timed: list[tuple[str, Callable[..., Any],
                                                       Callable[[int], Any]]],
                 rotations: int, rounds: int) -> None:
    """Each of ``timed`` (name, fn, make) timed in turn, ``rounds`` times over: g[name + '_us']
    is the median of the rounds, g[name + '_rounds'] each round's. Timed one after the other
    once, whatever came last gained about 1% (a 1.008x kernel read 0.99x: L2Norm at MST++ b20,
    bench/probe_kernels.py --parts ties); in turns, no one is always last."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in timed}
    for _ in range(max(1, rounds)):
        for name, fn, make in timed:
            if name in g.get("errors", {}):
                continue
            st: dict[str, Any] = {}
            _time(st, name, fn, make, rotations)
            if "errors" in st:
                g.setdefault("errors", {}).update(st["errors"])
            else:
                runs[name].append(st)
    for name, got in runs.items():
        if got:
            us = [r[name + "_us"] for r in got]
            g[name + "_us"] = statistics.median(us)
            g[name + "_rounds"] = us
            g[name + "_spread_us"] = [min(r[name + "_spread_us"][0] for r in got),
                                      max(r[name + "_spread_us"][1] for r in got)]


def graph_row(plugin: str, label: str, dtype: str, ins: list[Any], y: Any, plan: Any,
              attrs: dict[str, Any], planned: tuple[Any, Any, Any], opts: Options
              ) -> dict[str, Any]:
    """One CASES row in CUDA graphs over rotating buffers: the kernel (and its module's
    CONFIGS), torch eager, torch.compile of decomposed_fn and of torch_fn, a same-size copy."""
    import torch

    from bench.timing import l2_bytes, rotations_for

    tensors = [*ins, y]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    rot = rotations_for(nbytes, opts.target_mb << 20)
    g: dict[str, Any] = {"rotations": rot, "bytes": nbytes,
                         "largest_bytes": max(t.numel() * t.element_size() for t in tensors)}
    g["l2_resident"] = rot * nbytes < 2 * l2_bytes()

    def clones(i: int) -> list[Any]:
        return [t.clone() for t in ins]

    if opts.configs:
        sweep_configs(g, plugin, planned, lambda i: (clones(i), [torch.empty_like(y)]), rot)
    prepare, f = torch_fn(plugin, attrs)
    timed: list[tuple[str, Callable[..., Any], Callable[[int], Any]]] = [
        ("kernel", lambda i_, o_: launch(plan, i_, o_),
         lambda i: (clones(i), [torch.empty_like(y)])),
        ("eager", f, lambda i: prepare(clones(i)))]
    forms = {"both": ("decomposed", "torch"), "none": ()}.get(opts.compile, (opts.compile,))
    for form in forms:
        fn = decomposed_fn(plugin, attrs) if form == "decomposed" else f
        make = clones if form == "decomposed" else (lambda i: prepare(clones(i)))
        try:
            cf = compiled((plugin, label, dtype, form), fn)
        except Exception as exc:
            g.setdefault("errors", {})["compile_" + form] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        before, t = _dynamo_graphs(), time.time()
        try:
            cf(*make(0))  # torch.compile compiles (and autotunes) here, outside the timing
        except Exception as exc:
            g.setdefault("errors", {})["compile_" + form] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        g[f"compile_{form}_graphs"] = _dynamo_graphs() - before  # 1 (or 0, cached): no more
        g[f"compile_{form}_s"] = time.time() - t
        timed.append(("compile_" + form, cf, make))
    half = max(16, nbytes // 2 // 16 * 16)  # read + written = the kernel's bytes
    # 8-byte words: torch's copy of uint8 elements runs at about 2/3 of the bandwidth
    timed.append(("copy", lambda s, d: d.copy_(s),
                  lambda i: (torch.zeros(half // 8, dtype=torch.int64, device="cuda"),
                             torch.empty(half // 8, dtype=torch.int64, device="cuda"))))
    _time_rounds(g, timed, rot, opts.rounds)
    compile_us = [g[k] for k in ("compile_decomposed_us", "compile_torch_us") if k in g]
    if compile_us:
        g["compile_us"] = min(compile_us)
    if "kernel_us" in g:
        kus = g["kernel_us"]
        g["TBps"] = nbytes / kus / 1e6
        for name in ("eager", "compile", "copy"):
            if name + "_us" in g:
                g["vs_" + name] = g[name + "_us"] / kus
        best = [g[k] for k in ("eager_us", "compile_us") if k in g]
        if best:
            g["vs_torch"] = min(best) / kus
        miss = []
        if g.get("vs_torch", math.inf) < 1.0:
            miss.append(f"{g['vs_torch']:.2f}x torch")
        if g["largest_bytes"] >= BIG_TENSOR and g.get("vs_copy", math.inf) < 0.8:
            miss.append(f"{g['vs_copy']:.2f}x copy")
        g["miss"] = miss
    return g


def _graph_line(r: dict[str, Any]) -> str:
    g = r.get("graph", {})
    head = f"{r['plugin']} {r['label']} {r['dtype']}"
    if "kernel_us" not in g:
        return f"{head}: graph ERROR {g.get('error') or g.get('errors')}"
    parts = [f"kernel {g['kernel_us']:.1f} us {g['TBps']:.2f} TB/s"]
    for name in ("eager", "compile_decomposed", "compile_torch", "copy"):
        if name + "_us" in g:
            parts.append(f"{name} {g[name + '_us']:.1f} us")
    parts += [f"vs {n} {g['vs_' + n]:.2f}x" for n in ("eager", "compile", "copy")
              if "vs_" + n in g]
    if "best_config" in g:
        parts.append(f"best config {g['best_config']['config']} "
                     f"{g['best_config']['kernel_us']:.1f} us")
    if g.get("errors"):
        parts.append(f"errors {sorted(g['errors'])}")
    return f"{head}: {'; '.join(parts)}{' MISS ' + ', '.join(g['miss']) if g['miss'] else ''}"


def save(out_dir: Path, env: dict[str, Any], results: list[dict[str, Any]]) -> None:
    (out_dir / "plugins.json").write_text(json.dumps({"env": env, "results": results}, indent=1))
    (out_dir / "plugins.md").write_text(markdown(env, results))


def launch_manifest(path: Path) -> list[dict[str, Any]]:
    """PTX compiled elsewhere (the CI's Triton), launched here and checked."""
    import torch

    out = []
    for m in json.loads((path / "manifest.json").read_text()):
        r = {"manifest": True, **{k: m[k] for k in ("plugin", "label", "dtype", "dynamic")},
             "ptx_version": m["ptx"].split(".version ")[1].split()[0]}
        try:
            x = next(c[2] for c in CASES if c[0] == m["plugin"] and c[1] == m["label"])
            attrs = next(c[3] for c in CASES if c[0] == m["plugin"] and c[1] == m["label"])
            ins = inputs(m["plugin"], shapes_of(m["plugin"], x), m["dtype"])
            y = outputs(m["plugin"], ins, attrs)[0]
            kern = Ptx(m["name"], m["ptx"], m["block"], m["shared_mem"])
            kern(m["grid"], m["args"], ins, [y])
            torch.cuda.synchronize()
            r["check"] = against_reference(m["plugin"], ins, y, attrs).__dict__
        except Exception as exc:
            r["error"] = f"{type(exc).__name__}: {exc}"[:500]
        out.append(r)
        ok = r.get("check", {}).get("within")
        print(f"manifest {m['plugin']} {m['label']} {m['dtype']} dyn={m['dynamic']} "
              f"ptx {r['ptx_version']}: {'ok' if ok else r.get('error') or 'MISMATCH'}", flush=True)
    return out


def sweeps() -> list[dict[str, Any]]:
    """float16 launch configurations around the defaults."""

    out = []
    for plugin, label, x, attrs in CASES:
        if plugin not in ("LayerNormPlugin", "RMSNormPlugin", "GeluPlugin",
                          "MaskedSoftmaxPlugin", "AddBiasTransposePlugin"):
            continue
        shapes = shapes_of(plugin, x)
        ins = inputs(plugin, shapes, "float16")
        y = outputs(plugin, ins, attrs)[0]
        values = get_plugin(plugin).attr_values(attrs)
        in_dtypes = dtypes_of(plugin, "float16", len(ins))
        nbytes = sum(t.numel() * t.element_size() for t in [*ins, y])
        if plugin in ("LayerNormPlugin", "RMSNormPlugin"):
            configs = [{"rows_per_program": r, "num_warps": w} for r in (1, 2, 4, 8, 16)
                       for w in (4, 8)]
            make = ln_kernels.plan if plugin == "LayerNormPlugin" else rms_kernels.plan
        elif plugin == "GeluPlugin":
            if attrs.get("approximate"):
                continue
            configs = [{"block": b, "num_warps": w} for b in (1024, 2048, 4096, 8192, 16384)
                       for w in (4, 8, 16) if b // (32 * w) >= 4]
            make = gelu_kernels.plan
        elif plugin == "MaskedSoftmaxPlugin":
            configs = [{"rows_per_program": r, "num_warps": w} for r in (1, 2, 4, 8, 16, 32)
                       for w in (2, 4, 8, 16) if r * x[-1] <= 16384]
            make = ms_kernels.plan
        else:
            configs = [{"block_s": b, "num_warps": w} for b in (16, 32, 64, 128, 256)
                       for w in (2, 4, 8)]
            make = abt_kernels.plan
        for c in configs:
            try:
                plan = make(shapes, in_dtypes, values, **c)
                if plan.kernel.__name__ in ("layernorm_rows", "rmsnorm_rows") and \
                        plan.constexprs["BLOCK_N"] * plan.constexprs["ROWS"] > 32768:
                    continue
                ms = bench(lambda: launch(plan, ins, [y]))
                out.append({"sweep": True, "plugin": plugin, "label": label, **c, "ms": ms,
                            "GBps": nbytes / (ms * 1e-3) / 1e9})
            except Exception as exc:
                out.append({"sweep": True, "plugin": plugin, "label": label, **c,
                            "error": f"{type(exc).__name__}: {exc}"[:300]})
        mine = [r for r in out if r["label"] == label and "ms" in r]
        for r in sorted(mine, key=lambda r: r["ms"])[:4]:
            print(f"sweep {label}: {r}", flush=True)
    return out


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['plugin']} {r['label']} {r['dtype']}: ERROR {r['error']}"
    aot = (f"aot {r['aot_GBps']:5.0f} aot-dyn {r['aot_dynamic_GBps']:5.0f} "
           if "aot_GBps" in r else "")
    ok = r["jit"]["within"] and r.get("aot", {"within": True})["within"]
    return (f"{r['plugin']:15} {r['label']:26} {r['dtype']:8} torch {r['torch_GBps']:5.0f} "
            f"jit {r['jit_GBps']:5.0f} {aot}GB/s; rel max jit {r['jit']['rel_max']:.1e}"
            + (f" aot {r['aot']['rel_max']:.1e}" if "aot" in r else "") + f"; ok {ok}")


def _x(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"


def _f(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def graph_markdown(results: list[dict[str, Any]]) -> list[str]:
    """The issue-14 table: one per plugin, from the rows timed in CUDA graphs."""
    rows = [r for r in results if "graph" in r and not r.get("attention")]
    att = [r for r in results if r.get("attention") and "graph" in r]
    if not rows and not att:
        return []
    lines = ["Time: one call in a CUDA graph over rotating copies of its buffers (together >= "
             "256 MB or 4 copies: no launch overhead, no L2 reuse), median of the replays. "
             "TB/s: input + output bytes / time. vs X: X's time / the kernel's (> 1: the kernel "
             "is faster). eager: the torch call a user writes (torch_op); compile: the better of "
             "torch.compile (mode default, static shapes) of the op decomposed as an exporter "
             "writes it and of the torch call; copy: dst.copy_(src) reading and writing the "
             "kernel's bytes. MISS: under 1.0x the better of eager and compile, or under 0.8x "
             "the copy where a tensor is >= 8 MiB"
             + (", or attention under 0.9x SDPA's default backend" if att else "") + ".", ""]
    configs = any("best_config" in r["graph"] for r in rows)
    for plugin in dict.fromkeys(r["plugin"] for r in rows):
        lines += [f"### {plugin}", "",
                  "| model, shape | dtype | kernel us | TB/s | vs eager | vs compile | vs copy "
                  "| MISS | reason |" + (" best config: us |" if configs else ""),
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"
                  + (" --- |" if configs else "")]
        for r in (r for r in rows if r["plugin"] == plugin):
            g, shape = r["graph"], "x".join(map(str, r["shape"]))
            if "kernel_us" not in g:
                err = g.get("error") or "; ".join(f"{k}: {v}" for k, v in g.get("errors",
                                                                                 {}).items())
                lines.append(f"| {r['label']}, {shape} | {r['dtype']} | error: "
                             f"{err[:100]} | | | | | | |" + (" |" if configs else ""))
                continue
            best = g.get("best_config")
            lines.append(
                f"| {r['label']}, {shape} | {r['dtype']} | {g['kernel_us']:.1f} | "
                f"{g['TBps']:.2f} | {_x(g.get('vs_eager'))} | {_x(g.get('vs_compile'))} | "
                f"{_x(g.get('vs_copy'))} | {'MISS: ' + ', '.join(g['miss']) if g['miss'] else ''}"
                " | |" + (f" {best['config']}: {best['kernel_us']:.1f} |" if best else
                          (" |" if configs else "")))
        errs = [(r, r["graph"]["errors"]) for r in rows
                if r["plugin"] == plugin and r["graph"].get("errors")]
        lines += [""] + [f"- {r['label']} {r['dtype']}: {k}: {v}" for r, e in errs
                         for k, v in e.items()] + ([""] if errs else [])
    if att:
        lines += ["### AttentionPlugin", "",
                  "| model, q / k shape | dtype | kernel us | TFLOP/s | vs SDPA | vs flash | "
                  "vs cuDNN | MISS | reason |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        notes = []
        for r in att:
            g = r["graph"]
            shape = f"{'x'.join(map(str, r['q']))} / {'x'.join(map(str, r['k']))}"
            if "kernel_us" not in g:
                lines.append(f"| {r['label']}, {shape} | {r['dtype']} | error: "
                             f"{str(g.get('error') or g.get('errors'))[:100]} | | | | | | |")
                continue
            lines.append(
                f"| {r['label']}, {shape} | {r['dtype']} | {g['kernel_us']:.1f} | "
                f"{g['TFLOPs']:.0f} | {_x(g.get('vs_sdpa'))} | "
                f"{_x(g.get('vs_flash')) or 'n/a'} | {_x(g.get('vs_cudnn')) or 'n/a'} | "
                f"{'MISS: ' + ', '.join(g['miss']) if g['miss'] else ''} | |")
            for k, v in g.get("errors", {}).items():
                notes.append(f"- {r['label']} {r['dtype']}: {k}: {v}")
        lines += [""] + notes + ([""] if notes else [])
    return lines


def markdown(env: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = []
    if env.get("command"):
        lines += [f"`{env['command']}`", ""]
    lines += [f"{env['gpu']}, torch {env['torch']}, Triton {env['triton']}, CUDA "
              f"{env.get('cuda')}, driver {env['driver']}.", ""]
    lines += graph_markdown(results)
    lines += ["Time: median of triton.testing.do_bench; GB/s: input + output bytes / time.", "",
              "| op | model, x shape | dtype | torch ms | torch GB/s | Triton JIT GB/s | AOT PTX "
              "GB/s | AOT, dynamic batch GB/s | max rel err JIT / AOT (within tol) |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        if r.get("sweep") or r.get("manifest") or r.get("attention"):
            continue
        shape = "x".join(map(str, r["shape"]))
        if "error" in r:
            lines.append(f"| {r['plugin']} | {r['label']}, {shape} | {r['dtype']} | error: "
                         f"{r['error'][:80]} | | | | | |")
            continue
        ok = r["jit"]["within"] and all(r[k]["within"] for k in ("aot", "aot_dynamic")
                                        if k in r)
        aot_err = f"{r['aot']['rel_max']:.1e}" if "aot" in r else "-"
        lines.append(
            f"| {r['plugin']} | {r['label']}, {shape} | {r['dtype']} | {r['torch_ms']:.4f} | "
            f"{r['torch_GBps']:.0f} | {r['jit_GBps']:.0f} | {_f(r.get('aot_GBps'), '.0f')} | "
            f"{_f(r.get('aot_dynamic_GBps'), '.0f')} | {r['jit']['rel_max']:.1e} / {aot_err}"
            f" ({'yes' if ok else 'NO'}) |")
    att = [r for r in results if r.get("attention")]
    if att:
        lines += ["", "AttentionPlugin, do_bench:", ""]
        for r in att:
            if "error" in r:
                lines.append(f"- {r['label']} {r['dtype']}: error: {r['error'][:100]}")
            else:
                aot = f"AOT {r['aot_ms']:.4f} ms, " if "aot_ms" in r else ""
                # max abs error and the tolerance verdict: a relative max is unbounded where
                # the reference output is near 0
                lines.append(f"- {r['label']} {r['dtype']}: SDPA {r['torch_ms']:.4f} ms, JIT "
                             f"{r['jit_ms']:.4f} ms, {aot}{r['jit_vs_torch']:.2f}x SDPA, max abs "
                             f"err {r['jit']['abs_max']:.1e} "
                             f"({'within' if r['jit']['within'] else 'OUT OF'} tolerance)")
    return "\n".join(lines) + "\n"


# -- AttentionPlugin: time against torch's scaled_dot_product_attention ---------------------

# (model and shape, q, k (v like k), mask shape or None)
ATTENTION_CASES = [
    ("ViT-B/16 64x197, padding mask", (64, 12, 197, 64), (64, 12, 197, 64), (64, 1, 1, 197)),
    ("ViT-B/16 64x197, no mask", (64, 12, 197, 64), (64, 12, 197, 64), None),
    ("DETR-R50 b8 encoder 850, padding mask", (8, 8, 850, 32), (8, 8, 850, 32), (8, 1, 1, 850)),
    ("DETR-R50 b8 decoder cross 100x850, mask", (8, 8, 100, 32), (8, 8, 850, 32),
     (8, 1, 1, 850)),
    ("16x8x4096x64, no mask", (16, 8, 4096, 64), (16, 8, 4096, 64), None),
]

ATTENTION_SWEEP = {ATTENTION_CASES[i][0] for i in (0, 2, 4)}


def attention_inputs(q: Any, k: Any, mask: Any, dtype: str) -> list[Any]:
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    t = getattr(torch, dtype)
    ins = [torch.randn(s, generator=g, device="cuda").to(t) for s in (q, k, k)]
    if mask is None:
        return ins + [torch.zeros((), device="cuda", dtype=t)]
    m = torch.zeros(mask, device="cuda", dtype=t)
    for b in range(mask[0]):  # batch b pads its last (b * 7) % (L // 3) keys
        n = (b * 7) % (mask[-1] // 3)
        if n:
            m[b, ..., -n:] = float("-inf")
    return ins + [m]


def attention_bench(sweep: bool, opts: Options | None = None) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from onnxpass.plugins.kernels import attention as att

    opts = opts or Options(graphs=False)
    if opts.graphs:
        setup_compile()
    out: list[dict[str, Any]] = []
    kspec = get_kernel("AttentionPlugin")
    for label, q, k, mask in ATTENTION_CASES:
        for dtype in [d for d in DTYPES if d in kspec.dtypes]:  # type: ignore[union-attr]
            r: dict[str, Any] = {"attention": True, "label": label, "dtype": dtype,
                                 "q": list(q), "k": list(k), "mask": mask}
            try:
                ins = attention_inputs(q, k, mask, dtype)
                # no mask: has_mask 0, as the attention pass writes it (the folded softmax)
                attrs = {"scale": q[-1] ** -0.5, "has_mask": int(mask is not None)}
                flops = 2 * q[0] * q[1] * q[2] * k[2] * (q[3] + k[3])
                values = get_plugin("AttentionPlugin").attr_values(attrs)
                shapes, dts = [list(t.shape) for t in ins], [dtype] * 4
                y = torch.empty(*q[:-1], k[-1], device="cuda", dtype=ins[0].dtype)
                plan = att.plan(shapes, dts, values)
                launch(plan, ins, [y])
                torch.cuda.synchronize()
                n = min(2, q[0])  # reference on the first batches
                sub = [to_numpy(t[:n] if t.dim() and t.shape[0] > 1 else t) for t in ins]
                want = att.reference(*sub, **values)[0]
                r["jit"] = error_stats("y", want.astype(np.float32),
                                       to_numpy(y[:n]).astype(np.float32),
                                       *tolerance(get_kernel("AttentionPlugin"), dtype)
                                       ).__dict__
                am = None if mask is None else ins[3]
                sdpa = lambda: F.scaled_dot_product_attention(
                    ins[0], ins[1], ins[2], attn_mask=am, scale=attrs["scale"])
                r["torch_ms"] = bench(sdpa)
                r["jit_ms"] = bench(lambda: launch(plan, ins, [y]))
                if opts.aot:
                    a = aot_kernel("AttentionPlugin", shapes, dts, attrs)
                    kern = Ptx(a.name, a.ptx, a.block, a.shared_mem)
                    ya = torch.full_like(y, float("nan"))
                    kern([int(g) for g in a.grid], [int(v) for v in a.args], ins, [ya])
                    torch.cuda.synchronize()
                    r["aot_equals_jit"] = bool(torch.equal(ya, y))
                    r["aot_ms"] = bench(lambda: kern([int(g) for g in a.grid],
                                                     [int(v) for v in a.args], ins, [ya]))
                    r["shared_mem"] = a.shared_mem
                for key in ("torch", "jit", "aot"):
                    if key + "_ms" in r:
                        r[key + "_TFLOPs"] = flops / (r[key + "_ms"] * 1e-3) / 1e12
                r["jit_vs_torch"] = r["torch_ms"] / r["jit_ms"]
                if sweep and dtype == "float16" and label in ATTENTION_SWEEP:
                    r["sweep"] = []
                    for bm, bn, w in ((64, 32, 4), (64, 64, 4), (128, 64, 8), (128, 64, 4),
                                      (128, 32, 8), (128, 32, 4), (128, 128, 8), (64, 128, 4)):
                        for st in (1, 2, 3, 4):
                            c = {"block_m": bm, "block_n": bn, "num_warps": w,
                                 "num_stages": st, "p_split": False}
                            try:
                                pl = att.plan(shapes, dts, values, **c)
                                ck = pl.kernel.compiled[tuple(int(g) for g in pl.grid)](
                                    *ins, *(int(a) for a in pl.args), y, num_warps=w,
                                    num_stages=st, **pl.constexprs)
                                c["shared"] = ck.metadata.shared
                                c["ms"] = bench(lambda: launch(pl, ins, [y]))
                            except Exception as exc:
                                c["error"] = f"{type(exc).__name__}: {exc}"[:200]
                            r["sweep"].append(c)
                            if "ms" in c:
                                print(f"  sweep {c}", flush=True)
                    ok = [c for c in r["sweep"] if "ms" in c]
                    r["sweep_best"] = min(ok, key=lambda c: c["ms"])
                    r["sweep_best_48k"] = min((c for c in ok if c["shared"] <= 48 * 1024),
                                              key=lambda c: c["ms"], default=None)
            except Exception as exc:
                r["error"] = f"{type(exc).__name__}: {exc}"[:500]
            out.append(r)
            if "error" in r:
                print(f"AttentionPlugin {label} {dtype}: ERROR {r['error']}", flush=True)
            else:
                print(f"AttentionPlugin {label:42} {dtype:8} torch {r['torch_ms']:.4f} ms "
                      f"jit {r['jit_ms']:.4f} aot {_f(r.get('aot_ms'), '.4f')} "
                      f"({r['jit_vs_torch']:.2f}x torch; {r['jit_TFLOPs']:.0f} TFLOP/s) rel max "
                      f"{r['jit']['rel_max']:.1e} ok {r['jit']['within']} aot==jit "
                      f"{r.get('aot_equals_jit')} smem {r.get('shared_mem')} best "
                      f"{r.get('sweep_best')} best<=48K {r.get('sweep_best_48k')}", flush=True)
            if opts.graphs and dtype in opts.graph_dtypes and "jit" in r:
                try:
                    r["graph"] = attention_graph_row(ins, y, plan, attrs["scale"], mask is not None,
                                                     flops, (shapes, dts, values), opts)
                except Exception as exc:
                    r["graph"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                progress(f"AttentionPlugin {label} {dtype}: {_attention_line(r['graph'])}")
            ins = y = None  # type: ignore[assignment]  # freed before the next case
            torch.cuda.empty_cache()
    return out


ATTENTION_BACKENDS = ("sdpa", "flash", "cudnn", "efficient")


def _attention_line(g: dict[str, Any]) -> str:
    if "kernel_us" not in g:
        return f"graph ERROR {g.get('error') or g.get('errors')}"
    parts = [f"kernel {g['kernel_us']:.1f} us {g['TFLOPs']:.0f} TFLOP/s"]
    parts += [f"{n} {g[n + '_us']:.1f} us ({g['vs_' + n]:.2f}x)" for n in ATTENTION_BACKENDS
              if n + "_us" in g]
    if "best_config" in g:
        parts.append(f"best config {g['best_config']['config']} "
                     f"{g['best_config']['kernel_us']:.1f} us")
    if g.get("errors"):
        parts.append(f"errors {g['errors']}")
    return "; ".join(parts) + (f" MISS {', '.join(g['miss'])}" if g["miss"] else "")


def attention_graph_row(ins: list[Any], y: Any, plan: Any, scale: float, masked: bool,
                        flops: int, planned: tuple[Any, Any, Any], opts: Options
                        ) -> dict[str, Any]:
    """One attention case in CUDA graphs over rotating buffers: the kernel (and the attention
    module's CONFIGS) against SDPA's default backend, flash, cuDNN and memory-efficient; a
    backend that refuses the case is recorded with torch's reasons."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench.timing import rotations_for

    tensors = [*ins, y]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    rot = rotations_for(nbytes, opts.target_mb << 20)
    g: dict[str, Any] = {"rotations": rot, "bytes": nbytes}

    def clones(i: int) -> list[Any]:
        return [t.clone() for t in ins]

    def make_sdpa(backend: Any) -> Callable[..., Any]:
        def f(q: Any, k: Any, v: Any, m: Any) -> Any:
            am = m if masked else None
            if backend is None:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=am, scale=scale)
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=am, scale=scale)
        return f

    _time(g, "kernel", lambda i_, o_: launch(plan, i_, o_),
          lambda i: (clones(i), [torch.empty_like(y)]), rot)
    if opts.configs:
        sweep_configs(g, "AttentionPlugin", planned,
                      lambda i: (clones(i), [torch.empty_like(y)]), rot)
    backends = {"sdpa": None, "flash": SDPBackend.FLASH_ATTENTION,
                "cudnn": getattr(SDPBackend, "CUDNN_ATTENTION", None),
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    for name, backend in backends.items():
        if name != "sdpa" and backend is None:
            g.setdefault("errors", {})[name] = "not in this torch"
            continue
        f = make_sdpa(backend)
        with warnings.catch_warnings(record=True) as caught:  # why a backend refuses
            warnings.simplefilter("always")
            try:
                f(*ins)
                torch.cuda.synchronize()
            except Exception as exc:
                why = "; ".join(dict.fromkeys(str(w.message) for w in caught))
                g.setdefault("errors", {})[name] = f"refused: {why or exc}"[:400]
                continue
        _time(g, name, f, clones, rot)
    if "kernel_us" in g:
        kus = g["kernel_us"]
        g["TFLOPs"] = flops / kus / 1e6
        for name in backends:
            if name + "_us" in g:
                g["vs_" + name] = g[name + "_us"] / kus
        g["miss"] = ([f"{g['vs_sdpa']:.2f}x SDPA"] if g.get("vs_sdpa", math.inf) < 0.9 else [])
    return g





def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("."))
    p.add_argument("--emit-ptx", type=Path, help="compile PTX for sm_90 here (no GPU) and stop")
    p.add_argument("--ptx-from", type=Path, help="also launch the PTX an --emit-ptx run wrote")
    p.add_argument("--sweep", action="store_true", help="time float16 launch configurations")
    p.add_argument("--plugins", help="only these plugins, comma-separated (default: all)")
    p.add_argument("--only", help="only these plugins, comma-separated, AttentionPlugin "
                   "included (default: all)")
    p.add_argument("--attention", action="store_true", help="only AttentionPlugin, vs SDPA")
    p.add_argument("--dtypes", help="only these dtypes, comma-separated (default: all three in "
                   "the do_bench table, float16,bfloat16 in the graph table)")
    p.add_argument("--labels", help="only cases whose label contains one of these, comma-separated")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="time in CUDA graphs over rotating buffers against torch eager, "
                   "torch.compile and a same-size copy (and SDPA's backends); --no-graphs: the "
                   "do_bench table only, as before")
    p.add_argument("--configs", action="store_true", help="also time each config of a kernel "
                   "module's CONFIGS (plan keyword arguments) in the graph; report the best")
    p.add_argument("--compile", choices=("both", "decomposed", "torch", "none"), default="both",
                   help="what torch.compile compiles for the graph table (default: both the "
                   "decomposed op and torch_op, the better one counts)")
    p.add_argument("--aot", action=argparse.BooleanOptionalAction, default=True,
                   help="compile and launch the AOT PTX (--no-aot saves a minute or two)")
    p.add_argument("--rounds", type=int, default=3,
                   help="time the kernel and its peers in turn this many times (median)")
    p.add_argument("--rotate-mb", type=int, default=256,
                   help="rotating buffers of a graph together at least this many MB (>= 4 sets)")
    p.add_argument("--check-decomposed", action="store_true",
                   help="CPU, float32: decomposed_op against torch_op at small shapes, and stop")
    args = p.parse_args()
    if args.check_decomposed:
        return check_decomposed()
    graph_dtypes = ("float16", "bfloat16")
    if args.dtypes:
        DTYPES[:] = [d for d in DTYPES if d in args.dtypes.split(",")]
        graph_dtypes = tuple(DTYPES)
    if args.labels:
        CASES[:] = [c for c in CASES if any(w in c[1] for w in args.labels.split(","))]
        ATTENTION_CASES[:] = [c for c in ATTENTION_CASES
                              if any(w in c[0] for w in args.labels.split(","))]
    only = set((args.only or args.plugins or "").split(",")) - {""}
    if only:
        CASES[:] = [c for c in CASES if c[0] in only]
    opts = Options(graphs=args.graphs, graph_dtypes=graph_dtypes, configs=args.configs,
                   compile=args.compile, aot=args.aot,
                   attention=not only or "AttentionPlugin" in only, target_mb=args.rotate_mb,
                   rounds=args.rounds)
    t0 = time.time()
    if args.emit_ptx:
        emit_ptx(args.emit_ptx)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        # Inductor's compiled kernels next to the results: a second run compiles nothing
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((args.out / "inductor").resolve()))
        if args.attention:
            import torch

            rows = attention_bench(args.sweep, opts)
            (args.out / "attention.json").write_text(json.dumps(rows, indent=1))
            if args.graphs:
                (args.out / "attention.md").write_text(markdown(env_info(torch), rows))
        else:
            gpu(args.out, args.ptx_from, args.sweep, opts)
    print(f"{time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
