"""TensorRT registration of the plugin kernels through ``tensorrt.plugin`` (TensorRT >= 10.9),
imported only when :func:`register` is called: onnxpass works without TensorRT.

    from onnxpass.plugins import trt
    trt.register()   # every plugin op that has a Triton kernel

registers, per plugin op, ``onnxpass::<Name>`` with shape and type inference from its
PluginSpec, an autotune listing the dtypes its kernels take, a JIT implementation (launches the
Triton kernel from Python, on TensorRT's stream; needs torch) and an AOT implementation (the
kernel compiled to PTX with its launch parameters and symbolic int32 arguments, baked into the
engine, which then runs without Python: trtexec, C++). With both registered, TensorRT needs a
preference: create the network with ``NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS``
(or ``PREFER_JIT_...``), give the node an int attribute ``aot``, or register one with
``register(jit=False)``. The ONNX parser finds the plugin from the node's op_type and its
``plugin_namespace`` attribute, which onnxpass writes on every plugin node.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, List, Tuple, Union

import numpy as np

from onnxpass.plugins.base import NAMESPACE, PluginSpec, all_plugins
from onnxpass.plugins.kernels.base import KernelSpec, aot_kernel, get_kernel, launch
from onnxpass.tensorrt_available import tensorrt_missing

TRT_TYPES = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16", "int8": "INT8",
             "int32": "INT32", "int64": "INT64", "bool": "BOOL"}
_REGISTERED: set[str] = set()


def missing() -> str | None:
    """Why TensorRT plugins cannot be registered here, or None."""
    return tensorrt_missing()


def signature(spec: PluginSpec) -> list[tuple[str, str]]:
    """The register function's parameters: (name, "tensor" or the attribute's kind)."""
    return [(n, "tensor") for n in spec.inputs] + [(a.name, a.kind) for a in spec.attributes]


def type_combination(spec: PluginSpec, kernel: KernelSpec) -> str:
    """The autotune type string: every position of type T takes the same one of the dtypes the
    kernels take ("FP32|FP16"); positions with their own types take any of them ("INT32*INT64")."""
    t = "|".join(TRT_TYPES[d] for d in spec.dtypes if d in kernel.dtypes)
    return ", ".join("*".join(TRT_TYPES[d] for d in spec.io_dtypes[n]) if n in spec.io_dtypes
                     else t for n in spec.inputs + spec.outputs)


def register(plugins: Sequence[str] | None = None, jit: bool = True, aot: bool = True,
             ptx_version: int | None = None) -> list[str]:
    """Register the plugins named (default: all with a Triton kernel); returns their ids.
    ``ptx_version`` (e.g. 84 for PTX ISA 8.4) fixes the PTX ISA of the AOT kernels; by default
    it is Triton's, lowered to what the building machine's driver loads. An engine's PTX is
    compiled by the driver where the engine runs: set it for an older driver there."""
    import tensorrt.plugin as trtp

    if aot and not hasattr(trtp, "aot_impl"):
        raise ImportError("AOT plugins need TensorRT >= 10.9; use register(aot=False)")
    ids = []
    for spec in all_plugins():
        k = get_kernel(spec.name)
        if (plugins is not None and spec.name not in plugins) or k is None or k.plan is None:
            continue
        pid = f"{NAMESPACE}::{spec.name}"
        if pid not in _REGISTERED:
            _register(trtp, pid, spec, k, jit, aot, ptx_version)
            _REGISTERED.add(pid)
        ids.append(pid)
    return ids


def _register(trtp: Any, pid: str, spec: PluginSpec, k: KernelSpec, jit: bool, aot: bool,
              ptx_version: int | None) -> None:
    import numpy.typing as npt
    import tensorrt as trt

    kinds = {"tensor": trtp.TensorDesc, "float": float, "int": int, "string": str,
             "ints": npt.NDArray[np.int32]}
    params = [(n, kinds[kind]) for n, kind in signature(spec)]
    n_in, names = len(spec.inputs), [a.name for a in spec.attributes]
    outs = Tuple[tuple([trtp.TensorDesc] * len(spec.outputs))]  # type: ignore[misc]
    touts = Tuple[tuple([trtp.Tensor] * len(spec.outputs))]  # type: ignore[misc]
    to_trt = {d: getattr(trt, d) for d in TRT_TYPES if hasattr(trt, d)}  # trt.float32, ...
    from_trt = {v: d for d, v in to_trt.items()}
    plan_of = k.plan
    assert plan_of is not None  # register() skips kernels without a plan

    def attrs_of(values: Sequence[Any]) -> dict[str, Any]:
        return spec.attr_values(dict(zip(names, values)))

    def describe(*inputs: Any, **attrs: Any) -> Any:
        shapes = spec.output_shapes([list(d.shape_expr) for d in inputs], spec.attr_values(attrs))
        dtypes = spec.output_dtypes([from_trt[d.dtype] for d in inputs])
        return tuple(trtp.from_shape_expr(tuple(s), dtype=to_trt[d])
                     for s, d in zip(shapes, dtypes))

    def autotune(*_: Any) -> list[Any]:
        return [trtp.AutoTuneCombination(type_combination(spec, k), "LINEAR")]

    def impl(*args: Any, stream: int) -> None:
        import torch

        inputs, outputs = args[:n_in], args[-1]
        dtypes = [from_trt[t.dtype] for t in inputs]
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            ins = [_as_torch(t, d) for t, d in zip(inputs, dtypes)]
            plan = plan_of([list(t.shape) for t in ins], dtypes, attrs_of(args[n_in:-1]))
            launch(plan, ins, [_as_torch(t, from_trt[t.dtype]) for t in outputs])

    def aot_impl(*args: Any) -> Any:
        inputs = args[:n_in]
        a = aot_kernel(spec.name, [list(d.shape_expr) for d in inputs],
                       [from_trt[d.dtype] for d in inputs], attrs_of(args[n_in:-2]),
                       ptx_version=ptx_version)
        p = trtp.KernelLaunchParams()
        p.grid_x, p.grid_y, p.grid_z = a.grid
        p.block_x, p.block_y, p.block_z = a.block
        p.shared_mem = a.shared_mem
        return a.name, a.ptx, p, trtp.SymIntExprs.from_tuple([trtp.SymInt32(x) for x in a.args])

    tensors = [(n, trtp.TensorDesc) for n in spec.inputs]
    trtp.register(pid)(_with_signature(describe, params, outs))
    trtp.autotune(pid)(_with_signature(autotune, tensors + [("outputs", outs)],
                                       List[trtp.AutoTuneCombination]))
    if jit:
        trtp.impl(pid)(_with_signature(impl, [(n, trtp.Tensor) for n in spec.inputs]
                                       + params[n_in:] + [("outputs", touts), ("stream", int)],
                                       None))
    if aot:
        trtp.aot_impl(pid)(_with_signature(
            aot_impl, params + [("outputs", outs), ("tactic", int)],
            Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams,
                  trtp.SymExprs]))


def _with_signature(fn: Callable[..., Any], params: list[tuple[str, Any]], ret: Any
                    ) -> Callable[..., Any]:
    """``fn`` with the explicit signature tensorrt.plugin reads (names and annotations)."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    wrapper.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, kind, annotation=a) for n, a in params], return_annotation=ret)
    wrapper.__name__ = fn.__name__
    return wrapper


def _as_torch(t: Any, dtype: str) -> Any:
    """A torch view of a tensorrt.plugin Tensor (its own __cuda_array_interface__ refuses
    bfloat16: read those as int16)."""
    import torch

    class View:
        __cuda_array_interface__ = {
            "shape": tuple(t.shape), "data": (t.data_ptr, False), "version": 3, "strides": None,
            "typestr": "<i2" if dtype == "bfloat16" else np.dtype(dtype).str}

    view = torch.as_tensor(View(), device="cuda")
    return view.view(torch.bfloat16) if dtype == "bfloat16" else view
