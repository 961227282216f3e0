"""The graph layer: an editable, side-effect-free view of an ONNX model's main graph.

A :class:`Graph` wraps a ``ModelProto``. Nodes are small :class:`Node` objects; initializers stay in
the proto, untouched, so weights are never copied or decoded unless a pass asks for their value.
The graph keeps producer and consumer maps, treats Constant nodes and initializers alike as
constants, and changes only through its edits (:meth:`Graph.replace`, which refuses any rewrite
that is not self-contained, ``insert``, ``remove``, ``set_type``, ``add_initializer``,
``remove_dead``). Reading, ``to_model`` and ``refresh_types`` never remove a node. Loading and
saving are in :mod:`onnxpass.modelio`, opset conversion in :mod:`onnxpass.opset`.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from onnxpass.errors import PassError

# Re-exported where callers have found them: loading and saving live in onnxpass.modelio, opset
# conversion and the metadata it restores in onnxpass.opset.
from onnxpass.modelio import check_model, load_model, save_model, skeleton  # noqa: F401
from onnxpass.opset import convert_opset, node_metadata, restore_node_metadata  # noqa: F401

Dim = int | str | None
Shape = tuple[Dim, ...]

# Ops whose attribute became an input in a later opset: attribute name -> input index.
# The matcher reads both forms through Node.attr(), so patterns never care which one a model uses.
ATTR_INPUTS: dict[str, dict[str, int]] = {
    **{
        op: {"axes": 1}
        for op in (
            "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
            "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Squeeze",
            "Unsqueeze",
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
                 name: str = "", metadata: dict[str, str] | None = None,
                 doc_string: str = "") -> None:
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


_INDEXED_AT = 8  # a value's readers past which they are a _Readers, not a list


class _Readers(dict[Node | tuple[Node, int], Node]):
    """A value's readers, one entry per input slot, in the order they were added, as a dict: the
    node is the key of its first entry, (node, k) of its k-th more (Mul(x, x)), so that removing
    a node costs its own entries, not all readers' (a list's filter does). Only values with
    many readers get one: it takes more memory than a list."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        super().__init__()
        for n in nodes:
            self.add(n)

    def add(self, node: Node) -> None:
        if node not in self:
            self[node] = node
            return
        k = 1
        while (node, k) in self:  # the node reads the value more than once
            k += 1
        self[node, k] = node

    def discard(self, node: Node) -> None:
        """Remove all of ``node``'s entries."""
        if self.pop(node, None) is not None:
            k = 1
            while self.pop((node, k), None) is not None:
                k += 1


class _NotConstant:
    def __repr__(self) -> str:
        return "<not constant>"


_NOT_CONSTANT = _NotConstant()
NOT_CONSTANT: Any = _NOT_CONSTANT


class _Keep:
    def __repr__(self) -> str:
        return "<keep>"


KEEP: Any = _Keep()
"""``set_type``'s default shape: the one the value has."""


OutputTyper = Callable[["Graph", Node], "Sequence[onnx.TypeProto | None] | None"]
"""``(graph, node) -> a type for each output`` (None where unknown): how a custom domain types
the outputs shape inference leaves unknown."""

_OUTPUT_TYPERS: dict[str, OutputTyper] = {}


def register_output_typer(domain: str, typer: OutputTyper) -> None:
    """Have :meth:`Graph.refresh_types` ask ``typer`` for the outputs of ``domain``'s nodes that
    inference left untyped (the plugin layer registers one; this module never imports it)."""
    _OUTPUT_TYPERS[domain] = typer


