"""Opset conversion: raise a model's default-domain opset with ONNX's version converter.

The converter runs on the weight-free skeleton, so weights are never copied. Custom domains whose
local functions are written for one opset (plugin reference bodies) register a function upgrader;
this module imports nothing above the model layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import onnx

from onnxpass.errors import PassError
from onnxpass.modelio import first_line, skeleton


class _GraphLike(Protocol):
    """What :func:`convert_opset` needs of a Graph (graph.py imports this module, not back)."""

    base_dir: str

    def to_model(self) -> onnx.ModelProto: ...

    def refresh_types(self) -> None: ...


_G = TypeVar("_G", bound=_GraphLike)

FunctionUpgrader = Callable[[str, int], "onnx.FunctionProto | None"]
"""``(function name, opset) -> the function written for that opset``, or None to keep it."""

_UPGRADERS: dict[str, FunctionUpgrader] = {}


def register_function_upgrader(domain: str, upgrade: FunctionUpgrader) -> None:
    """Have :func:`convert_opset` rewrite the local functions of ``domain`` for the new opset."""
    _UPGRADERS[domain] = upgrade


def raise_model_opset(model: onnx.ModelProto, version: int, why: str) -> None:
    """Raise ``model``'s default-domain opset to ``version`` in place. Raises PassError (naming
    ``why``) if conversion fails; the model is untouched then."""
    from onnx import version_converter

    old = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    metadata = node_metadata(model)
    skel, moved = skeleton(model)
    try:
        conv = version_converter.convert_version(skel, version)
        onnx.checker.check_model(conv)
    except Exception as e:
        raise PassError(f"cannot raise opset {old} -> {version} for {why}: "
                        f"{first_line(e)}") from None
    moved_set = set(moved)
    g = model.graph
    del g.node[:]
    g.node.extend(conv.graph.node)
    restore_node_metadata(model, metadata)
    # The weights stay where they are (extend would copy them); only the small initializers,
    # which went through the converter, are replaced.
    for k in reversed([k for k, t in enumerate(g.initializer) if t.name not in moved_set]):
        del g.initializer[k]
    g.initializer.extend(conv.graph.initializer)
    # The converter keeps every value's meaning: types the model records stay true, and
    # inference at the new opset cannot always recover them (a view(b, s, -1, d) of symbolic b)
    produced = {o for n in g.node for o in n.output}
    kept = [vi for vi in g.value_info if vi.name in produced]
    del g.value_info[:]
    g.value_info.extend(kept)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version
    for f in model.functions:
        upgrade = _UPGRADERS.get(f.domain)
        new = upgrade(f.name, version) if upgrade else None
        if new is not None:
            f.CopyFrom(new)


def convert_opset(graph: _G, version: int, why: str) -> _G:
    """``graph`` at default-domain opset ``version``: a new Graph, types refreshed. Raises
    PassError if conversion fails."""
    model = graph.to_model()
    raise_model_opset(model, version, why)
    new = type(graph)(model, graph.base_dir)  # type: ignore[call-arg]
    new.refresh_types()
    return new


def node_metadata(model: onnx.ModelProto) -> dict[str, list[onnx.StringStringEntryProto]]:
    """Node name -> metadata_props, for the nodes that have some (names are unique)."""
    return {n.name: list(n.metadata_props) for n in model.graph.node
            if n.name and len(n.metadata_props)}


def restore_node_metadata(model: onnx.ModelProto,
                          saved: dict[str, list[onnx.StringStringEntryProto]]) -> None:
    """Put back the metadata a round trip through another tool (GraphSurgeon, the version
    converter) dropped: provenance, and the low-precision pass's boundary marks that keep it
    idempotent."""
    for n in model.graph.node:
        if n.name in saved and not len(n.metadata_props):
            n.metadata_props.extend(saved[n.name])
