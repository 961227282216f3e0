"""Plugin specifications: the single statement of what a plugin node is.

A plugin node follows the convention of DESIGN.md: ``op_type`` is the plugin name (never an ONNX op
name), its domain is listed in ``opset_import``, it carries ``plugin_namespace`` and
``plugin_version``, and the model holds a local function of the same (domain, name) whose body is
the reference decomposition. ONNX Runtime and ``onnx.checker`` inline the function; TensorRT with
the plugin registered runs the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import helper

from onnxpass.errors import PassError

DOMAIN = "onnxpass"
NAMESPACE = "onnxpass"


@dataclass(frozen=True)
class PluginAttr:
    name: str
    kind: str  # "float" | "int" | "ints" | "string"
    default: Any
    doc: str = ""


@dataclass(frozen=True)
class PluginSpec:
    """Name, signature, attributes and reference decomposition of one plugin op.

    ``body(opset)`` returns the function body in ONNX text syntax for a model whose default-domain
    opset is ``opset``; ``min_opset`` is the lowest opset the body can be written in.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: tuple[PluginAttr, ...]
    body: Callable[[int], str]
    doc: str
    version: str = "1"
    min_opset: int = 13
    dtypes: tuple[str, ...] = ("float32", "float16")
    implementations: tuple[str, ...] = field(default=("onnx-function",))

    def function(self, opset: int) -> onnx.FunctionProto:
        if opset < self.min_opset:
            raise PassError(f"plugin {self.name} needs opset >= {self.min_opset}, model has {opset}")
        attrs = ", ".join(a.name for a in self.attributes)
        text = (f'<domain: "{DOMAIN}", opset_import: ["" : {opset}]>\n'
                f"{self.name} <{attrs}> ({', '.join(self.inputs)}) => ({', '.join(self.outputs)})\n"
                f"{{\n{self.body(opset)}\n}}")
        return onnx.parser.parse_function(text)

    def node_attributes(self, values: dict[str, Any]) -> dict[str, onnx.AttributeProto]:
        unknown = set(values) - {a.name for a in self.attributes}
        if unknown:
            raise TypeError(f"{self.name}: unknown attributes {sorted(unknown)}")
        out = {"plugin_namespace": helper.make_attribute("plugin_namespace", NAMESPACE),
               "plugin_version": helper.make_attribute("plugin_version", self.version)}
        for a in self.attributes:
            v = values.get(a.name, a.default)
            if a.kind == "float":
                v = float(v)
            elif a.kind == "int":
                v = int(v)
            elif a.kind == "ints":
                v = [int(x) for x in v]
            out[a.name] = helper.make_attribute(a.name, v)
        return out


_REGISTRY: dict[str, PluginSpec] = {}


def register_plugin(spec: PluginSpec) -> PluginSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"plugin {spec.name} registered twice")
    if _is_onnx_op(spec.name):
        raise ValueError(f"plugin name {spec.name} is a standard ONNX op name")
    _REGISTRY[spec.name] = spec
    return spec


def get_plugin(name: str) -> PluginSpec:
    from onnxpass import plugins  # noqa: F401  (registers the built-in specs)

    return _REGISTRY[name]


def all_plugins() -> list[PluginSpec]:
    from onnxpass import plugins  # noqa: F401

    return sorted(_REGISTRY.values(), key=lambda s: s.name)


def _is_onnx_op(name: str) -> bool:
    return any(s.name == name for s in onnx.defs.get_all_schemas())


def reduce_mean(x: str, axes: list[int], opset: int, out: str) -> str:
    """ReduceMean in either form (axes as attribute before opset 18, as input from 18)."""
    if opset >= 18:
        return (f"   {out}_axes = Constant <value_ints: ints = {axes}> ()\n"
                f"   {out} = ReduceMean <keepdims: int = 1> ({x}, {out}_axes)")
    return f"   {out} = ReduceMean <axes: ints = {axes}, keepdims: int = 1> ({x})"


def cast_like(value: str, like: str, opset: int, out: str) -> str:
    """CastLike from opset 15; before it the body is float32-only (the pass checks dtypes)."""
    if opset >= 15:
        return f"   {out} = CastLike ({value}, {like})"
    return f"   {out} = Identity ({value})"