class Graph:
    """An editable view of a model's main graph.

    Reading never changes the graph. Passes change it only through the edits: :meth:`replace`,
    :meth:`insert`, :meth:`remove`, :meth:`set_type`, :meth:`add_initializer` and
    :meth:`remove_dead`; the maps below are read-only views.
    """

    def __init__(self, model: onnx.ModelProto, base_dir: str | os.PathLike[str] = "") -> None:
        self.model = model
        self.base_dir = str(base_dir)
        g = model.graph
        # Insertion-ordered by id: removal is O(1) and iteration keeps the model's order.
        self._nodes: dict[int, Node] = {}
        self._producer: dict[str, Node] = {}
        # value -> its readers, one entry per input slot, in the order they were added: a list,
        # or past _INDEXED_AT readers a dict (see _Readers) so that removing one of them does not
        # cost all of them (a constant CSE shares between all layers has thousands).
        self._consumers: dict[str, list[Node] | _Readers] = {}
        self.inputs: tuple[str, ...] = tuple(i.name for i in g.input)
        self.outputs: tuple[str, ...] = tuple(o.name for o in g.output)
        self._input_set = set(self.inputs)
        self._output_set = set(self.outputs)
        self._initializers: dict[str, TensorProto] = {t.name: t for t in g.initializer}
        self._new_initializers: dict[str, TensorProto] = {}
        self._types: dict[str, onnx.TypeProto] = {}
        self._const_cache: dict[str, np.ndarray | None] = {}
        # Every name in the model, values and nodes alike (subgraphs included): a fresh name
        # avoids them all, so names stay unique across passes, rounds and rebuilt Graphs.
        self._used_names: set[str] = _all_names(g)
        self._name_counts: dict[str, int] = {}
        self._schema_cache: dict[tuple[str, str, str], Any] = {}
        # Values still of unknown rank after the last symbolic inference (see refresh_types).
        self._beyond_symbolic: frozenset[str] = frozenset()
        self._dims_proven = False  # prove_dims ran since the last refresh_types
        self.producer: Mapping[str, Node] = MappingProxyType(self._producer)
        self.types: Mapping[str, onnx.TypeProto] = MappingProxyType(self._types)
        for vi in itertools.chain(g.input, g.output, g.value_info):
            if vi.type.HasField("tensor_type"):
                self._types[vi.name] = vi.type
        for t in g.initializer:
            self._types.setdefault(t.name, _tensor_type(t.data_type, t.dims))
        seen_nodes: set[str] = set()
        for p in g.node:
            node = Node.from_proto(p)
            if node.name and node.name in seen_nodes:  # ONNX Runtime refuses two such nodes
                node.name = self.fresh_name(node.name)
            seen_nodes.add(node.name)
            self._add(node)
        self._sorted = True  # ONNX requires a model's nodes in topological order

    # ---- structure -------------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        """The nodes of the graph (removed ones never), in insertion or last sorted order."""
        return list(self._nodes.values())

    @property
    def initializers(self) -> Mapping[str, TensorProto]:
        """Initializers, those added by :meth:`add_initializer` included (read-only)."""
        return MappingProxyType({**self._initializers, **self._new_initializers})

    def _add(self, node: Node) -> None:
        node.graph = self
        self._sorted = False
        self._nodes[id(node)] = node
        for o in node.outputs:
            if o:
                self._producer[o] = node
                self._used_names.add(o)
        for i in node.inputs:
            if i:
                self._add_user(i, node)

    def _add_user(self, value: str, node: Node) -> None:
        users = self._consumers.get(value)
        if users is None:
            self._consumers[value] = [node]
        elif isinstance(users, list):
            users.append(node)
            if len(users) > _INDEXED_AT:
                self._consumers[value] = _Readers(users)
        else:
            users.add(node)

    def _remove(self, node: Node) -> None:
        self._nodes.pop(id(node), None)
        for o in node.outputs:
            if self._producer.get(o) is node:
                del self._producer[o]
        for i in node.inputs:
            users = self._consumers.get(i)
            if isinstance(users, list):
                users[:] = [u for u in users if u is not node]
            elif users:
                users.discard(node)
        node.graph = None

    def users(self, value: str) -> list[Node]:
        return list(self._readers(value))

    def _readers(self, value: str) -> Iterable[Node]:
        """:meth:`users` without the copy (not to be held across an edit)."""
        users = self._consumers.get(value)
        if not users:
            return ()
        return users if isinstance(users, list) else users.values()

    def is_output(self, value: str) -> bool:
        return value in self._output_set

    def is_input(self, value: str) -> bool:
        return value in self._input_set

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
        """The nodes of the graph (the same as :attr:`nodes`)."""
        return self.nodes

    def op_types(self) -> set[str]:
        return {n.op_type for n in self._nodes.values()}

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
    def _initializer(self, value: str) -> TensorProto | None:
        return self._new_initializers.get(value) or self._initializers.get(value)

    def is_const(self, value: str) -> bool:
        if value in self._initializers or value in self._new_initializers:
            return value not in self._input_set
        p = self._producer.get(value)
        return p is not None and p.op_type == "Constant" and p.domain == ""

    def const_value(self, value: str) -> np.ndarray | None:
        """The value of a constant (initializer or Constant node), or None. Decoded on first use."""
        if value in self._const_cache:
            return self._const_cache[value]
        result: np.ndarray | None = None
        t = self._initializer(value)
        if t is not None and value not in self._input_set:
            result = numpy_helper.to_array(t, self.base_dir)
        else:
            p = self._producer.get(value)
            if p is not None and p.op_type == "Constant" and p.domain == "":
                result = _constant_node_value(p)
        self._const_cache[value] = result
        return result

    def const_size(self, value: str) -> int | None:
        """Number of elements of a constant, without decoding it."""
        t = self._initializer(value)
        if t is not None:
            return int(np.prod(t.dims)) if len(t.dims) else 1
        v = self.const_value(value)
        return None if v is None else int(v.size)

    def shape(self, value: str) -> Shape | None:
        t = self._types.get(value)
        if t is None or not t.tensor_type.HasField("shape"):
            c = self.const_value(value) if self.is_const(value) else None
            return None if c is None else tuple(int(d) for d in c.shape)
        return tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in t.tensor_type.shape.dim
        )

    def dtype(self, value: str) -> int | None:
        t = self._types.get(value)
        if t is not None and t.tensor_type.elem_type:
            return t.tensor_type.elem_type
        init = self._initializer(value)
        if init is not None:
            return init.data_type
        c = self.const_value(value) if self.is_const(value) else None
        return None if c is None else helper.np_dtype_to_tensor_dtype(c.dtype)

    def rank(self, value: str) -> int | None:
        s = self.shape(value)
        return None if s is None else len(s)

    # ---- editing ---------------------------------------------------------------------------
    def add_initializer(self, array: np.ndarray, hint: str = "const") -> str:
        """Add a constant under a fresh name derived from ``hint``; returns the name."""
        name = self.fresh_name(hint)
        self._new_initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        self._types[name] = _tensor_type(helper.np_dtype_to_tensor_dtype(np.asarray(array).dtype),
                                         np.shape(array))
        return name

    def fold(self, nodes: Iterable[Node], values: Mapping[str, np.ndarray]) -> None:
        """Replace the constant computation ``nodes`` by its results: each of ``values`` (an
        output of ``nodes``) becomes an initializer of the same name, so its readers stay as they
        are. No other output of ``nodes`` may be read outside them or be a graph output."""
        for n in self._removable(nodes, "fold", set(values)):
            self._remove(n)
        for name, array in values.items():
            t = numpy_helper.from_array(np.asarray(array), name)
            self._new_initializers[name] = t
            self._types[name] = _tensor_type(t.data_type, t.dims)
            self._const_cache.pop(name, None)

    def set_type(self, value: str, elem_type: int, shape: Shape | None | object = KEEP) -> None:
        """Record ``value``'s element type (and shape; by default the one it has). A graph input
        or output changes in the model's signature too."""
        if shape is KEEP:
            shape = self.shape(value)
        dims = None if shape is None else list(shape)  # type: ignore[call-overload]
        t = helper.make_tensor_type_proto(elem_type, dims)
        self._types[value] = t
        if value in self._input_set or value in self._output_set:
            for vi in itertools.chain(self.model.graph.input, self.model.graph.output):
                if vi.name == value:
                    vi.type.CopyFrom(t)

    def insert(self, nodes: Sequence[Node]) -> None:
        """Add ``nodes``, whose outputs must be values nothing produces yet (a Cast, say);
        consumers are not rewired (see :meth:`replace`)."""
        for node in nodes:
            taken = [o for o in node.outputs if o and (o in self._producer or o in self._input_set
                                                       or self._initializer(o) is not None)]
            if taken:
                raise PassError(f"insert {node!r}: {taken[0]!r} already has a producer")
            if node.graph is not None:
                raise PassError(f"insert {node!r}: the node is already in a graph")
        for node in nodes:
            self._add(node)

    def remove(self, nodes: Iterable[Node]) -> None:
        """Remove ``nodes``; none of their outputs may be a graph output or read by a node that
        stays (remove or rewire its users first)."""
        for n in self._removable(nodes, "remove"):
            self._remove(n)

    def _removable(self, nodes: Iterable[Node], verb: str, kept: set[str] | None = None
                   ) -> list[Node]:
        """``nodes`` (each once), checked for :meth:`remove` and :meth:`fold`: nodes of this
        graph, no output a graph output, and none read by a node that stays unless it is in
        ``kept`` (values that outlive the nodes). Raises PassError naming ``verb``."""
        nodes = list({id(n): n for n in nodes}.values())
        inside = {id(n) for n in nodes}
        for n in nodes:
            if n.graph is not self:
                raise PassError(f"{verb} {n!r}: not a node of this graph")
            for o in n.outputs:
                if o and self.is_output(o):
                    raise PassError(f"{verb} {n!r}: {o!r} is a graph output")
                used = [u for u in self.users(o) if id(u) not in inside] \
                    if o and o not in (kept or ()) else []
                if used:
                    raise PassError(f"{verb} {n!r}: {o!r} is still read by {used[0]!r}")
        return nodes

    def replace(self, matched: Iterable[Node], old_outputs: Sequence[str],
                new_nodes: Sequence[Node], new_outputs: Sequence[str]) -> None:
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
                             name=self.fresh_node_name(self._producer.get(old), "Identity"))
                new_nodes = [*new_nodes, ident]
                continue
            for user in self.users(old):
                self._sorted = False
                user.inputs = [new if i == old else i for i in user.inputs]
                self._add_user(new, user)
            self._consumers.pop(old, None)
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
                for u in self._readers(o):
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
        stack = [u for o in outputs for u in self._readers(o) if id(u) not in inside]
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if any(o in ins for o in n.outputs):
                return True
            stack.extend(u for o in n.outputs for u in self._readers(o)
                         if id(u) not in inside)
        return False

    def remove_dead(self) -> int:
        """Remove the nodes and initializers no graph output depends on; returns how many nodes.
        The only edit that removes what a pass did not name (the ``dce`` pass, the runner)."""
        live: set[str] = set(self.outputs)
        removed = 0
        for n in reversed(self.toposort()):
            if any(o in live for o in n.outputs) or _has_side_effects(n):
                live.update(i for i in n.inputs if i)
                live.update(subgraph_captures(n))
            else:
                self._remove(n)
                removed += 1
        live |= self._input_set
        for store in (self._initializers, self._new_initializers):
            for name in [k for k in store if k not in live]:
                del store[name]
        return removed

    def toposort(self) -> list[Node]:
        """Stable topological order of the nodes (original order where it is valid)."""
        nodes = self.nodes
        if self._sorted:  # nothing added or rewired since the last sort: removals keep order
            return nodes
        index = {id(n): k for k, n in enumerate(nodes)}
        indeg = {id(n): 0 for n in nodes}
        for n in nodes:
            deps = {id(self._producer[i]) for i in _all_inputs(n) if i in self._producer}
            deps.discard(id(n))
            indeg[id(n)] = len(deps)
        ready = [index[id(n)] for n in nodes if indeg[id(n)] == 0]
        heapq.heapify(ready)
        order: list[Node] = []
        while ready:
            n = nodes[heapq.heappop(ready)]
            order.append(n)
            done: set[int] = set()
            for o in n.outputs:
                for u in self._readers(o):
                    if id(u) in done or id(u) not in indeg or u is n:
                        continue
                    done.add(id(u))
                    indeg[id(u)] -= 1
                    if indeg[id(u)] == 0:
                        heapq.heappush(ready, index[id(u)])
        if len(order) != len(nodes):
            raise PassError("graph has a cycle")
        self._nodes = {id(n): n for n in order}
        self._sorted = True
        return order

    # ---- back to a model -------------------------------------------------------------------
    def to_model(self) -> onnx.ModelProto:
        """Write the graph into ``self.model`` (in place) and return it. Removes nothing: dead
        nodes are written too (:meth:`remove_dead` is the step that drops them)."""
        nodes = self.toposort()
        g = self.model.graph
        for k in reversed([k for k, t in enumerate(g.initializer)
                           if t.name not in self._initializers]):
            del g.initializer[k]
        g.initializer.extend(self._new_initializers.values())
        self._initializers = {t.name: t for t in g.initializer}
        self._new_initializers = {}
        del g.node[:]
        g.node.extend(n.to_proto() for n in nodes)
        produced = {o for n in nodes for o in n.outputs} - self._output_set
        del g.value_info[:]
        g.value_info.extend(helper.make_value_info(v, self._types[v]) for v in sorted(produced)
                            if v in self._types and self._types[v].tensor_type.elem_type)
        _prune_opsets(self.model)
        return self.model

    def refresh_types(self, skel: onnx.ModelProto | None = None, retry: bool = True) -> None:
        """Run shape inference on the weight-free skeleton (``skel``, if the caller just made one
        from ``to_model()``) and record every value's type. Changes no node.

        ONNX's inference (with data propagation) goes first. Where it leaves a value's rank
        unknown (a Reshape to a shape computed by Shape -> Slice -> Cast -> Concat, as
        Paddle2ONNX writes every one), ONNX Runtime's symbolic shape inference runs on the
        skeleton too, and fills in only what ONNX left unknown (:func:`symbolic_types`)."""
        if skel is None:
            skel, _ = skeleton(self.to_model())
        for vi in skel.graph.value_info:  # ONNX's made-up symbols from the last run: inferred
            for d in vi.type.tensor_type.shape.dim:  # anew, or they would stay (merge keeps them)
                if d.dim_param.startswith("unk__"):
                    d.ClearField("dim_param")
        try:
            inferred = onnx.shape_inference.infer_shapes(skel, data_prop=True)
        except Exception:  # inference is best effort: a custom op without schema stops nothing
            return
        ig = inferred.graph
        for vi in itertools.chain(ig.value_info, ig.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                self._types[vi.name] = vi.type
        self._const_cache.clear()
        self._dims_proven = False
        # Run only for values the last run did not already leave unknown: it would again.
        if self._unranked() - self._beyond_symbolic:
            self._fill_types(symbolic_types(skel, self._types))
            self._beyond_symbolic = self._unranked()
        if self._hook_types() and retry:
            # What follows such a node is inferred again, now that its outputs are typed.
            self.refresh_types(retry=False)

    def prove_dims(self) -> bool:
        """Fill the dims ONNX's inference left unknown, or named by a symbol it made up
        (``unk__3``), with what ONNX Runtime's symbolic shape inference proves
        (:func:`symbolic_types`: ``2*batch`` for a batch*heads dim). At most once between two
        :meth:`refresh_types`. :meth:`refresh_types` runs it only for values of unknown rank;
        a proof that needs symbolic dims asks for it here (it costs seconds on a model of a
        thousand nodes). Returns whether it ran."""
        if self._dims_proven:
            return False
        self._dims_proven = True
        skel, _ = skeleton(self.to_model())
        self._fill_types(symbolic_types(skel, self._types))
        return True

    def _unranked(self) -> frozenset[str]:
        """The values nodes compute, and something reads, whose rank is unknown."""
        found = []
        for n in self._nodes.values():
            for o in n.outputs:
                if o and (o in self._consumers or o in self._output_set):
                    t = self._types.get(o)
                    if t is None or not t.tensor_type.HasField("shape"):
                        found.append(o)
        return frozenset(found)

    def _fill_types(self, found: Mapping[str, tuple[int, list[Dim]]]) -> None:
        """Merge ``found`` (value -> element type, dims) into the recorded types where they
        leave a value's rank, element type or a dim unknown; a known dim is never changed. A
        value whose rank or known dims disagree keeps what it had."""
        inputs = {d.dim_param for vi in self.model.graph.input
                  for d in vi.type.tensor_type.shape.dim if d.dim_param}
        for n in self._nodes.values():
            for o in n.outputs:
                if not o or o not in found:
                    continue
                elem, dims = found[o]
                t = self._types.get(o)
                have = t.tensor_type if t is not None else None
                elem = have.elem_type if have is not None and have.elem_type else elem
                if not elem:
                    continue
                if have is None or not have.HasField("shape"):
                    self._types[o] = helper.make_tensor_type_proto(elem, dims)
                    continue
                old = have.shape.dim
                if len(old) != len(dims):
                    continue
                was: list[Dim] = [d.dim_value if d.HasField("dim_value") else
                                  (d.dim_param or None) for d in old]
                merged: list[Dim] = []
                for d, new in zip(was, dims):
                    # A symbol ONNX made up for an unknown dim says less than ONNX Runtime's dim.
                    known = None if isinstance(d, str) and d.startswith("unk__") \
                        and d not in inputs else d
                    if known is not None and new is not None and new != known:
                        break  # they disagree: keep ONNX's
                    merged.append(known if known is not None else new if new is not None else d)
                else:
                    if merged != was:
                        self._types[o] = helper.make_tensor_type_proto(elem, merged)

    def _hook_types(self) -> int:
        """Type the outputs inference left unknown (a plugin's axes computed from an attribute)
        through the registered output typers. Returns how many."""
        if not _OUTPUT_TYPERS:
            return 0
        filled = 0
        for n in self.toposort():
            typer = _OUTPUT_TYPERS.get(n.domain)
            if typer is None or all(self.shape(o) is not None for o in n.outputs if o):
                continue
            try:
                types = typer(self, n)
            except Exception:  # a typer that needs static dims or knows no such op
                continue
            for o, t in zip(n.outputs, types or ()):
                if o and t is not None and self.shape(o) is None:
                    self._types[o] = t
                    filled += 1
        return filled


class RewriteRefused(Exception):
    """A rewrite was refused because the match is not self-contained (internal; becomes a
    MatchFailure in explanations)."""


# ---- symbolic shape inference -------------------------------------------------------------------

# ONNX Runtime's symbolic shape inference picks its handler by op_type alone. These standard ops
# share their name with a com.microsoft op its handler is written for: contrib Attention takes
# (input, packed weights, bias), ONNX's Attention (opset 23) Q, K, V, so the handler would give a
# standard Attention a wrong shape.
_CONTRIB_NAMESAKES = frozenset({"Attention"})
_SYMBOL = "__onnxpass_dim{}__"  # an input's named dim, renamed for the run (see symbolic_types)
_SYMBOL_RE = re.compile(r"__onnxpass_dim(\d+)__")
_EXPRESSION_FUNCTIONS = frozenset({"floor", "ceiling", "Max", "Min", "Mod", "Abs"})
_SMALL_CONSTANT = 1024  # elements: a Constant above this is a weight, not a shape computation


def symbolic_types(skel: onnx.ModelProto, types: Mapping[str, onnx.TypeProto]
                   ) -> dict[str, tuple[int, list[Dim]]]:
    """Value -> (element type, dims) as ONNX Runtime's symbolic shape inference
    (``onnxruntime.tools.symbolic_shape_infer``) finds them on the skeleton ``skel``; ``types``
    are ONNX's, to resolve negative axes. It evaluates shape computations on symbolic dims
    (Shape -> Slice/Gather -> Cast -> Concat -> Reshape) where ONNX's data propagation stops.

    Only what it proves is returned: integer dims, and the graph inputs' named dims and
    expressions over them (``N``, ``2*S``), by their names in the model. Unknown (None)
    instead: a symbol it made up for a dim it could not compute (its names, and ONNX's
    ``unk__<n>``, are local to one run and may collide), and any dim touched by a merge it
    assumed (with auto_merge two dims that broadcast against each other are taken to be equal,
    which is wrong when one of them is 1). Its contrib-op handlers see only com.microsoft nodes
    and the standard ops they are right for; other domains keep ONNX's inference. A run that
    fails part way gives what it found before; {} when it is not installed (it needs sympy).
    It writes no file: its public ``infer_shapes`` saves the model into the cwd when it stops
    early, so the steps are called here instead."""
    try:
        SymbolicShapeInference = _symbolic_shape_inference()
    except Exception:  # not installed, or without sympy
        return {}
    model, names = _symbolic_input(skel, types)
    try:  # its steps are private: a version that changed them gives nothing, not an error
        ssi = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess
        if any(n.op_type in ssi.dispatcher_ and not _handled_right(n)
               for n in _subgraph_nodes(model)):
            return {}  # the runs it starts for If/Loop/Scan bodies cannot be guarded
        _guard_dispatch(ssi.dispatcher_)
    except Exception:
        return {}
    try:
        ssi._preprocess(model)
        while ssi.run_:  # it runs again after merging dims; it stops where it cannot go on
            ssi._infer_impl()
    except Exception:  # an op or form it does not handle: keep what came before
        pass
    out = getattr(ssi, "out_mp_", None)
    if out is None:
        return {}
    merged = getattr(ssi, "suggested_merge_", {})
    tainted = {str(s) for pair in merged.items() for s in pair}
    found: dict[str, tuple[int, list[Dim]]] = {}
    for vi in out.graph.value_info:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            found[vi.name] = (tt.elem_type, [_proven(d, names, tainted) for d in tt.shape.dim])
    return found


@functools.cache
def _symbolic_shape_inference() -> Any:
    """ONNX Runtime's SymbolicShapeInference class, its module loaded by path: importing
    ``onnxruntime.tools`` runs that package's __init__, which imports torch where it is installed
    (seconds); the module itself needs only onnx, numpy and sympy."""
    import importlib.util
    import sys

    import onnxruntime
    import sympy  # noqa: F401  # the tool's algebra; a declared dependency for it

    name = "onnxpass._ort_symbolic_shape_infer"
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(onnxruntime.__file__), "tools",
                            "symbolic_shape_infer.py")
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name].SymbolicShapeInference


