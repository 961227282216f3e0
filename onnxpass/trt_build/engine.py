"""A deserialized TensorRT engine that ``bench``, ``compare`` and ``debug precision`` run.

Needs TensorRT and a CUDA build of torch (device buffers, streams). The onnxpass plugins an engine
was built with (the ``plugins`` of the JSON record ``build`` writes beside it, else every onnxpass
plugin) are registered before deserializing: an engine with JIT plugins calls back into them; AOT
kernels are inside the engine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxpass.errors import OnnxpassError
from onnxpass.trt_build import import_tensorrt
from onnxpass.trt_build.build import parse_shapes, record_path


def _dims(d: Any) -> tuple[int, ...]:
    """A tensorrt.Dims -> tuple (Dims has __len__ and __getitem__, no __iter__)."""
    return tuple(d[i] for i in range(len(d)))


def _register_plugins(engine_path: str) -> None:
    """Register the onnxpass plugins the engine's build record names (all when it has none)."""
    try:
        from onnxpass.plugins import trt as trt_plugins

        record = record_path(engine_path)
        ops = None
        if record.is_file():
            ids = json.loads(record.read_text()).get("plugins", [])
            ops = [i.partition("::")[2] for i in ids]
        if ops != []:
            trt_plugins.register(ops, jit=True, aot=True)
    except ImportError:  # TensorRT < 10.9 has no tensorrt.plugin; its engines have none of ours
        pass


class Engine:
    """``Engine(path)``; ``set_shapes({name: shape})`` (default: static dims, else the first
    profile's opt shape) allocates device buffers; ``infer(feeds)`` copies numpy feeds in and
    outputs out; ``run()`` enqueues on ``stream`` with whatever the buffers hold."""

    def __init__(self, path: str, shapes: Sequence[str] = ()) -> None:
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise OnnxpassError(f"{path}: running a TensorRT engine needs a CUDA build of torch "
                                f"and a GPU")
        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")
        _register_plugins(path)
        engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise OnnxpassError(f"{path}: TensorRT cannot deserialize it (built by another "
                                f"TensorRT version or for another GPU?)")
        self.path, self.engine = path, engine
        self.context = engine.create_execution_context()
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in self.names
                       if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.stream = torch.cuda.Stream()
        self.buffers: dict[str, Any] = {}
        self.batch = 1
        self.set_shapes({n: opt for n, _, opt, _ in parse_shapes(shapes)})

    def set_shapes(self, given: Mapping[str, Sequence[int]]) -> None:
        trt, torch, engine = self.trt, self.torch, self.engine
        for n in set(given) - set(self.inputs):
            raise OnnxpassError(f"{self.path}: engine has no input {n!r}; inputs: "
                                f"{', '.join(self.inputs)}")
        for n in self.inputs:
            shape = tuple(given[n]) if n in given else _dims(engine.get_tensor_shape(n))
            if any(d < 0 for d in shape):  # dynamic: the profile's opt shape
                shape = _dims(engine.get_tensor_profile_shape(n, 0)[1])
            if not self.context.set_input_shape(n, shape):
                raise OnnxpassError(f"{self.path}: input {n} of shape {list(shape)} is outside "
                                    f"the engine's optimization profile")
            self.batch = max(self.batch, shape[0] if shape else 1)
        for n in self.names:
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(n)))).dtype
            shape = _dims(self.context.get_tensor_shape(n))
            buf = (torch.randn(shape, device="cuda").to(dtype) if dtype.is_floating_point
                   else torch.zeros(shape, dtype=dtype, device="cuda"))
            self.buffers[n] = buf
            self.context.set_tensor_address(n, buf.data_ptr())

    def run(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise OnnxpassError(f"{self.path}: TensorRT execute_async_v3 failed (see its log)")

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for ``feeds`` (every engine input, numpy, cast to the engine's dtypes)."""
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise OnnxpassError(f"{self.path}: no value for engine inputs {missing}")
        self.set_shapes({n: feeds[n].shape for n in self.inputs})
        torch = self.torch
        with torch.cuda.stream(self.stream):
            for n in self.inputs:
                self.buffers[n].copy_(torch.from_numpy(np.ascontiguousarray(feeds[n])).to(
                    self.buffers[n].dtype), non_blocking=False)
            self.run()
            self.stream.synchronize()
        return {n: self.buffers[n].cpu().numpy() for n in self.outputs}
