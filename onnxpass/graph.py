"""The graph layer: the one place that loads, edits and saves ONNX models.

A :class:`Graph` wraps a ``ModelProto``. Nodes are small :class:`Node` objects; initializers stay in
the proto, untouched, so weights are never copied or decoded unless a pass asks for their value.
The graph keeps producer and consumer maps, treats Constant nodes and initializers alike as
constants, and offers one edit operation, :meth:`Graph.replace`, that refuses any rewrite that is
not self-contained.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from onnxpass.errors import PassError
# Loading and saving live in onnxpass.modelio; re-exported here, where callers have found them.
from onnxpass.modelio import check_model, load_model, save_model, skeleton  # noqa: F401
from onnxpass.modelio import first_line as _first_line

Dim = int | str | None
Shape = tuple[Dim, ...]

# Ops whose attribute became an input in a later opset: attribute name -> input index.
# The matcher reads both forms through Node.attr(), so patterns never care which one a model uses.
ATTR_INPUTS: dict[str, dict[str, int]] = {
    **{
        op: {"axes": 1}
        for op in (
            "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
            "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Squeeze", "Unsqueeze",
        )
    },
    "Split": {"split": 1},
    "Clip": {"min": 1, "max": 2},
}


class Node:
    """One ONNX node. ``inputs``/``outputs`` are value names ("" for an absent optional input)."""

    __slots__ = ("op_type", "domain", "inputs", "outputs", "attrs", "name", "metadata", "graph",
                 "doc_string", "__weakref__")

    def __init__(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str],
                 attrs: dict[str, AttributeProto] | None = None, *, domain: str = "",
                 name: str = "", metadata: dict[str, str] | None = None, doc_string: str = "") -> None:
        self.op_type = op_type
        self.domain = "" if domain == "ai.onnx" else domain
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.attrs: dict[str, AttributeProto] = dict(attrs or {})
        self.name = name
        self.metadata: dict[str, str] = dict(metadata or {})
        self.doc_string = doc_string
        self.graph: Graph | None = None

    @classmethod
    def from_proto(cls, p: onnx.NodeProto) -> Node:
        return cls(p.op_type, p.input, p.output, {a.name: a for a in p.attribute}, domain=p.domain,
                   name=p.name, metadata={e.key: e.value for e in p.metadata_props},
                   doc_string=p.doc_string)

    def to_proto(self) -> onnx.NodeProto:
        p = onnx.NodeProto(op_type=self.op_type, domain=self.domain, name=self.name,
                           input=self.inputs, output=self.outputs, doc_string=self.doc_string)
        p.attribute.extend(self.attrs[k] for k in sorted(self.attrs))
        for k, v in self.metadata.items():
            p.metadata_props.add(key=k, value=v)
        return p

    def attr(self, name: str, default: Any = None) -> Any:
        """Attribute value as a Python object, reading the input form where the op moved it to one
        (ReduceMean ``axes`` at opset 18) and the schema's default when absent."""
        if name in self.attrs:
            return helper.get_attribute_value(self.attrs[name])
        idx = ATTR_INPUTS.get(self.op_type, {}).get(name)
        if idx is not None and self.domain == "" and len(self.inputs) > idx and self.inputs[idx]:
            if self.graph is None:
                return default
            val = self.graph.const_value(self.inputs[idx])
            if val is None:
                return _NOT_CONSTANT
            return val.tolist()
        if default is None and self.graph is not None:
            return self.graph.schema_default(self, name)
        return default

    @property
    def data_inputs(self) -> list[str]:
        """Inputs that are data, not an attribute in input form."""
        moved = ATTR_INPUTS.get(self.op_type) if self.domain == "" else None
        if not moved:
            return self.inputs
        first = min(moved.values())
        return self.inputs[:first]

    def __repr__(self) -> str:
        label = f"{self.domain}.{self.op_type}" if self.domain else self.op_type
        return f"{label}({', '.join(self.inputs)}) -> {', '.join(self.outputs)}" + (
            f" [{self.name}]" if self.name else "")


class _NotConstant:
    def __repr__(self) -> str:
        return "<not constant>"


_NOT_CONSTANT = _NotConstant()
NOT_CONSTANT: Any = _NOT_CONSTANT


