"""Plugin kernels on a GPU at real model shapes: each kernel against its NumPy reference, its AOT
PTX launched with cupy exactly as ``aot_kernel`` describes it (grid, block, shared memory and the
int32 arguments between the input and output pointers), and its time against torch.

    python bench/plugins.py --out DIR                 # on the GPU machine
    python bench/plugins.py --emit-ptx DIR            # here, no GPU: PTX for sm_90 from this Triton
    python bench/plugins.py --out DIR --ptx-from DIR  # ...and launch that PTX on the GPU too

Prints a table and writes DIR/plugins.json and DIR/plugins.md. Effective bandwidth counts every
input and output byte once. Comparisons with the reference use a subset of rows when a tensor has
over 2M elements (the ops are row-wise or elementwise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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

def inputs(plugin: str, shapes: list[list[int]], dtype: str) -> list[Any]:
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    t = getattr(torch, dtype)
    if plugin == "Mask2PosPlugin":  # DETR padding: the bottom rows / right columns of image 0
        m = torch.zeros(shapes[0], dtype=torch.bool, device="cuda")
        m[0, -3:, :] = True
        m[0, :, -5:] = True
        return [m]
    x = torch.randn(shapes[0], generator=g, device="cuda").to(t)
    if plugin == "MaskedSoftmaxPlugin":
        mask = torch.rand(shapes[1], generator=g, device="cuda") < 0.8
        mask.view(-1, shapes[1][-1])[0] = False  # a fully masked row
        return [x, mask]
    if plugin == "AddBiasTransposePlugin":
        return [x, (0.1 * torch.randn(shapes[1], generator=g, device="cuda")).to(t)]
    if plugin == "LayerNormPlugin":
        n = shapes[1][0]
        return [x, (1 + 0.2 * torch.randn(n, generator=g, device="cuda")).to(t),
                (0.1 * torch.randn(n, generator=g, device="cuda")).to(t)]
    if plugin == "RMSNormPlugin":
        return [x, (1 + 0.2 * torch.randn(shapes[1][0], generator=g, device="cuda")).to(t)]
    if plugin == "RotaryEmbeddingPlugin":  # cos and sin of real angles
        angles = torch.rand(shapes[1], generator=g, device="cuda") * 100
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


def torch_op(plugin: str, ins: list[Any], attrs: dict[str, Any]) -> Any:
    import torch
    import torch.nn.functional as F

    if plugin == "LayerNormPlugin":
        x, g, b = ins
        return lambda: F.layer_norm(x, x.shape[-1:], g, b, attrs.get("epsilon", 1e-5))
    if plugin == "RMSNormPlugin":
        x, g = ins
        return lambda: F.rms_norm(x, x.shape[-1:], g, attrs.get("epsilon", 1e-5))
    if plugin == "RotaryEmbeddingPlugin":  # HF's eager form; the full-width caches made once
        x, cos, sin = ins
        if attrs.get("interleaved"):
            c, s = (t.repeat_interleave(2, -1)[:, None] for t in (cos, sin))

            def rotate(v: Any) -> Any:
                return torch.stack((-v[..., 1::2], v[..., ::2]), -1).flatten(-2)
        else:
            c, s = (torch.cat((t, t), -1)[:, None] for t in (cos, sin))

            def rotate(v: Any) -> Any:
                half = v.shape[-1] // 2
                return torch.cat((-v[..., half:], v[..., :half]), -1)
        return lambda: x * c + rotate(x) * s
    if plugin == "L2NormPlugin":
        return lambda: F.normalize(ins[0], dim=attrs.get("axis", -1), eps=attrs["eps"])
    if plugin == "MaskedSoftmaxPlugin":
        x, m = ins
        if attrs["mode"] == 0:
            return lambda: torch.softmax(x + (1 - m.to(x.dtype)) * attrs["fill"], -1)
        return lambda: torch.softmax(x.masked_fill(~m, attrs.get("fill", float("-inf"))), -1)
    if plugin == "AddBiasTransposePlugin":
        x, b = ins
        h, perm = attrs["num_heads"], attrs.get("perm", (0, 2, 1, 3))
        shape = (*x.shape[:2], h, x.shape[2] // h)
        return lambda: (x + b).view(shape).permute(perm).contiguous()
    if plugin == "Mask2PosPlugin":
        axis = attrs["axis"]

        def mask2pos() -> Any:
            c = (~ins[0]).cumsum(axis, dtype=torch.float32)
            return c / (c.narrow(axis, -1, 1) + attrs["eps"]) * attrs["scale"]
        return mask2pos
    approx = "tanh" if attrs.get("approximate") else "none"
    return lambda: F.gelu(ins[0], approximate=approx)


def gpu(out_dir: Path, ptx_from: Path | None, sweep: bool) -> None:
    import cupy
    import torch
    import triton

    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": triton.__version__, "cupy": cupy.__version__,
           "driver": cupy.cuda.runtime.driverGetVersion(),
           "driver_ptx_version": _driver_ptx_version()}
    print(json.dumps(env))
    results: list[dict[str, Any]] = []
    for plugin, label, x, attrs in CASES:
        spec, k = get_plugin(plugin), get_kernel(plugin)
        values = spec.attr_values(attrs)
        shapes = shapes_of(plugin, x)
        for dtype in DTYPES:
            if dtype not in k.dtypes:  # type: ignore[union-attr]
                continue
            r: dict[str, Any] = {"plugin": plugin, "label": label, "shape": list(x),
                                 "dtype": dtype, "attrs": values}
            try:
                ins = inputs(plugin, shapes, dtype)
                in_dtypes = dtypes_of(plugin, dtype, len(ins))
                y = outputs(plugin, ins, attrs)[0]
                nbytes = sum(t.numel() * t.element_size() for t in [*ins, y])
                plan = k.plan(shapes, in_dtypes, values)  # type: ignore[union-attr]
                launch(plan, ins, [y])
                torch.cuda.synchronize()
                r["jit"] = against_reference(plugin, ins, y, attrs).__dict__
                r["jit_ms"] = bench(lambda: launch(plan, ins, [y]))
                r["torch_ms"] = bench(torch_op(plugin, ins, attrs))
                torch_y = torch_op(plugin, ins, attrs)()
                r["torch"] = against_reference(plugin, ins, torch_y, attrs).__dict__
                for kind in ("aot", "aot_dynamic"):
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
                    r[key + "_GBps"] = nbytes / (r[key + "_ms"] * 1e-3) / 1e9
            except Exception as exc:  # report and go on: one GPU session is all there is
                r["error"] = f"{type(exc).__name__}: {exc}"[:500]
            results.append(r)
            print(_line(r), flush=True)
    save(out_dir, env, results)
    print(markdown(env, results))
    if ptx_from is not None:
        results += launch_manifest(ptx_from)
        save(out_dir, env, results)
    if sweep:
        results += sweeps()
        save(out_dir, env, results)


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
    return (f"{r['plugin']:15} {r['label']:26} {r['dtype']:8} torch {r['torch_GBps']:5.0f} "
            f"jit {r['jit_GBps']:5.0f} aot {r['aot_GBps']:5.0f} aot-dyn "
            f"{r['aot_dynamic_GBps']:5.0f} GB/s; rel max jit {r['jit']['rel_max']:.1e} "
            f"aot {r['aot']['rel_max']:.1e}; ok {r['jit']['within'] and r['aot']['within']}")


def markdown(env: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [f"{env['gpu']}, torch {env['torch']}, Triton {env['triton']}, driver "
             f"{env['driver']}. Time: median of triton.testing.do_bench; GB/s: input + output "
             "bytes / time.", "",
             "| op | model, x shape | dtype | torch ms | torch GB/s | Triton JIT GB/s | AOT PTX "
             "GB/s | AOT, dynamic batch GB/s | max rel err JIT / AOT (within tol) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        if r.get("sweep") or r.get("manifest"):
            continue
        shape = "x".join(map(str, r["shape"]))
        if "error" in r:
            lines.append(f"| {r['plugin']} | {r['label']}, {shape} | {r['dtype']} | error: "
                         f"{r['error'][:80]} | | | | | |")
            continue
        ok = r["jit"]["within"] and r["aot"]["within"] and r["aot_dynamic"]["within"]
        lines.append(
            f"| {r['plugin']} | {r['label']}, {shape} | {r['dtype']} | {r['torch_ms']:.4f} | "
            f"{r['torch_GBps']:.0f} | {r['jit_GBps']:.0f} | {r['aot_GBps']:.0f} | "
            f"{r['aot_dynamic_GBps']:.0f} | {r['jit']['rel_max']:.1e} / {r['aot']['rel_max']:.1e}"
            f" ({'yes' if ok else 'NO'}) |")
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


def attention_bench(sweep: bool) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from onnxpass.plugins.kernels import attention as att

    out: list[dict[str, Any]] = []
    for label, q, k, mask in ATTENTION_CASES:
        for dtype in [d for d in ("float32", "float16") if d in DTYPES]:
            r: dict[str, Any] = {"attention": True, "label": label, "dtype": dtype,
                                 "q": list(q), "k": list(k), "mask": mask}
            try:
                ins = attention_inputs(q, k, mask, dtype)
                attrs = {"scale": q[-1] ** -0.5}
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
                a = aot_kernel("AttentionPlugin", shapes, dts, attrs)
                kern = Ptx(a.name, a.ptx, a.block, a.shared_mem)
                ya = torch.full_like(y, float("nan"))
                kern([int(g) for g in a.grid], [int(v) for v in a.args], ins, [ya])
                torch.cuda.synchronize()
                r["aot_equals_jit"] = bool(torch.equal(ya, y))
                r["aot_ms"] = bench(lambda: kern([int(g) for g in a.grid],
                                                 [int(v) for v in a.args], ins, [ya]))
                r["shared_mem"] = a.shared_mem
                flops = 2 * q[0] * q[1] * q[2] * k[2] * (q[3] + k[3])
                for key in ("torch", "jit", "aot"):
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
                      f"jit {r['jit_ms']:.4f} aot {r['aot_ms']:.4f} ({r['jit_vs_torch']:.2f}x "
                      f"torch; {r['jit_TFLOPs']:.0f} TFLOP/s) rel max {r['jit']['rel_max']:.1e} "
                      f"ok {r['jit']['within']} aot==jit {r['aot_equals_jit']} smem "
                      f"{r['shared_mem']} best {r.get('sweep_best')} best<=48K "
                      f"{r.get('sweep_best_48k')}", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("."))
    p.add_argument("--emit-ptx", type=Path, help="compile PTX for sm_90 here (no GPU) and stop")
    p.add_argument("--ptx-from", type=Path, help="also launch the PTX an --emit-ptx run wrote")
    p.add_argument("--sweep", action="store_true", help="time float16 launch configurations")
    p.add_argument("--plugins", help="only these plugins, comma-separated (default: all)")
    p.add_argument("--attention", action="store_true", help="only AttentionPlugin, vs SDPA")
    p.add_argument("--dtypes", help="only these dtypes, comma-separated (default: all)")
    p.add_argument("--labels", help="only cases whose label contains one of these, comma-separated")
    args = p.parse_args()
    if args.dtypes:
        DTYPES[:] = [d for d in DTYPES if d in args.dtypes.split(",")]
    if args.labels:
        CASES[:] = [c for c in CASES if any(w in c[1] for w in args.labels.split(","))]
        ATTENTION_CASES[:] = [c for c in ATTENTION_CASES
                              if any(w in c[0] for w in args.labels.split(","))]
    if args.plugins:
        CASES[:] = [c for c in CASES if c[0] in args.plugins.split(",")]
    t0 = time.time()
    if args.emit_ptx:
        emit_ptx(args.emit_ptx)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        if args.attention:
            rows = attention_bench(args.sweep)
            (args.out / "attention.json").write_text(json.dumps(rows, indent=1))
        else:
            gpu(args.out, args.ptx_from, args.sweep)
    print(f"{time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