def _proven(d: onnx.TensorShapeProto.Dimension, names: list[str], tainted: set[str]) -> Dim:
    if d.HasField("dim_value"):
        return d.dim_value if d.dim_value >= 0 and str(d.dim_value) not in tainted else None
    p = d.dim_param
    symbols = set(re.findall(r"[A-Za-z_]\w*", p))
    if not _SYMBOL_RE.search(p) or symbols & tainted:
        return None
    if not {s for s in symbols if not _SYMBOL_RE.fullmatch(s)} <= _EXPRESSION_FUNCTIONS:
        return None  # it involves a symbol the tool made up
    return _SYMBOL_RE.sub(lambda g: names[int(g.group(1))], p)


def _symbolic_input(skel: onnx.ModelProto, types: Mapping[str, onnx.TypeProto]
                    ) -> tuple[onnx.ModelProto, list[str]]:
    """What the symbolic inference runs on: ``skel`` with its inputs' named dims renamed (so
    that no symbol it makes up equals one, e.g. tf2onnx's ``unk__0``), negative Concat axes made
    positive (it asserts axis 0 when concatenating shape values, and Paddle2ONNX writes -1), and
    the Constant nodes holding weights as graph inputs (their values are not needed). Returns
    the model and the original dim names, by number."""
    model = onnx.ModelProto(ir_version=skel.ir_version)
    model.opset_import.extend(skel.opset_import)
    model.functions.extend(skel.functions)
    g, sg = model.graph, skel.graph
    g.name = sg.name
    names: list[str] = []
    number: dict[str, int] = {}
    for vi in sg.input:
        new = g.input.add()
        new.CopyFrom(vi)
        for d in new.type.tensor_type.shape.dim:
            if d.dim_param:
                k = number.setdefault(d.dim_param, len(names))
                if k == len(names):
                    names.append(d.dim_param)
                d.dim_param = _SYMBOL.format(k)
    for vi in sg.output:  # names and element types only: their dims are what is inferred
        g.output.add(name=vi.name).type.tensor_type.elem_type = vi.type.tensor_type.elem_type
    g.initializer.extend(sg.initializer)
    ranks = {t.name: len(t.dims) for t in sg.initializer}
    for n in sg.node:
        if n.domain in ("", "ai.onnx") and n.op_type == "Constant" and len(n.attribute) == 1:
            a = n.attribute[0]
            ranks[n.output[0]] = len(a.t.dims) if a.name == "value" else int(a.name.endswith("s"))
            if a.name == "value" and int(np.prod(a.t.dims)) > _SMALL_CONSTANT:
                g.input.append(helper.make_tensor_value_info(n.output[0], a.t.data_type,
                                                             list(a.t.dims)))
                continue
        node = g.node.add()
        node.CopyFrom(n)
        if n.domain in ("", "ai.onnx") and n.op_type == "Concat":
            rank = next((r for r in (_rank(types.get(i)) if i not in ranks else ranks[i]
                                     for i in n.input) if r is not None), None)
            for a in node.attribute:
                if a.name == "axis" and a.i < 0 and rank is not None:
                    a.i += rank
    return model, names


