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

import numpy as np  # noqa: E402

from onnxpass.plugins import get_plugin  # noqa: E402
from onnxpass.plugins.kernels import aot_kernel, get_kernel  # noqa: E402
from onnxpass.plugins.kernels import gelu as gelu_kernels  # noqa: E402
from onnxpass.plugins.kernels import layernorm as ln_kernels  # noqa: E402
from onnxpass.plugins.kernels.base import _driver_ptx_version, launch, np_dtype  # noqa: E402
from onnxpass.plugins.kernels.check import TOLERANCES, sym, value  # noqa: E402
from onnxpass.verify import error_stats  # noqa: E402

DTYPES = ("float32", "float16", "bfloat16")
# (plugin, model and shape, x shape, attrs); LayerNorm over the last dim
CASES = [
    ("LayerNormPlugin", "ViT-B/16 64x197", (64, 197, 768), {"epsilon": 1e-12}),
    ("LayerNormPlugin", "MobileViT-S b64 stage 3", (256, 256, 144), {}),
    ("LayerNormPlugin", "MobileViT-S b64 stage 4", (256, 64, 192), {}),
    ("LayerNormPlugin", "MobileViT-S b64 stage 5", (256, 16, 240), {}),
    ("LayerNormPlugin", "DETR-R50 8x850 encoder", (850, 8, 256), {}),
    ("LayerNormPlugin", "anchor 32768x1024", (32768, 1024), {}),
    ("GeluPlugin", "ViT-B/16 64x197 MLP", (64, 197, 3072), {"approximate": 0}),
    ("GeluPlugin", "ViT-B/16 64x197 MLP, tanh", (64, 197, 3072), {"approximate": 1}),
    ("GeluPlugin", "anchor 12608x768", (12608, 768), {"approximate": 0}),
]


def shapes_of(plugin: str, x: tuple[int, ...]) -> list[list[int]]:
    return [list(x), [x[-1]], [x[-1]]] if plugin == "LayerNormPlugin" else [list(x)]


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
            shapes = shapes_of(plugin, x)
            for dyn, ptx_version in ((False, 90), (True, 90), (False, 84)):
                s, env = dynamic(shapes) if dyn else (shapes, {})
                a = aot_kernel(plugin, s, [dtype] * len(shapes), attrs, target=target,
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
    x = torch.randn(shapes[0], generator=g, device="cuda").to(t)
    if plugin == "LayerNormPlugin":
        n = shapes[1][0]
        return [x, (1 + 0.2 * torch.randn(n, generator=g, device="cuda")).to(t),
                (0.1 * torch.randn(n, generator=g, device="cuda")).to(t)]
    return [x]


def to_numpy(t: Any) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).cpu().numpy().view(np_dtype("bfloat16"))
    return t.cpu().numpy()


def against_reference(plugin: str, ins: list[Any], out: Any, attrs: dict[str, Any]) -> Any:
    k = get_kernel(plugin)
    x2 = ins[0].reshape(-1, ins[0].shape[-1])
    step = max(1, x2.numel() // 2_000_000)
    rows = slice(0, x2.shape[0], step)
    sub = [to_numpy(x2[rows])] + [to_numpy(t) for t in ins[1:]]
    want = k.reference(*sub, **get_plugin(plugin).attr_values(attrs))[0]  # type: ignore[union-attr]
    got = to_numpy(out.reshape(x2.shape)[rows])
    dtype = str(ins[0].dtype).removeprefix("torch.")
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
    import torch.nn.functional as F

    if plugin == "LayerNormPlugin":
        x, g, b = ins
        return lambda: F.layer_norm(x, x.shape[-1:], g, b, attrs.get("epsilon", 1e-5))
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
            r: dict[str, Any] = {"plugin": plugin, "label": label, "shape": list(x),
                                 "dtype": dtype, "attrs": values}
            try:
                ins = inputs(plugin, shapes, dtype)
                nbytes = 2 * ins[0].numel() * ins[0].element_size() + sum(
                    t.numel() * t.element_size() for t in ins[1:])
                plan = k.plan(shapes, [dtype] * len(ins), values)  # type: ignore[union-attr]
                y = torch.empty_like(ins[0])
                launch(plan, ins, [y])
                torch.cuda.synchronize()
                r["jit"] = against_reference(plugin, ins, y, attrs).__dict__
                r["jit_ms"] = bench(lambda: launch(plan, ins, [y]))
                r["torch_ms"] = bench(torch_op(plugin, ins, attrs))
                torch_y = torch_op(plugin, ins, attrs)()
                r["torch"] = against_reference(plugin, ins, torch_y, attrs).__dict__
                for kind in ("aot", "aot_dynamic"):
                    s, e = dynamic(shapes) if kind == "aot_dynamic" else (shapes, {})
                    a = aot_kernel(plugin, s, [dtype] * len(ins), attrs)
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
            y = torch.full_like(ins[0], float("nan"))
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
    import torch

    out = []
    for plugin, label, x, attrs in CASES:
        shapes = shapes_of(plugin, x)
        ins = inputs(plugin, shapes, "float16")
        y = torch.empty_like(ins[0])
        values = get_plugin(plugin).attr_values(attrs)
        nbytes = 2 * ins[0].numel() * 2 + sum(t.numel() * 2 for t in ins[1:])
        if plugin == "LayerNormPlugin":
            configs = [{"rows_per_program": r, "num_warps": w} for r in (1, 2, 4, 8, 16)
                       for w in (4, 8)]
            make = ln_kernels.plan
        else:
            if attrs.get("approximate"):
                continue
            configs = [{"block": b, "num_warps": w} for b in (1024, 2048, 4096)
                       for w in (4, 8)]
            make = gelu_kernels.plan
        for c in configs:
            try:
                plan = make(shapes, ["float16"] * len(ins), values, **c)
                if plan.kernel.__name__ == "layernorm_rows" and \
                        plan.constexprs["BLOCK_N"] * plan.constexprs["ROWS"] > 32768:
                    continue
                ms = bench(lambda: launch(plan, ins, [y]))
                out.append({"sweep": True, "plugin": plugin, "label": label, **c, "ms": ms,
                            "GBps": nbytes / (ms * 1e-3) / 1e9})
            except Exception as exc:
                out.append({"sweep": True, "plugin": plugin, "label": label, **c,
                            "error": f"{type(exc).__name__}: {exc}"[:300]})
        best = min((r for r in out if r["label"] == label and "ms" in r), key=lambda r: r["ms"],
                   default=None)
        print(f"sweep {label}: best {best}", flush=True)
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("."))
    p.add_argument("--emit-ptx", type=Path, help="compile PTX for sm_90 here (no GPU) and stop")
    p.add_argument("--ptx-from", type=Path, help="also launch the PTX an --emit-ptx run wrote")
    p.add_argument("--sweep", action="store_true", help="time float16 launch configurations")
    args = p.parse_args()
    t0 = time.time()
    if args.emit_ptx:
        emit_ptx(args.emit_ptx)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        gpu(args.out, args.ptx_from, args.sweep)
    print(f"{time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
