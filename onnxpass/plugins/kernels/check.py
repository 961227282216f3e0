"""Check every registered kernel: against its NumPy reference (run by Triton's interpreter on
the CPU, or on a GPU), and ahead of time (PTX for sm_90, compiled without a GPU).

    TRITON_INTERPRET=1 python -m onnxpass.plugins.kernels.check          # CPU, interpreter
    python -m onnxpass.plugins.kernels.check --device cuda               # on a GPU
    python -m onnxpass.plugins.kernels.check --aot                       # PTX, no GPU needed

Triton picks interpreter or compiler once, when it is imported (TRITON_INTERPRET), and a
process cannot do both: tests run these as subprocesses.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxpass.plugins.base import all_plugins
from onnxpass.plugins.kernels.base import (
    Case,
    KernelSpec,
    aot_kernel,
    get_kernel,
    np_dtype,
    run,
    static,
)
from onnxpass.verify import ErrorStats, error_stats

# (rtol, atol) of a kernel against the float64 reference rounded to the output dtype
TOLERANCES = {"float32": (1e-5, 1e-6), "float16": (1e-2, 1e-4), "bfloat16": (2e-2, 1e-3)}


def kernels() -> list[KernelSpec]:
    return [k for s in all_plugins() if (k := get_kernel(s.name)) is not None and k.plan]


def to_torch(a: np.ndarray, device: str = "cpu") -> Any:
    import torch

    if a.dtype == np_dtype("bfloat16"):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def to_float32(t: Any) -> np.ndarray:
    return t.float().cpu().numpy()


def check(k: KernelSpec, inputs: list[np.ndarray], attrs: dict[str, Any], device: str = "cpu",
          extra_atol: float = 0.0) -> list[ErrorStats]:
    """Each output of the kernel against the reference, within TOLERANCES of its dtype (plus
    ``extra_atol``, where the kernel rounds as the original model's function does)."""
    spec = k.spec
    want = k.reference(*inputs, **spec.attr_values(attrs))
    got = run(k.plugin, *(to_torch(a, device) for a in inputs), **attrs)
    out = []
    for name, w, g in zip(spec.outputs, want, got):
        rtol, atol = tolerance(k, str(g.dtype)[6:])
        out.append(error_stats(name, w.astype(np.float32), to_float32(g), rtol,
                               atol + extra_atol))
    return out


def tolerance(k: KernelSpec, dtype: str) -> tuple[float, float]:
    return k.tolerances.get(dtype, TOLERANCES[dtype])


@dataclass(frozen=True)
class SymDim:
    """A symbolic dim for tests, as TensorRT's ShapeExpr offers it: + - * // and nothing
    static. ``value(env)`` evaluates it."""

    text: str
    fn: Any

    is_constant = False

    def _op(self, other: Any, sym: str, f: Any) -> SymDim:
        o = other if isinstance(other, SymDim) else SymDim(str(other), lambda env: other)
        return SymDim(f"({self.text} {sym} {o.text})", lambda env: f(self.fn(env), o.fn(env)))

    def __add__(self, o: Any) -> SymDim:
        return self._op(o, "+", lambda a, b: a + b)

    def __sub__(self, o: Any) -> SymDim:
        return self._op(o, "-", lambda a, b: a - b)

    def __mul__(self, o: Any) -> SymDim:
        return self._op(o, "*", lambda a, b: a * b)

    def __floordiv__(self, o: Any) -> SymDim:
        return self._op(o, "//", lambda a, b: a // b)

    def value(self, env: dict[str, int]) -> int:
        return int(self.fn(env))


def sym(name: str) -> SymDim:
    return SymDim(name, lambda env: env[name])


def value(d: Any, env: dict[str, int]) -> int:
    return d.value(env) if isinstance(d, SymDim) else int(d)


def symbolic_batch(case: Case) -> tuple[list[list[Any]], dict[str, int]]:
    """The case's shapes with the first dim of the first input made symbolic ("batch"), and
    wherever the other inputs share it."""
    first = case.shapes[0]
    if len(first) < 2:
        return [list(s) for s in case.shapes], {}
    b = sym("batch")
    shapes: list[list[Any]] = [list(s) for s in case.shapes]
    shapes[0][0] = b
    return shapes, {"batch": first[0]}


def ptx_params(ptx: str, name: str) -> list[str]:
    """The types of the PTX entry's parameters (.u64 for a pointer, .u32 for an int32)."""
    head = re.search(rf"\.entry {re.escape(name)}\((.*?)\)", ptx, re.S)
    return [p.split()[1] for p in head.group(1).split(",") if p.strip()] if head else []


def aot_report(k: KernelSpec, case: Case, dtype: str, target: Any, symbolic: bool
               ) -> dict[str, Any]:
    """Compile one case and compare its launch with what the JIT launcher would do."""
    spec = k.spec
    attrs = spec.attr_values(case.attrs)
    shapes, env = symbolic_batch(case) if symbolic else ([list(s) for s in case.shapes], {})
    dtypes = [str(a.dtype) for a in case.inputs(dtype)]  # masks keep their own dtype
    a = aot_kernel(k.plugin, shapes, dtypes, attrs, target=target)
    # a static row count may pick fewer rows a program (layernorm's MIN_PROGRAMS) or split few
    # rows over programs (l2norm's SPLIT_BELOW): compare the symbolic launch with the concrete
    # one of the same choice
    same: dict[str, int] = {}
    if symbolic:
        c = k.plan(shapes, dtypes, attrs).constexprs  # type: ignore[misc]
        if "ROWS" in c:
            same["rows_per_program"] = c["ROWS"]
        if "split" in inspect.signature(k.plan).parameters:  # type: ignore[arg-type]
            same["split"] = c.get("SPLIT", 1)
    jit_plan = k.plan([list(s) for s in case.shapes], dtypes, attrs, **same)  # type: ignore[misc]
    grid = [value(g, env) for g in a.grid]
    args = [value(x, env) for x in a.args]
    return {
        "plugin": k.plugin, "case": case.name, "dtype": dtype, "symbolic": symbolic,
        "name": a.name, "kernel": jit_plan.kernel.__name__, "block": list(a.block),
        "shared_mem": a.shared_mem, "num_params": a.num_params,
        "ptx_params": ptx_params(a.ptx, a.name),
        "ptx_target": re.search(r"\.target (\S+)", a.ptx).group(1),  # type: ignore[union-attr]
        "grid": grid, "args": args,
        "grid_symbolic": [getattr(g, "text", g) for g in a.grid],
        "jit_grid": [int(g) for g in jit_plan.grid] + [1] * (3 - len(jit_plan.grid)),
        "jit_args": [int(x) for x in jit_plan.args],
        "jit_block": jit_plan.num_warps * 32, "static_args": [static(x) for x in a.args],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "onnxpass kernel check").splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--aot", action="store_true", help="compile PTX for sm_90 instead of running")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    if args.aot:
        from triton.backends.compiler import GPUTarget

        target = GPUTarget("cuda", 90, 32)
        for k in kernels():
            for case in k.cases:
                for dtype in k.dtypes:
                    for symbolic in (False, True) if dtype == k.dtypes[0] else (False,):
                        rows.append(aot_report(k, case, dtype, target, symbolic))
    else:
        for k in kernels():
            for case in k.cases:
                for dtype in k.dtypes:
                    for s in check(k, case.inputs(dtype), case.attrs, args.device):
                        rows.append({"plugin": k.plugin, "case": case.name, "dtype": dtype,
                                     **s.__dict__})
    ok = True
    for r in rows:
        if args.json:
            print(json.dumps(r))
        elif "within" in r:
            ok &= r["within"]
            print(f"{r['plugin']:18} {r['case']:14} {r['dtype']:9} rel max {r['rel_max']:.2e} "
                  f"abs max {r['abs_max']:.2e} {'ok' if r['within'] else 'MISMATCH'}")
        else:
            print(f"{r['plugin']:18} {r['case']:14} {r['dtype']:9} {r['name']} grid "
                  f"{r['grid_symbolic']} block {r['block']} params {r['num_params']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