def _rank(t: onnx.TypeProto | None) -> int | None:
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    return len(t.tensor_type.shape.dim)


def _guard_dispatch(table: dict[str, Callable[[onnx.NodeProto], None]]) -> None:
    """Let the handlers of ``table`` (op_type -> handler) see only the nodes they are for."""
    for op, handler in list(table.items()):
        table[op] = functools.partial(_dispatch, handler)


def _dispatch(handler: Callable[[onnx.NodeProto], None], node: onnx.NodeProto) -> None:
    if _handled_right(node):
        handler(node)


def _handled_right(node: onnx.NodeProto) -> bool:
    """The tool's handler for ``node.op_type`` is written for this node: a com.microsoft op, or
    a standard op that is no contrib op's namesake. Never a Reshape with allowzero (the
    handler copies the input's dim for a 0 in the shape, as without it)."""
    if any(a.name == "allowzero" and a.i for a in node.attribute):
        return False
    if node.domain == "com.microsoft":
        return True
    return node.domain in ("", "ai.onnx") and node.op_type not in _CONTRIB_NAMESAKES \
        and onnx.defs.has(node.op_type)


def _subgraph_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """The nodes of the main graph's If/Loop/Scan bodies, nested ones included."""
    def bodies(n: onnx.NodeProto) -> list[onnx.GraphProto]:
        return [g for a in n.attribute
                for g in ([a.g] if a.type == AttributeProto.GRAPH else a.graphs)]

    stack = [g for n in model.graph.node for g in bodies(n)]
    while stack:
        for n in stack.pop().node:
            yield n
            stack.extend(bodies(n))


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