class Graph:
    """An editable view of a model's main graph."""

    def __init__(self, model: onnx.ModelProto, base_dir: str | os.PathLike[str] = "") -> None:
        self.model = model
        self.base_dir = str(base_dir)
        g = model.graph
        self.nodes: list[Node] = []
        self.producer: dict[str, Node] = {}
        self.consumers: dict[str, list[Node]] = {}
        self.inputs = [i.name for i in g.input]
        self.outputs = [o.name for o in g.output]
        self._output_set = set(self.outputs)
        self.initializers: dict[str, TensorProto] = {t.name: t for t in g.initializer}
        self.new_initializers: dict[str, TensorProto] = {}
        self.types: dict[str, onnx.TypeProto] = {}
        self._const_cache: dict[str, np.ndarray | None] = {}
        # Every name in the model, values and nodes alike (subgraphs included): a fresh name
        # avoids them all, so names stay unique across passes, rounds and rebuilt Graphs.
        self._used_names: set[str] = _all_names(g)
        self._name_counts: dict[str, int] = {}
        self._schema_cache: dict[tuple[str, str, str], Any] = {}
        self._live_initializers: set[str] = set(self.initializers)
        for vi in itertools.chain(g.input, g.output, g.value_info):
            if vi.type.HasField("tensor_type"):
                self.types[vi.name] = vi.type
        for t in g.initializer:
            self.types.setdefault(t.name, _tensor_type(t.data_type, t.dims))
        seen_nodes: set[str] = set()
        for p in g.node:
            node = Node.from_proto(p)
            if node.name and node.name in seen_nodes:  # ONNX Runtime refuses two such nodes
                node.name = self.fresh_name(node.name)
            seen_nodes.add(node.name)
            self._add(node)
        self._sorted = True  # ONNX requires a model's nodes in topological order

    # ---- structure -------------------------------------------------------------------------
    def _add(self, node: Node) -> None:
        node.graph = self
        self._sorted = False
        self.nodes.append(node)
        for o in node.outputs:
            if o:
                self.producer[o] = node
                self._used_names.add(o)
        for i in node.inputs:
            if i:
                self.consumers.setdefault(i, []).append(node)

    def _remove(self, node: Node) -> None:
        for o in node.outputs:
            if self.producer.get(o) is node:
                del self.producer[o]
        for i in node.inputs:
            users = self.consumers.get(i)
            if users:
                users[:] = [u for u in users if u is not node]
        node.graph = None

    def users(self, value: str) -> list[Node]:
        return self.consumers.get(value, [])

    def is_output(self, value: str) -> bool:
        return value in self._output_set

    def opset(self, domain: str = "") -> int:
        for o in self.model.opset_import:
            if o.domain in (domain, "ai.onnx" if domain == "" else domain):
                return o.version
        return 0

    def set_opset(self, domain: str, version: int) -> None:
        for o in self.model.opset_import:
            if o.domain == domain:
                o.version = version
                return
        self.model.opset_import.add(domain=domain, version=version)

    def fresh_name(self, hint: str = "v") -> str:
        """A name no value or node of the model has: ``hint`` itself when it is free, else
        ``hint_1``, ``hint_2``, ... Names are never reused, even after their node is removed."""
        hint = hint or "v"
        name = hint
        k = self._name_counts.get(hint, 0)
        while name in self._used_names:
            k += 1
            name = f"{hint}_{k}"
        self._name_counts[hint] = k
        self._used_names.add(name)
        return name

    def fresh_node_name(self, near: Node | None, op_type: str) -> str:
        """A node name derived from the node it replaces or sits next to: ``/enc/ln/Add_1``
        and ``LayerNormalization`` give ``/enc/ln/LayerNormalization``."""
        base = (near.name or (near.outputs[0] if near.outputs else "")) if near else ""
        scope = base.rsplit("/", 1)[0] if "/" in base else base
        return self.fresh_name(f"{scope}/{op_type}" if scope else op_type)

    def live_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.graph is self]

    def op_types(self) -> set[str]:
        return {n.op_type for n in self.nodes if n.graph is self}

    def schema_default(self, node: Node, name: str) -> Any:
        key = (node.domain, node.op_type, name)
        if key not in self._schema_cache:
            value = None
            try:
                schema = onnx.defs.get_schema(node.op_type, self.opset(node.domain), node.domain)
                a = schema.attributes.get(name)
                if a is not None and a.default_value.name:
                    value = helper.get_attribute_value(a.default_value)
            except Exception:  # unknown op or domain: no default
                value = None
            self._schema_cache[key] = value
        return self._schema_cache[key]

    # ---- constants, shapes, types ----------------------------------------------------------
    def is_const(self, value: str) -> bool:
        if value in self.initializers or value in self.new_initializers:
            return value not in self.inputs
        p = self.producer.get(value)
        return p is not None and p.op_type == "Constant" and p.domain == ""

    def const_value(self, value: str) -> np.ndarray | None:
        """The value of a constant (initializer or Constant node), or None. Decoded on first use."""
        if value in self._const_cache:
            return self._const_cache[value]
        result: np.ndarray | None = None
        t = self.new_initializers.get(value) or self.initializers.get(value)
        if t is not None and value not in self.inputs:
            result = numpy_helper.to_array(t, self.base_dir)
        else:
            p = self.producer.get(value)
            if p is not None and p.op_type == "Constant" and p.domain == "":
                result = _constant_node_value(p)
        self._const_cache[value] = result
        return result

    def const_size(self, value: str) -> int | None:
        """Number of elements of a constant, without decoding it."""
        t = self.new_initializers.get(value) or self.initializers.get(value)
        if t is not None:
            return int(np.prod(t.dims)) if len(t.dims) else 1
        v = self.const_value(value)
        return None if v is None else int(v.size)

    def shape(self, value: str) -> Shape | None:
        t = self.types.get(value)
        if t is None or not t.tensor_type.HasField("shape"):
            c = self.const_value(value) if self.is_const(value) else None
            return None if c is None else tuple(int(d) for d in c.shape)
        return tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in t.tensor_type.shape.dim
        )

    def dtype(self, value: str) -> int | None:
        t = self.types.get(value)
        if t is not None and t.tensor_type.elem_type:
            return t.tensor_type.elem_type
        init = self.new_initializers.get(value) or self.initializers.get(value)
        if init is not None:
            return init.data_type
        c = self.const_value(value) if self.is_const(value) else None
        return None if c is None else helper.np_dtype_to_tensor_dtype(c.dtype)

    def rank(self, value: str) -> int | None:
        s = self.shape(value)
        return None if s is None else len(s)

    # ---- editing ---------------------------------------------------------------------------
    def add_initializer(self, array: np.ndarray, hint: str = "const") -> str:
        name = self.fresh_name(hint)
        self.new_initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        self.types[name] = _tensor_type(helper.np_dtype_to_tensor_dtype(np.asarray(array).dtype),
                                        np.shape(array))
        return name

    def replace(self, matched: Iterable[Node], old_outputs: Sequence[str], new_nodes: Sequence[Node],
                new_outputs: Sequence[str]) -> None:
        """Replace the subgraph ``matched`` by ``new_nodes``; ``old_outputs[i]`` becomes
        ``new_outputs[i]``. Raises :class:`RewriteRefused` when the match is not self-contained."""
        matched = list({id(n): n for n in matched}.values())
        self.check_self_contained(matched, old_outputs)
        mapping = dict(zip(old_outputs, new_outputs))
        # Where a new output is a fresh value, give it the old name so consumers and graph outputs
        # stay as they are; where it is a pre-existing value, rewire consumers instead.
        rename = {new: old for old, new in mapping.items() if _produced_by(new, new_nodes)}
        for node in new_nodes:
            node.outputs = [rename.get(o, o) for o in node.outputs]
            node.inputs = [rename.get(i, i) for i in node.inputs]
        for n in matched:
            self._remove(n)
        for old, new in mapping.items():
            if new in rename:
                continue
            if self.is_output(old):
                ident = Node("Identity", [new], [old],
                             name=self.fresh_node_name(self.producer.get(old), "Identity"))
                new_nodes = [*new_nodes, ident]
                continue
            for user in list(self.users(old)):
                self._sorted = False
                user.inputs = [new if i == old else i for i in user.inputs]
                self.consumers.setdefault(new, []).append(user)
            self.consumers.pop(old, None)
        for node in new_nodes:
            self._add(node)

    def check_self_contained(self, matched: Sequence[Node], outputs: Sequence[str]) -> None:
        inside = {id(n) for n in matched}
        out_set = set(outputs)
        for n in matched:
            for o in n.outputs:
                if not o or o in out_set:
                    continue
                if self.is_output(o):
                    raise RewriteRefused(f"internal value {o!r} is a graph output")
                for u in self.users(o):
                    if id(u) not in inside:
                        raise RewriteRefused(f"internal value {o!r} is also used by {u.op_type} "
                                             f"{u.name or u.outputs[0]!r} outside the match")
        if len(outputs) > 1 and self._reaches_inputs(matched, outputs):
            raise RewriteRefused("rewrite would create a cycle")

    def _reaches_inputs(self, matched: Sequence[Node], outputs: Sequence[str]) -> bool:
        inside = {id(n) for n in matched}
        produced = {o for n in matched for o in n.outputs}
        ins = {i for n in matched for i in n.inputs if i and i not in produced}
        seen: set[int] = set()
        stack = [u for o in outputs for u in self.users(o) if id(u) not in inside]
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if any(o in ins for o in n.outputs):
                return True
            stack.extend(u for o in n.outputs for u in self.users(o) if id(u) not in inside)
        return False

    def remove_dead(self) -> int:
        """Remove nodes and initializers that no graph output depends on."""
        live: set[str] = set(self.outputs)
        keep: list[Node] = []
        removed = 0
        for n in reversed(self.toposort()):
            if any(o in live for o in n.outputs) or _has_side_effects(n):
                keep.append(n)
                live.update(i for i in n.inputs if i)
                live.update(_subgraph_captures(n))
            else:
                self._remove(n)
                removed += 1
        self.nodes = keep[::-1]
        for name in [k for k in self.new_initializers if k not in live]:
            del self.new_initializers[name]
        self._live_initializers = live
        return removed

    def toposort(self) -> list[Node]:
        """Stable topological order of the live nodes (original order where it is valid)."""
        nodes = self.live_nodes()
        if self._sorted:  # nothing added or rewired since the last sort: removals keep order
            self.nodes = nodes
            return nodes
        index = {id(n): k for k, n in enumerate(nodes)}
        indeg = {id(n): 0 for n in nodes}
        for n in nodes:
            deps = {id(self.producer[i]) for i in _all_inputs(n) if i in self.producer}
            deps.discard(id(n))
            indeg[id(n)] = len(deps)
        import heapq

        ready = [index[id(n)] for n in nodes if indeg[id(n)] == 0]
        heapq.heapify(ready)
        order: list[Node] = []
        while ready:
            n = nodes[heapq.heappop(ready)]
            order.append(n)
            done: set[int] = set()
            for o in n.outputs:
                for u in self.users(o):
                    if id(u) in done or id(u) not in indeg or u is n:
                        continue
                    done.add(id(u))
                    indeg[id(u)] -= 1
                    if indeg[id(u)] == 0:
                        heapq.heappush(ready, index[id(u)])
        if len(order) != len(nodes):
            raise PassError("graph has a cycle")
        self.nodes = order
        self._sorted = True
        return order

    # ---- back to a model -------------------------------------------------------------------
    def to_model(self) -> onnx.ModelProto:
        """Write the edits back into ``self.model`` (in place) and return it."""
        self.remove_dead()
        g = self.model.graph
        live = self._live_initializers | set(self.inputs)
        for k in reversed([k for k, t in enumerate(g.initializer) if t.name not in live]):
            del g.initializer[k]
        g.initializer.extend(self.new_initializers.values())
        self.initializers = {t.name: t for t in g.initializer}
        self.new_initializers = {}
        del g.node[:]
        g.node.extend(n.to_proto() for n in self.nodes)
        produced = {o for n in self.nodes for o in n.outputs} - set(self.outputs)
        del g.value_info[:]
        g.value_info.extend(helper.make_value_info(v, self.types[v]) for v in sorted(produced)
                            if v in self.types and self.types[v].tensor_type.elem_type)
        _prune_opsets(self.model)
        return self.model

    def refresh_types(self, skel: onnx.ModelProto | None = None, retry: bool = True) -> None:
        """Run shape inference on the weight-free skeleton (``skel``, if the caller just made one
        from ``to_model()``) and record every value's type."""
        if skel is None:
            skel, _ = skeleton(self.to_model())
        try:
            inferred = onnx.shape_inference.infer_shapes(skel, data_prop=True)
        except Exception:  # inference is best effort: a custom op without schema stops nothing
            return
        ig = inferred.graph
        for vi in itertools.chain(ig.value_info, ig.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                self.types[vi.name] = vi.type
        self._const_cache.clear()
        if self._plugin_types() and retry:
            # What follows a plugin node is inferred again, now that its outputs are typed.
            self.refresh_types(retry=False)

    def _plugin_types(self) -> int:
        """Type plugin outputs that inference through the local function left unknown (e.g.
        axes computed from an attribute), from the plugin's own spec. Returns how many."""
        from onnxpass.plugins.base import DOMAIN, get_plugin

        filled = 0
        for n in self.toposort():
            if n.domain != DOMAIN or all(self.shape(o) is not None for o in n.outputs if o):
                continue
            try:
                spec = get_plugin(n.op_type)
                shapes = [self.shape(i) for i in n.inputs]
                dtypes = [self.dtype(i) for i in n.inputs]
                if any(s is None for s in shapes) or any(d is None for d in dtypes):
                    continue
                attrs = {k: n.attr(k) for k in n.attrs}
                out_shapes = spec.output_shapes(shapes, attrs)  # type: ignore[arg-type]
                out_dtypes = spec.output_dtypes(
                    [helper.tensor_dtype_to_np_dtype(d).name for d in dtypes])  # type: ignore[arg-type]
            except Exception:  # an unknown plugin or a shape rule that needs static dims
                continue
            for o, shape, dt in zip(n.outputs, out_shapes, out_dtypes):
                if o and self.shape(o) is None:
                    dims = [d if isinstance(d, (int, str)) else None for d in shape]
                    self.types[o] = helper.make_tensor_type_proto(
                        helper.np_dtype_to_tensor_dtype(np.dtype(dt)), dims)
                    filled += 1
        return filled


class RewriteRefused(Exception):
    """A rewrite was refused because the match is not self-contained (internal; becomes a
    MatchFailure in explanations)."""


def convert_opset(graph: Graph, version: int, why: str) -> Graph:
    """Raise the default-domain opset with ONNX's version converter, run on the skeleton so
    weights are not copied. Raises PassError if conversion fails."""
    from onnx import version_converter

    from onnxpass.plugins.base import DOMAIN, all_plugins

    model = graph.to_model()
    metadata = node_metadata(model)
    skel, moved = skeleton(model)
    try:
        conv = version_converter.convert_version(skel, version)
        onnx.checker.check_model(conv)
    except Exception as e:
        raise PassError(f"cannot raise opset {graph.opset()} -> {version} for {why}: "
                        f"{_first_line(e)}") from None
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
    del g.value_info[:]
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version
    # A plugin's local function is its reference body written for one opset: rewrite it.
    specs = {s.name: s for s in all_plugins()}
    for f in model.functions:
        if f.domain == DOMAIN and f.name in specs:
            f.CopyFrom(specs[f.name].function(version))
    new = Graph(model, graph.base_dir)
    new.refresh_types()
    return new


# ---- helpers ------------------------------------------------------------------------------------

def _tensor_type(elem: int, dims: Iterable[int]) -> onnx.TypeProto:
    return helper.make_tensor_type_proto(elem, list(dims))


def _constant_node_value(node: Node) -> np.ndarray | None:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            v = helper.get_attribute_value(node.attrs[key])
            if key == "value":
                return numpy_helper.to_array(v)
            dtype = np.float32 if "float" in key else np.int64
            return np.asarray(v, dtype=dtype)
    return None


def _all_names(g: onnx.GraphProto) -> set[str]:
    """Every value and node name of ``g`` and of the subgraphs of its nodes."""
    names = {i.name for i in g.input} | {o.name for o in g.output}
    names.update(t.name for t in g.initializer)
    names.update(v.name for v in g.value_info)
    for n in g.node:
        names.add(n.name)
        names.update(n.input)
        names.update(n.output)
        for a in n.attribute:
            for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                names |= _all_names(sub)
    names.discard("")
    return names


def node_metadata(model: onnx.ModelProto) -> dict[str, list[onnx.StringStringEntryProto]]:
    """Node name -> metadata_props, for the nodes that have some (names are unique)."""
    return {n.name: list(n.metadata_props) for n in model.graph.node
            if n.name and len(n.metadata_props)}


def restore_node_metadata(model: onnx.ModelProto,
                          saved: dict[str, list[onnx.StringStringEntryProto]]) -> None:
    """Put back the metadata a round trip through another tool (GraphSurgeon, the version
    converter) dropped: provenance, and the fp16 pass's boundary marks that keep it idempotent."""
    for n in model.graph.node:
        if n.name in saved and not len(n.metadata_props):
            n.metadata_props.extend(saved[n.name])


def _produced_by(value: str, nodes: Sequence[Node]) -> bool:
    return any(value in n.outputs for n in nodes)


def _has_side_effects(node: Node) -> bool:
    return False


def _subgraph_captures(node: Node) -> set[str]:
    """Outer-scope names used inside If/Loop/Scan bodies."""
    names: set[str] = set()
    for a in node.attrs.values():
        for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
            for n in sub.node:
                names.update(n.input)
                for aa in n.attribute:
                    if aa.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
                        names.update(_subgraph_captures(Node.from_proto(n)))
    return names


def _all_inputs(node: Node) -> Iterator[str]:
    yield from (i for i in node.inputs if i)
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attrs.values()):
        yield from _subgraph_captures(node)


def _prune_opsets(model: onnx.ModelProto) -> None:
    """Drop custom-domain opset imports that no node or function uses any more."""
    used = {n.domain for n in model.graph.node} | {f.domain for f in model.functions}
    for f in model.functions:
        used.update(n.domain for n in f.node)
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
