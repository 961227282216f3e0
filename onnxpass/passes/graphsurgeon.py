"""GraphSurgeon passes: a function on an ``onnx_graphsurgeon.Graph`` run as an onnxpass pass.

The 2022 TensorRT hackathon deployments wrote their rewrites as onnx-graphsurgeon scripts: walk
``graph.nodes``, match a chain by ``node.op`` and ``node.o()``, make a ``gs.Node``, reconnect,
``cleanup()``. :func:`graphsurgeon_pass` makes such a function a named pass::

    from onnxpass.passes.graphsurgeon import graphsurgeon_pass, plugin_attrs

    @graphsurgeon_pass("ln_plugin", "LayerNorm chains -> LayerNormPlugin (GraphSurgeon)")
    def ln_plugin(graph):          # takes a gs.Graph; returns it (or None: changed in place)
        ...

and then ``onnxpass run --load my_passes.py --passes default,ln_plugin --verify MODEL.onnx``
(``--load`` imports the file or module that registers it; a package can publish it under the
``onnxpass.passes`` entry point group instead). In a pipeline it gets what pattern passes get:
- the checks after the pass (onnx.checker, what ONNX Runtime would refuse), ``--verify``, the
  fixpoint (it runs again each round; a function that finds nothing left changes nothing);
- provenance: each node it adds carries ``onnxpass.pass`` (the pass), ``onnxpass.rule`` (the
  function) and ``onnxpass.replaced`` (the nodes that run of the pass removed);
- plugin nodes it makes with :func:`plugin_attrs` (op = the plugin's name, domain ``onnxpass``)
  get their local function and opset import added, so ONNX Runtime runs them;
- golden tests: a ``.golden`` file with ``# load: path/to/file.py`` and ``# passes: ln_plugin``.

The graph is exported to GraphSurgeon with its weights in memory (a GraphSurgeon function may
read any of them), and the rewrite counts as the number of nodes it added.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import onnx
from onnx import helper

from onnxpass.errors import OnnxpassError, UnknownPassError
from onnxpass.graph import Graph
from onnxpass.passes.base import Pass, PassContext, register, registry
from onnxpass.plugins.base import DOMAIN, get_plugin

GraphFn = Callable[[Any], Any]


class GraphSurgeonPass(Pass):
    """A pass whose work is ``fn(gs_graph)`` (module docstring)."""

    fn: ClassVar[GraphFn]

    def run(self, ctx: PassContext) -> int:
        import onnx_graphsurgeon as gs

        before = ctx.graph.to_model()
        model = onnx.ModelProto()
        model.CopyFrom(before)
        if ctx.graph.base_dir:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, ctx.graph.base_dir)
        graph = gs.import_onnx(model)
        out = type(self).fn(graph)
        graph = graph if out is None else out
        if not isinstance(graph, gs.Graph):
            raise OnnxpassError(f"pass {self.name}: {type(self).fn.__name__} returned "
                                f"{type(out).__name__}, not an onnx_graphsurgeon Graph")
        graph.cleanup().toposort()
        new = gs.export_onnx(graph, do_type_check=False)
        added = _finish(new, model, self.name, type(self).fn.__name__)
        if added:
            ctx.graph = Graph(new, ctx.graph.base_dir)
        return added


def _signature(n: onnx.NodeProto) -> tuple[Any, ...]:
    return (n.name, n.domain, n.op_type, tuple(n.input), tuple(n.output))


def _finish(new: onnx.ModelProto, old: onnx.ModelProto, pass_name: str, rule: str) -> int:
    """Give ``new`` what GraphSurgeon does not carry over (ir_version, opsets, metadata, local
    functions, plugin functions), mark its added nodes; returns how many were added."""
    before = {_signature(n) for n in old.graph.node}
    after = {_signature(n) for n in new.graph.node}
    removed = sorted(n.name for n in old.graph.node if _signature(n) not in after)
    added = [n for n in new.graph.node if _signature(n) not in before]
    if not added and not removed:
        return 0
    new.ir_version = old.ir_version
    new.producer_name, new.producer_version = old.producer_name, old.producer_version
    del new.opset_import[:]
    new.opset_import.extend(old.opset_import)
    del new.metadata_props[:]
    new.metadata_props.extend(old.metadata_props)
    del new.functions[:]
    new.functions.extend(old.functions)
    opset = next((o.version for o in old.opset_import if o.domain in ("", "ai.onnx")), 1)
    producer = {t: n for n in old.graph.node for t in n.output}
    gone = set(removed)
    for n in added:
        n.metadata_props.add(key="onnxpass.pass", value=pass_name)
        n.metadata_props.add(key="onnxpass.rule", value=rule)
        replaced = _replaced(n, producer, gone)
        if replaced:
            n.metadata_props.add(key="onnxpass.replaced", value=",".join(replaced))
        if n.domain == DOMAIN and not any(f.domain == DOMAIN and f.name == n.op_type
                                          for f in new.functions):
            new.functions.append(get_plugin(n.op_type).function(opset))
    domains = {o.domain for o in new.opset_import}
    for d in {n.domain for n in new.graph.node} - domains - {"ai.onnx"}:
        new.opset_import.add(domain=d, version=1)
    return max(1, len(added))  # a removal alone is a rewrite too


def _replaced(n: onnx.NodeProto, producer: dict[str, onnx.NodeProto], gone: set[str]
              ) -> list[str]:
    """The removed nodes between ``n``'s inputs and outputs in the old graph: walking back from
    its outputs through removed producers, stopping at its inputs."""
    stop, seen, out = set(n.input), set(), []
    stack = list(n.output)
    while stack:
        p = producer.get(stack.pop())
        if p is None or p.name not in gone or p.name in seen:
            continue
        seen.add(p.name)
        out.append(p.name)
        stack.extend(t for t in p.input if t not in stop)
    return sorted(out)


def graphsurgeon_pass(name: str, summary: str | None = None
                      ) -> Callable[[GraphFn], type[GraphSurgeonPass]]:
    """Decorator: register ``fn(gs.Graph) -> gs.Graph | None`` as the pass ``name``."""
    def wrap(fn: GraphFn) -> type[GraphSurgeonPass]:
        doc = (fn.__doc__ or "").strip().splitlines()
        cls = type(f"GraphSurgeon_{name}", (GraphSurgeonPass,), {
            "name": name, "summary": summary or (doc[0] if doc else f"GraphSurgeon: {name}"),
            "fn": staticmethod(fn), "__module__": fn.__module__})
        existing = registry().get(name)
        old_fn = getattr(existing, "fn", None)
        if existing is not None and old_fn is not None and old_fn.__qualname__ == fn.__qualname__:
            return existing  # type: ignore[return-value]  # the same file loaded again
        return register(cls)  # type: ignore[return-value]
    return wrap


def plugin_attrs(plugin: str, **attrs: Any) -> dict[str, Any]:
    """The attributes of an onnxpass plugin node (its own, defaults filled in, and
    ``plugin_namespace``/``plugin_version``) as GraphSurgeon takes them:
    ``gs.Node(op="LayerNormPlugin", domain="onnxpass", attrs=plugin_attrs("LayerNormPlugin",
    epsilon=1e-5), ...)``."""
    spec = get_plugin(plugin)
    out = {}
    for k, a in spec.node_attributes(spec.attr_values(attrs)).items():
        v = helper.get_attribute_value(a)
        out[k] = v.decode() if isinstance(v, bytes) else v
    return out


def load_passes(source: str) -> None:
    """Import a Python file (``my_passes.py``) or module (``my_pkg.passes``) that registers
    passes; a bad one is a one-line error."""
    try:
        if source.endswith(".py") or Path(source).is_file():
            path = Path(source)
            if not path.is_file():
                raise UnknownPassError(f"--load {source}: no such file")
            mod_name = f"onnxpass_user_{path.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise UnknownPassError(f"--load {source}: not a Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(source)
    except OnnxpassError:
        raise
    except Exception as e:
        raise UnknownPassError(f"--load {source}: {type(e).__name__}: {e}") from None