def _produced_by(value: str, nodes: Sequence[Node]) -> bool:
    return any(value in n.outputs for n in nodes)


# Ops whose outputs are a random sample: never folded, merged or proven equal to a constant.
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform",
                        "RandomUniformLike", "Multinomial", "Bernoulli"})


def shape_range(node: Node, rank: int) -> range:
    """The dims ``Shape(x, start, end)`` returns of a rank-``rank`` x, its ``start`` and ``end``
    clamped as ONNX clamps them (opset 15)."""
    start, end = node.attr("start") or 0, node.attr("end")
    start, end = (min(max(v + rank if v < 0 else v, 0), rank)
                  for v in (start, rank if end is None else end))
    return range(start, end)


def _has_side_effects(node: Node) -> bool:
    return False


def subgraph_captures(node: Node) -> set[str]:
    """Outer-scope names used inside If/Loop/Scan bodies."""
    names: set[str] = set()
    for a in node.attrs.values():
        for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
            for n in sub.node:
                names.update(n.input)
                for aa in n.attribute:
                    if aa.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
                        names.update(subgraph_captures(Node.from_proto(n)))
    return names


def _all_inputs(node: Node) -> Iterator[str]:
    yield from (i for i in node.inputs if i)
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attrs.values()):
        yield from subgraph_captures(node)


def _prune_opsets(model: onnx.ModelProto) -> None:
    """Drop custom-domain opset imports that no node or function uses any more."""
    used = {n.domain for n in model.graph.node} | {f.domain for f in model.functions}
    for f in model.functions:
        used.update(n.domain for n in f.node)
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)


# Q/DQ a graph already carries (QAT exports, other quantizers) say where TensorRT runs int8/fp8:
# passes keep every one where it is, with its values (never folded, merged or moved off its op).
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def dequantized(g: Graph, value: str) -> bool:
    """``value`` is a DequantizeLinear's output (a rewrite must not separate it from its op)."""
    p = g.producer.get(value)
    return p is not None and p.op_type == "DequantizeLinear"
