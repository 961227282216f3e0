"""How a plugin op runs outside ONNX: a NumPy reference, Triton kernels, and the one launch plan
that the JIT launcher (GPU, or CPU under Triton's interpreter) and the AOT compiler (TensorRT)
both follow.

A kernel module registers a :class:`KernelSpec` for a plugin named in onnxpass/plugins/. Its
Triton kernels take their arguments in TensorRT's AOT order: input pointers, int32 scalars,
output pointers, then constexprs. ``plan(shapes, dtypes, attrs)`` picks the kernel, grid,
scalars and constexprs from the input shapes, whose dims are ints or symbolic (TensorRT's
``ShapeExpr`` when compiling ahead of time): write it with :func:`prod`, :func:`cdiv` and
:func:`static`, which work on both.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

import numpy as np

from onnxpass.plugins.base import PluginSpec, get_plugin
from onnxpass.tensorrt_available import tensorrt_missing

try:
    import triton
    import triton.language as tl
except ImportError:  # onnxpass and the NumPy references work without Triton
    triton = tl = cast(Any, None)  # every use sits behind a Triton-needing entry point

Dim = Any  # an int or a symbolic dim supporting + - * //

TRITON_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int32": "i32",
                 "int64": "i64", "int8": "i8", "bool": "i1"}


# -- shape arithmetic that works on ints and on TensorRT's symbolic dims --------------------

def static(d: Dim) -> int | None:
    """The value of ``d`` if known when the kernel is compiled, else None."""
    if isinstance(d, (int, np.integer)):
        return int(d)
    if getattr(d, "is_fake", False) or not getattr(d, "is_constant", False):
        return None
    return int(d.constant_value())


def prod(dims: Sequence[Dim]) -> Dim:
    """Product of dims; the static ones are folded into one int factor."""
    k, sym = 1, None
    for d in dims:
        v = static(d)
        if v is not None:
            k *= v
        else:
            sym = d if sym is None else sym * d
    return k if sym is None else (sym if k == 1 else sym * k)


def static_factor(dims: Sequence[Dim]) -> int:
    """A number that always divides prod(dims): the product of its static dims."""
    return math.prod(v for v in map(static, dims) if v is not None)


def cdiv(a: Dim, b: int) -> Dim:
    v = static(a)
    return -(-v // b) if v is not None else (a + (b - 1)) // b


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# -- kernels, launch plans, registry ----------------------------------------------------------

class TritonKernel:
    """A Triton kernel function, made into Triton's JIT or interpreter object when first used
    (``triton.jit`` would decide once, at import, from TRITON_INTERPRET)."""

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    @cached_property
    def compiled(self) -> Any:
        from triton.runtime.jit import JITFunction

        return JITFunction(self.fn)

    @cached_property
    def interpreted(self) -> Any:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(self.fn)

    @cached_property
    def params(self) -> list[tuple[str, bool]]:
        """(name, is_constexpr) per parameter."""
        sig = inspect.signature(self.fn)
        return [(n, "constexpr" in str(p.annotation)) for n, p in sig.parameters.items()]


def jit(fn: Callable[..., None]) -> TritonKernel:
    """Use instead of ``@triton.jit`` for plugin kernels."""
    return TritonKernel(fn)


def helper(fn: Callable[..., Any]) -> Any:
    """``@triton.jit`` for a function the kernels call (interpreted or compiled as Triton was
    imported, like the kernels' launches)."""
    return triton.jit(fn) if triton is not None else fn


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``kernel[grid](*inputs, *args, *outputs, **constexprs)``.
    ``aligned`` lists the ``args`` known to be multiples of 16 even when symbolic (static
    ones are found by themselves); the AOT kernel is specialized on them, as Triton's JIT
    specializes on run-time values."""

    kernel: TritonKernel
    grid: tuple[Dim, ...]
    args: tuple[Dim, ...]
    constexprs: dict[str, Any]
    num_warps: int = 4
    aligned: tuple[int, ...] = ()
    num_stages: int | None = None  # software pipelining depth; None: Triton's default


@dataclass(frozen=True)
class Case:
    """A small test case: input shapes and attributes. Inputs are drawn from N(0, 1) in the
    dtype under test, or by ``make(dtype, rng)`` (for masks, ids, ...)."""

    name: str
    shapes: tuple[tuple[int, ...], ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    make: Callable[[str, np.random.Generator], list[np.ndarray]] | None = None

    def inputs(self, dtype: str, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        if self.make is not None:
            return self.make(dtype, rng)
        return [rng.standard_normal(s).astype(np_dtype(dtype)) for s in self.shapes]


@dataclass(frozen=True)
class KernelSpec:
    """Everything but the ONNX function: see the module docstring. ``reference(*inputs,
    **attrs)`` returns a tuple of outputs and defines the op's math (it computes in float64);
    ``plan`` is None while the op has no Triton kernel; ``dtypes`` are those the kernels take;
    ``cases`` are the small shapes the tests run; ``tolerances`` replace check.TOLERANCES
    (rtol, atol) for some dtypes, where the op's float16 math is defined with a rounding (say
    attention's probabilities, rounded to float16 before p v as the ONNX function does)."""

    plugin: str
    reference: Callable[..., tuple[np.ndarray, ...]]
    plan: Callable[..., Launch] | None = None
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    cases: tuple[Case, ...] = ()
    tolerances: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def spec(self) -> PluginSpec:
        return get_plugin(self.plugin)


_KERNELS: dict[str, KernelSpec] = {}


def register_kernel(k: KernelSpec) -> KernelSpec:
    get_plugin(k.plugin)  # the spec must exist
    if k.plugin in _KERNELS:
        raise ValueError(f"kernels for {k.plugin} registered twice")
    _KERNELS[k.plugin] = k
    return k


def get_kernel(plugin: str) -> KernelSpec | None:
    # No import of the built-in kernels here: importing this module runs the package's
    # __init__ first, which imports every kernel module (an import back would be a cycle).
    return _KERNELS.get(plugin)


def implementations(spec: PluginSpec) -> list[tuple[str, str | None]]:
    """(implementation, why it cannot run here or None) for one plugin."""
    k = get_kernel(spec.name)
    out: list[tuple[str, str | None]] = [("onnx-function", None)]
    if k is None:
        return out
    out.append(("numpy", None))
    if k.plan is None:
        return out
    out.append(("triton", None if triton is not None else "triton not installed"))
    missing = tensorrt_missing()  # not plugins.trt's: that module imports this one
    out += [("tensorrt-jit", missing), ("tensorrt-aot", missing)]
    return out


def np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# -- running: JIT on a GPU, or Triton's interpreter on the CPU -------------------------------

def run(plugin: str, *inputs: Any, **attrs: Any) -> tuple[Any, ...]:
    """Run ``plugin``'s Triton kernel on torch tensors; returns its outputs. CPU tensors (or
    TRITON_INTERPRET=1) run in Triton's interpreter."""
    import torch

    spec, k = get_plugin(plugin), _kernel(plugin)
    values = spec.attr_values(attrs)
    inputs = tuple(t.contiguous() for t in inputs)
    shapes = [list(t.shape) for t in inputs]
    dtypes = [str(t.dtype).removeprefix("torch.") for t in inputs]
    _check_dtypes(k, dtypes)
    outputs = tuple(torch.empty(s, dtype=getattr(torch, d), device=inputs[0].device)
                    for s, d in zip(spec.output_shapes(shapes, values), spec.output_dtypes(dtypes)))
    launch(k.plan(shapes, dtypes, values), inputs, outputs)  # type: ignore[misc]
    return outputs


def launch(plan: Launch, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
    grid = tuple(int(g) for g in plan.grid)
    if 0 in grid:
        return
    interpret = inputs[0].device.type == "cpu" or os.environ.get("TRITON_INTERPRET") == "1"
    if interpret and type(tl.sum).__name__ != "InterpretedFunction":
        raise RuntimeError("running kernels on the CPU needs TRITON_INTERPRET=1 set before "
                           "Triton is first imported (it decides then, for its own library too)")
    fn = plan.kernel.interpreted if interpret else plan.kernel.compiled
    stages = {} if plan.num_stages is None else {"num_stages": plan.num_stages}
    fn[grid](*inputs, *(int(a) for a in plan.args), *outputs, num_warps=plan.num_warps,
             **stages, **plan.constexprs)


def _kernel(plugin: str) -> KernelSpec:
    k = get_kernel(plugin)
    if k is None or k.plan is None:
        raise NotImplementedError(f"plugin {plugin} has no Triton kernel")
    if triton is None:
        raise ImportError("running plugin kernels needs Triton: pip install triton")
    return k


def _check_dtypes(k: KernelSpec, dtypes: Sequence[str]) -> None:
    spec = k.spec
    for name, d in zip(spec.inputs, dtypes):
        ok = spec.allowed_dtypes(name) if name in spec.io_dtypes else k.dtypes
        if d not in ok:
            raise TypeError(f"{spec.name}: input {name} has dtype {d}; kernels take {ok}")


# -- ahead of time: PTX and launch parameters for TensorRT's aot_impl -------------------------

@dataclass(frozen=True)
class AotKernel:
    """What ``@trtp.aot_impl`` returns, before wrapping into TensorRT's types: the kernel's
    entry name and PTX; grid, block and dynamic shared memory; and the int32 ``args`` TensorRT
    passes between the input and the output pointers. Grid and args are ints or symbolic dims."""

    name: str
    ptx: str
    grid: tuple[Dim, Dim, Dim]
    block: tuple[int, int, int]
    shared_mem: int
    args: tuple[Dim, ...]
    num_params: int


def aot_kernel(plugin: str, shapes: Sequence[Sequence[Dim]], dtypes: Sequence[str],
               attrs: dict[str, Any], target: Any = None, ptx_version: int | None = None,
               **plan_options: Any) -> AotKernel:
    """Compile ``plugin``'s kernel for these input shapes (ints or symbolic dims), dtypes and
    attributes to PTX for ``target`` (a ``triton.backends.compiler.GPUTarget``; default: this
    machine's GPU). No GPU is needed when ``target`` is given. The PTX ISA version is
    ``ptx_version`` (84 for 8.4), or Triton's, lowered to what this machine's CUDA driver loads
    (Triton 3.9 writes 9.4, which a CUDA 13.0 driver refuses). Pointers are taken to be 16-byte
    aligned, as TensorRT allocates them. ``plan_options`` go to the kernel's plan (a launch
    config other than its default, as bench/plugins.py sweeps them)."""
    from triton.compiler import ASTSource

    spec, k = get_plugin(plugin), _kernel(plugin)
    _check_dtypes(k, dtypes)
    if "max_shared" in inspect.signature(cast(Callable[..., Any], k.plan)).parameters:
        # a plan with configs for JIT launches only (Triton's launcher opts in to > 48 KB)
        plan_options.setdefault("max_shared", AOT_SHARED_LIMIT)
    plan = k.plan(shapes, list(dtypes), spec.attr_values(attrs),  # type: ignore[misc]
                  **plan_options)
    ptr_dtypes = list(dtypes) + spec.output_dtypes(dtypes)
    runtime = [n for n, c in plan.kernel.params if not c]
    n_in, n_args = len(dtypes), len(plan.args)
    if len(runtime) != n_in + n_args + len(spec.outputs):
        raise ValueError(f"{plan.kernel.__name__} takes {runtime}; TensorRT passes {n_in} inputs,"
                         f" {n_args} int32 args and {len(spec.outputs)} outputs")
    signature: dict[str, str] = {}
    hints: dict[tuple[int, ...], list[list[Any]]] = {}
    for i, name in enumerate(runtime):
        if n_in <= i < n_in + n_args:
            signature[name] = "i32"
            j = i - n_in
            v = static(plan.args[j])
            if j in plan.aligned or (v is not None and v % 16 == 0):
                hints[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "*" + TRITON_DTYPES[ptr_dtypes[i if i < n_in else i - n_args]]
            hints[(i,)] = [["tt.divisibility", 16]]
    for name, c in plan.kernel.params:
        if c:
            signature[name] = "constexpr"
    source = ASTSource(plan.kernel.compiled, signature, plan.constexprs, hints)
    options: dict[str, Any] = {"num_warps": plan.num_warps}
    if plan.num_stages is not None:
        options["num_stages"] = plan.num_stages
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    target = target or _this_gpu()
    compiled = triton.compile(source, target=target, options=options)
    driver = _driver_ptx_version() if ptx_version is None else None
    if driver is not None and _ptx_isa(compiled.asm["ptx"]) > driver:
        compiled = triton.compile(source, target=target, options={**options, "ptx_version": driver})
    md = compiled.metadata
    if getattr(md, "num_ctas", 1) != 1:
        raise ValueError(f"{md.name}: clusters of CTAs cannot be launched by TensorRT")
    if md.shared > AOT_SHARED_LIMIT:
        raise ValueError(f"{md.name}: needs {md.shared} bytes of shared memory; an AOT plugin "
                         f"kernel keeps to {AOT_SHARED_LIMIT} (TensorRT is not known to opt a "
                         f"plugin's kernel in to more: docs/plugins.md)")
    ptx = _drop_hidden_params(compiled.asm["ptx"], md.name, len(runtime))
    grid: Any = tuple(plan.grid) + (1,) * (3 - len(plan.grid))
    return AotKernel(md.name, ptx, grid, (md.num_warps * 32, 1, 1), md.shared, tuple(plan.args),
                     len(runtime))


# The dynamic shared memory a kernel may use without cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE):
# Triton's own loader opts in, but tensorrt.plugin's KernelLaunchParams carries only the byte
# count, and nothing public says TensorRT opts an AOT plugin's kernel in (docs/plugins.md).
AOT_SHARED_LIMIT = 48 * 1024


def _this_gpu() -> Any:
    return triton.runtime.driver.active.get_current_target()


def _ptx_isa(ptx: str) -> int:
    major, minor = re.search(r"\.version (\d+)\.(\d+)", ptx).groups()  # type: ignore[union-attr]
    return int(major) * 10 + int(minor)


def _driver_ptx_version() -> int | None:
    """The newest PTX ISA this machine's CUDA driver loads (Triton writes the newest its own
    ptxas knows, which an older driver refuses)."""
    import ctypes

    try:
        from triton.backends.nvidia.compiler import ptx_get_version

        version = ctypes.c_int()
        ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version))
    except (ImportError, OSError):
        return None
    return int(ptx_get_version(f"{version.value // 1000}.{version.value % 1000 // 10}"))


def _drop_hidden_params(ptx: str, name: str, keep: int) -> str:
    """Triton appends hidden scratch-buffer pointers to every kernel's parameters; TensorRT
    passes only its own. Drop them from the entry's declaration, after checking that the body
    never reads them (Triton reads them only when the kernel needs scratch memory)."""
    head = re.search(rf"\.entry {re.escape(name)}\((.*?)\)", ptx, re.S)
    if head is None:
        raise ValueError(f"no .entry {name} in the PTX")
    params = [p.strip() for p in head.group(1).split(",") if p.strip()]
    hidden = params[keep:]
    body = ptx[head.end():]
    for p in hidden:
        pname = p.split()[-1]
        if re.search(rf"\b{re.escape(pname)}\b", body):
            raise ValueError(f"{name}: hidden parameter {pname} is used (scratch memory needed)")
    decl = "(\n\t" + ",\n\t".join(params[:keep]) + "\n)"
    return ptx[:head.start(1) - 1] + decl + ptx[head.end():]
