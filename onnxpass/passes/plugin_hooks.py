"""What the graph layer needs to know about plugin nodes, handed to it through its hooks.

:func:`install` registers, for the plugin domain, how to type a plugin node's outputs (from its
spec, where inference through the local function gives up) and how to rewrite its local function
for a new opset. The graph and opset modules never import the plugins; the pipeline runner calls
:func:`install` before it runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from onnxpass.graph import Graph, Node, register_output_typer
from onnxpass.opset import register_function_upgrader
from onnxpass.plugins.base import DOMAIN, get_plugin


def install() -> None:
    """Register the plugin domain's output typer and function upgrader (idempotent)."""
    register_output_typer(DOMAIN, plugin_output_types)
    register_function_upgrader(DOMAIN, plugin_function)


def plugin_output_types(graph: Graph, node: Node) -> Sequence[onnx.TypeProto | None] | None:
    """The output types of a plugin node from its spec, or None where its inputs are untyped."""
    spec = get_plugin(node.op_type)
    shapes = [graph.shape(i) for i in node.inputs]
    dtypes = [graph.dtype(i) for i in node.inputs]
    if any(s is None for s in shapes) or any(d is None for d in dtypes):
        return None
    attrs = {k: node.attr(k) for k in node.attrs}
    out_shapes = spec.output_shapes(shapes, attrs)  # type: ignore[arg-type]
    out_dtypes = spec.output_dtypes(
        [helper.tensor_dtype_to_np_dtype(d).name for d in dtypes])  # type: ignore[arg-type]
    return [helper.make_tensor_type_proto(
        helper.np_dtype_to_tensor_dtype(np.dtype(dt)),
        [d if isinstance(d, (int, str)) else None for d in shape])
        for shape, dt in zip(out_shapes, out_dtypes)]


def plugin_function(name: str, opset: int) -> onnx.FunctionProto | None:
    """A plugin's reference body written for ``opset`` (None for a name that is no plugin)."""
    try:
        spec = get_plugin(name)
    except KeyError:
        return None
    return spec.function(opset)
