"""Plugin specifications: the single statement of what a plugin node is.

A plugin node follows the convention of docs/design.md: ``op_type`` is the plugin name (never an
ONNX op name), its domain is listed in ``opset_import``, it carries ``plugin_namespace`` and
``plugin_version``, and the model holds a local function of the same (domain, name) whose body is
the reference decomposition. ONNX Runtime and ``onnx.checker`` inline the function; TensorRT with
the plugin registered runs the plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    """Name, signature, types, shapes, attributes and reference decomposition of one plugin op.

    ``body(opset)`` returns the function body in ONNX text syntax for a model whose default-domain
    opset is ``opset``; ``min_opset`` is the lowest opset the body can be written in, and
    ``typed_opset`` the lowest at which it computes in a type other than float32 (its constants
    reach T through CastLike). ``casts_attr`` names an attribute holding an ONNX element type the
    body casts to and back (attention's softmax precision): other than float32, it needs
    ``typed_opset`` too. These limits are applied in one place: :meth:`dtype_refusal` says which
    dtypes no opset allows, :meth:`opset_for` the opset a node needs, :meth:`can_emit` both. A
    model below that opset is not refused: the pass raises its opset, as it does for a standard
    op (RewriteBuilder.require_opset; a float16 LayerNormPlugin in an opset-14 model raises it
    to 15).

    Types: every input and output has the one type T, any of ``dtypes``, unless ``io_dtypes``
    gives it its own choices (an int64 mask, say); an output of type T takes the dtype of the
    first input of type T. Shapes: ``shapes(input_shapes, attrs)`` gives the output shapes; its
    dims are ints or symbolic dims (TensorRT's ``ShapeExpr``: use only ``+ - * //``); by default
    every output has the first input's shape. Kernels, references and TensorRT registration read
    all of this from here (see onnxpass/plugins/kernels/).
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: tuple[PluginAttr, ...]
    body: Callable[[int], str]
    doc: str
    version: str = "1"
    min_opset: int = 13
    typed_opset: int = 15
    casts_attr: str | None = None
    dtypes: tuple[str, ...] = ("float32", "float16")
    io_dtypes: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    shapes: Callable[[list[list[Any]], dict[str, Any]], list[list[Any]]] | None = None

    def allowed_dtypes(self, io_name: str) -> tuple[str, ...]:
        return self.io_dtypes.get(io_name, self.dtypes)

    def output_dtypes(self, input_dtypes: Sequence[str]) -> list[str]:
        t = next((d for n, d in zip(self.inputs, input_dtypes) if n not in self.io_dtypes), None)
        return [self.io_dtypes[o][0] if o in self.io_dtypes else t or self.dtypes[0]
                for o in self.outputs]

    def output_shapes(self, input_shapes: Sequence[Sequence[Any]], attrs: dict[str, Any]
                      ) -> list[list[Any]]:
        if self.shapes is not None:
            return [list(s) for s in self.shapes([list(s) for s in input_shapes], attrs)]
        return [list(input_shapes[0]) for _ in self.outputs]

    def attr_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """Every attribute's value, defaults filled in, in declaration order."""
        unknown = set(values) - {a.name for a in self.attributes}
        if unknown:
            raise TypeError(f"{self.name}: unknown attributes {sorted(unknown)}")
        return {a.name: _typed(a, values.get(a.name, a.default)) for a in self.attributes}

    def opset_for(self, dtypes: Mapping[str, str | None], attrs: Mapping[str, Any] | None = None
                  ) -> int:
        """The lowest default-domain opset whose body computes these input dtypes (io name ->
        dtype name, as in ``dtypes``) with these attribute values."""
        typed = [d for n, d in dtypes.items() if n not in self.io_dtypes]
        cast_to = (attrs or {}).get(self.casts_attr) if self.casts_attr else None
        if any(d != "float32" for d in typed) or cast_to not in (None, onnx.TensorProto.FLOAT):
            return max(self.min_opset, self.typed_opset)
        return self.min_opset

    def dtype_refusal(self, dtypes: Mapping[str, str | None]) -> str | None:
        """Why no model can hold a node of this plugin with these input dtypes (io name ->
        dtype name), or None (:meth:`opset_for` then says from which opset one can)."""
        for name, dtype in dtypes.items():
            allowed = self.allowed_dtypes(name)
            if dtype not in allowed:
                return (f"{self.name} takes {name} of dtype {', '.join(allowed)}, not "
                        f"{dtype or 'unknown'}")
        return None

    def describe(self, dtypes: Mapping[str, str | None]) -> str:
        """``LayerNormPlugin on x float16, ...``: a node of this plugin, in a refusal."""
        return f"{self.name} on {', '.join(f'{n} {d}' for n, d in dtypes.items())}"

    def can_emit(self, opset: int, dtypes: Mapping[str, str | None],
                 attrs: Mapping[str, Any] | None = None) -> str | None:
        """Why a node of this plugin cannot be emitted into a model of default-domain opset
        ``opset`` with these input dtypes (io name -> dtype name), or None when it can. A pass
        does not ask this at the model's opset: it raises the opset to :meth:`opset_for` when a
        match needs it, as for a standard op (see RewriteBuilder.require_opset)."""
        reason = self.dtype_refusal(dtypes)
        need = self.opset_for(dtypes, attrs)
        if reason is None and opset < need:
            reason = f"{self.describe(dtypes)} needs opset >= {need}, the model has {opset}"
        return reason

    def function(self, opset: int) -> onnx.FunctionProto:
        if opset < self.min_opset:  # a caller that skipped can_emit: a bug, not a user's model
            raise PassError(f"plugin {self.name} needs opset >= {self.min_opset}, model has "
                            f"{opset}")
        attrs = ", ".join(a.name for a in self.attributes)
        text = (f'<domain: "{DOMAIN}", opset_import: ["" : {opset}]>\n'
                f"{self.name} <{attrs}> ({', '.join(self.inputs)}) => ({', '.join(self.outputs)})\n"
                f"{{\n{self.body(opset)}\n}}")
        return onnx.parser.parse_function(text)

    def node_attributes(self, values: dict[str, Any]) -> dict[str, onnx.AttributeProto]:
        out = {"plugin_namespace": helper.make_attribute("plugin_namespace", NAMESPACE),
               "plugin_version": helper.make_attribute("plugin_version", self.version)}
        for k, v in self.attr_values(values).items():
            out[k] = helper.make_attribute(k, v)
        return out


def _typed(a: PluginAttr, v: Any) -> Any:
    if a.kind == "float":
        return float(v)
    if a.kind == "int":
        return int(v)
    if a.kind == "ints":
        return [int(x) for x in v]
    return v


_REGISTRY: dict[str, PluginSpec] = {}


def register_plugin(spec: PluginSpec) -> PluginSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"plugin {spec.name} registered twice")
    if _is_onnx_op(spec.name):
        raise ValueError(f"plugin name {spec.name} is a standard ONNX op name")
    _REGISTRY[spec.name] = spec
    return spec


def get_plugin(name: str) -> PluginSpec:
    # Importing this module ran onnxpass/plugins/__init__.py, which registered the built-ins.
    return _REGISTRY[name]


def all_plugins() -> list[PluginSpec]:
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
