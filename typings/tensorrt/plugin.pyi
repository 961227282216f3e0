# tensorrt.plugin ("quickly deployable plugins", TensorRT 10.6+; aot_impl 10.9+) is not in
# tensorrt-stubs 10.13.0.35.1, which has only the tensorrt_bindings API. This local stub declares
# the names onnxpass.plugins.trt uses, loosely typed; delete it when the stubs ship the module.
from collections.abc import Callable
from typing import Any

_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

class TensorDesc:
    shape_expr: Any
    dtype: Any

class Tensor:
    shape: Any
    dtype: Any
    data_ptr: int

class AutoTuneCombination:
    def __init__(self, io_types: str = ..., layouts: str = ..., tactics: list[int] | None = ...) -> None: ...

class KernelLaunchParams:
    grid_x: Any
    grid_y: Any
    grid_z: Any
    block_x: Any
    block_y: Any
    block_z: Any
    shared_mem: Any

class SymInt32:
    def __init__(self, value: Any) -> None: ...

class SymExprs: ...

class SymIntExprs(SymExprs):
    @classmethod
    def from_tuple(cls, shape_exprs: tuple[Any, ...] | list[Any]) -> SymIntExprs: ...

def from_shape_expr(shape_expr: Any, dtype: Any) -> TensorDesc: ...
def register(plugin_id: str, lazy_register: bool = ...) -> _Decorator: ...
def impl(plugin_id: str) -> _Decorator: ...
def aot_impl(plugin_id: str) -> _Decorator: ...
def autotune(plugin_id: str) -> _Decorator: ...
