"""The load check of record: what ONNX Runtime checks when it loads a model, which
``onnx.checker`` does not (two nodes with one name, most of all).

Run on the weight-free skeleton before any model is written. Each problem is one line; the
first one is what :func:`check_loadable` reports.

Checked, for the main graph, every subgraph (If/Loop/Scan bodies) and every local function:
- node names: non-empty names are unique within a graph and within a function body (ONNX
  Runtime inlines a function's nodes under its own prefix, so two equal names there clash too);
- SSA: a value is defined once (graph input, initializer, or one node output), across scopes;
- topological order: every input is defined before its node (or in an enclosing scope); ONNX
  Runtime sorts a graph itself, but the spec and TensorRT's parser (nodes in file order) need it;
- graph outputs are defined;
- domains: every node's domain is imported by the model (by the function, for function bodies);
  standard ops exist at the imported opset;
- local functions: a node calling one passes no more inputs/outputs than it declares; two
  functions never share (domain, name);

Not a refusal: an ``ir_version`` too old for the opset or for local functions (ONNX Runtime 1.32
loads an IR 7 model at opset 23 with functions). The pass manager still raises it
(:func:`required_ir_version`) after every pass that changes the graph, so a written file never
claims an IR that cannot express it.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import AttributeProto, helper

from onnxpass.errors import OnnxpassError

_STANDARD = ("", "ai.onnx")
_FUNCTIONS_IR = 8  # local functions arrived with IR version 8 (ONNX 1.10)


class InvalidModelError(OnnxpassError):
    """A model that ONNX Runtime would refuse to load."""


def check_loadable(model: onnx.ModelProto, source: str = "model") -> None:
    """Raise :class:`InvalidModelError` (one line) if ONNX Runtime would refuse ``model``."""
    problems = load_problems(model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidModelError(f"{source}: ONNX Runtime would refuse it: {problems[0]}{more}")


def load_problems(model: onnx.ModelProto) -> list[str]:
    """Every reason ONNX Runtime would refuse ``model`` to load, as lines; [] when none."""
    problems: list[str] = []
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    for f in model.functions:
        key = (f.domain, f.name)
        if key in functions:
            problems.append(f"two local functions named {f.domain}.{f.name}")
        functions[key] = f
    problems += _graph_problems(model.graph, opsets, functions, set(), "graph")
    for f in model.functions:
        fops = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in f.opset_import}
        where = f"function {f.domain}.{f.name}"
        problems += _body_problems(f.node, fops, functions, set(f.input), f.output, where)
    return problems


def required_ir_version(model: onnx.ModelProto) -> int:
    """The lowest IR version that can state ``model``'s default-domain opset and functions."""
    opset = max((o.version for o in model.opset_import if o.domain in _STANDARD), default=1)
    need = min((ir for _, ir, ops, *_ in helper.VERSION_TABLE if ops >= opset),
               default=onnx.IR_VERSION)
    return max(need, _FUNCTIONS_IR) if len(model.functions) else need


def _graph_problems(g: onnx.GraphProto, opsets: dict[str, int],
                    functions: dict[tuple[str, str], onnx.FunctionProto], enclosing: set[str],
                    where: str) -> list[str]:
    problems: list[str] = []
    inits = [t.name for t in g.initializer]
    inputs = [i.name for i in g.input]
    seen: set[str] = set()
    input_set = set(inputs)
    for name in inputs + [n for n in inits if n not in input_set]:
        if name in seen or name in enclosing:
            problems.append(f"{where}: value {name!r} is defined twice")
        seen.add(name)
    problems += _body_problems(g.node, opsets, functions, seen | enclosing,
                               [o.name for o in g.output], where)
    return problems


def _body_problems(nodes: Iterable[onnx.NodeProto], opsets: dict[str, int],
                   functions: dict[tuple[str, str], onnx.FunctionProto], visible: set[str],
                   outputs: Iterable[str], where: str) -> list[str]:
    problems: list[str] = []
    visible = set(visible)
    names: set[str] = set()
    for n in nodes:
        label = n.name or (n.output[0] if n.output else n.op_type)
        if n.name:
            if n.name in names:
                problems.append(f"{where}: two nodes are named {n.name!r}")
            names.add(n.name)
        for i in n.input:
            if i and i not in visible:
                problems.append(f"{where}: node {label!r} ({n.op_type}) reads {i!r} before "
                                f"it is defined (not topologically sorted, or never defined)")
        domain = "" if n.domain == "ai.onnx" else n.domain
        problems += _op_problems(n, domain, opsets, functions, where, label)
        for a in n.attribute:
            for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                problems += _graph_problems(sub, opsets, functions, visible,
                                            f"{where} > {label}.{a.name}")
        for o in n.output:
            if not o:
                continue
            if o in visible:
                problems.append(f"{where}: value {o!r} is defined twice (again by {label!r})")
            visible.add(o)
    for o in outputs:
        if o not in visible:
            problems.append(f"{where}: output {o!r} is never computed")
    return problems


def _op_problems(n: onnx.NodeProto, domain: str, opsets: dict[str, int],
                 functions: dict[tuple[str, str], onnx.FunctionProto], where: str,
                 label: str) -> list[str]:
    if domain not in opsets:
        return [f"{where}: node {label!r} uses domain {domain or 'ai.onnx'!r}, which the "
                f"model does not import"]
    f = functions.get((n.domain, n.op_type))
    if f is not None:
        # Attributes the function does not declare are ignored by ONNX Runtime (and plugin
        # nodes carry plugin_namespace/plugin_version for TensorRT), so only arity counts.
        if len(n.input) > len(f.input) or len(n.output) > len(f.output):
            return [f"{where}: node {label!r} passes {len(n.input)} inputs / "
                    f"{len(n.output)} outputs to function {n.op_type} of "
                    f"{len(f.input)}/{len(f.output)}"]
        return []
    if domain == "":
        try:
            onnx.defs.get_schema(n.op_type, opsets[""], "")
        except onnx.defs.SchemaError:
            return [f"{where}: node {label!r}: {n.op_type} is not an ONNX op at opset "
                    f"{opsets['']}"]
    return []


__all__ = ["InvalidModelError", "check_loadable", "load_problems"]
