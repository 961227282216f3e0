"""Rules (pattern + check + rewrite) and the worklist driver that applies them to a fixpoint."""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import helper

from onnxpass.errors import PassError
from onnxpass.graph import Graph, Node, RewriteRefused, Shape
from onnxpass.patterns.ir import (
    Const, Out, PValue, Var, pattern_op, required_op_types, root_op_types,
)
from onnxpass.patterns.matcher import Bindings, Matcher, MatchFailure, Tracer, pattern_nodes
from onnxpass.plugins.base import DOMAIN, get_plugin

CheckResult = MatchFailure | bool | None


class Match:
    """A successful match: bound values, constants, attributes, tags and the matched nodes."""

    def __init__(self, graph: Graph, b: Bindings, outputs: Sequence[str]) -> None:
        self.graph = graph
        self._b = b
        self.outputs = list(outputs)
        self.nodes: list[Node] = list({id(n): n for n in b.order}.values())
        self.facts: dict[str, Any] = {}  # what a check worked out, for the rewrite to use

    def __getitem__(self, name: str) -> str:
        """The graph value bound to a Var or named Const."""
        return self._b.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self._b.values or name in self._b.attrs

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._b.values.get(name, default)

    def const(self, name: str) -> np.ndarray:
        """Value of a named Const, or of a Var bound to a constant (decoded on demand)."""
        if name in self._b.attrs and isinstance(self._b.attrs[name], np.ndarray):
            return self._b.attrs[name]
        v = self.graph.const_value(self._b.values[name])
        if v is None:
            raise KeyError(f"{name} is not a constant")
        return v

    def is_const(self, name: str) -> bool:
        return name in self._b.values and self.graph.is_const(self._b.values[name])

    def attr(self, name: str) -> Any:
        """An attribute bound with ``Var(name)`` in an attribute position."""
        return self._b.attrs[name]

    def tag(self, name: str) -> str | None:
        return self._b.tags.get(name)

    def dim(self, symbol: str) -> int | str:
        return self._b.dims[symbol]

    def shape(self, name: str) -> Shape | None:
        return self.graph.shape(self[name])

    def dtype(self, name: str) -> int | None:
        return self.graph.dtype(self[name])

    def rank(self, name: str) -> int | None:
        return self.graph.rank(self[name])

    def node(self, op_type: str) -> Node:
        """The (first) matched node of this op type."""
        return next(n for n in self.nodes if n.op_type == op_type)


class RewriteBuilder:
    """The ``op`` a rewrite receives: ``op.LayerNormalization(x, g, b, axis=-1)`` records a new
    node and returns its output name(s). Every node records the pass and rule that made it."""

    def __init__(self, graph: Graph, provenance: dict[str, str], near: Node | None = None) -> None:
        self.graph = graph
        self.near = near  # the matched root: new node names derive from its name
        self.nodes: list[Node] = []
        self._provenance = provenance
        self._functions: list[Any] = []  # plugin functions, added to the model by commit()

    def __getattr__(self, op_type: str) -> Callable[..., Any]:
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def make(*inputs: str, _domain: str = "", _outputs: int = 1, **attrs: Any) -> Any:
            return self.node(op_type, inputs, attrs, domain=_domain, num_outputs=_outputs)

        return make

    def node(self, op_type: str, inputs: Sequence[str], attrs: dict[str, Any], *, domain: str = "",
             num_outputs: int = 1) -> Any:
        name = self.graph.fresh_node_name(self.near, op_type)
        outs = [self.graph.fresh_name(f"{name}_output_{k}") for k in range(num_outputs)]
        protos = {k: v if hasattr(v, "SerializeToString") else helper.make_attribute(k, v)
                  for k, v in attrs.items() if v is not None}
        ins = [i or "" for i in inputs]
        while ins and not ins[-1]:  # trailing absent optional inputs are simply left out
            ins.pop()
        node = Node(op_type, ins, outs, protos, domain=domain,
                    name=name, metadata=dict(self._provenance))
        self.nodes.append(node)
        return outs[0] if num_outputs == 1 else tuple(outs)

    def const(self, value: Any, dtype: Any = None, hint: str = "const") -> str:
        """A new initializer holding ``value``."""
        return self.graph.add_initializer(np.asarray(value, dtype=dtype), hint)

    def plugin(self, name: str, *inputs: str, **attrs: Any) -> str:
        """A plugin node per the DESIGN.md convention; :meth:`commit` adds its local function."""
        spec = get_plugin(name)
        self._functions.append(spec.function(self.graph.opset()))
        return self.node(name, inputs, spec.node_attributes(attrs), domain=DOMAIN)

    def commit(self) -> None:
        """Add the plugins' local functions to the model, once the rewrite is applied (a refused
        rewrite must leave the model as it was)."""
        model = self.graph.model
        for fn in self._functions:
            if not any(f.domain == fn.domain and f.name == fn.name for f in model.functions):
                model.functions.append(fn)
            if not self.graph.opset(DOMAIN):
                self.graph.set_opset(DOMAIN, 1)


@dataclass
class Rule:
    """``pattern(op, *vars)`` builds what to match (its parameters after ``op`` become Vars);
    ``check(match)`` returns a MatchFailure (or False) to refuse; ``rewrite(op, match)`` builds
    the replacement and returns its output value(s), one per pattern output."""

    name: str
    pattern: Callable[..., Any]
    rewrite: Callable[[RewriteBuilder, Match], str | Sequence[str]]
    check: Callable[[Match], CheckResult] | None = None
    outputs: list[PValue] = field(init=False)
    roots: set[str] | None = field(init=False)
    required: set[str] = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        params = list(inspect.signature(self.pattern).parameters)[1:]
        out = self.pattern(pattern_op, *[Var(p) for p in params])
        self.outputs = list(out) if isinstance(out, (tuple, list)) else [out]
        self.roots = root_op_types(self.outputs[0])
        self.required = set().union(*(required_op_types(o) for o in self.outputs))
        self.size = sum(len(pattern_nodes(o)) for o in self.outputs)

    def matches_at(self, graph: Graph, node: Node, tracer: Tracer) -> Iterator[Match]:
        """Every complete match anchored at ``node`` that passes ``check``."""
        m = Matcher(graph, tracer)
        root = self.outputs[0]
        anchors = [node.outputs[root.index]] if isinstance(root, Out) else node.outputs
        for anchor in anchors:
            for b in m.match(root, anchor, Bindings()):
                for b2, outs in self._other_outputs(m, b, [anchor]):
                    match = Match(graph, b2, outs)
                    failure = self.check(match) if self.check else None
                    if failure is False or isinstance(failure, MatchFailure):
                        reason = failure.reason if isinstance(failure, MatchFailure) else "check"
                        tracer.refuse(b2.order, f"check failed: {reason}")
                        continue
                    yield match

    def _other_outputs(self, m: Matcher, b: Bindings, found: list[str]
                       ) -> Iterator[tuple[Bindings, list[str]]]:
        k = len(found)
        if k == len(self.outputs):
            yield b, found
            return
        p = self.outputs[k]
        known = set(b.values.values()) | {o for n in b.order for o in n.outputs}
        roots = root_op_types(p)
        for v in sorted(known):
            for user in m.g.users(v):
                if roots is not None and user.op_type not in roots:
                    continue
                for out in user.outputs:
                    for b2 in m.match(p, out, b):
                        yield from self._other_outputs(m, b2, [*found, out])


def apply_rules(graph: Graph, rules: Sequence[Rule], pass_name: str,
                on_rewrite: Callable[[Rule, Match], None] | None = None) -> int:
    """Apply ``rules`` until none matches, revisiting only nodes near each rewrite.

    Rules are indexed by root op type and skipped when the graph lacks an op they need.
    Returns the number of rewrites.
    """
    present = graph.op_types()
    active = [r for r in rules if r.required <= present]
    by_root: dict[str, list[Rule]] = {}
    anywhere: list[Rule] = []
    for r in active:
        if r.roots is None:
            anywhere.append(r)
        for op in r.roots or ():
            by_root.setdefault(op, []).append(r)
    if not active:
        return 0
    # Consumers first: a rule rooted at the last op of a chain sees the whole chain before a
    # smaller rule rooted inside it can claim part of it (LayerNorm with vs. without gamma).
    queue = deque(reversed(graph.toposort()))
    queued = {id(n) for n in queue}
    count = 0
    limit = 20 * len(queue) + 1000
    while queue:
        node = queue.popleft()
        queued.discard(id(node))
        if node.graph is not graph:
            continue
        for rule in by_root.get(node.op_type, []) + anywhere:
            if _try_rule(graph, rule, node, pass_name, on_rewrite, queue, queued):
                count += 1
                if count > limit:
                    raise PassError(f"pass {pass_name} does not converge (rule {rule.name})")
                break
    return count


def _try_rule(graph: Graph, rule: Rule, node: Node, pass_name: str,
              on_rewrite: Callable[[Rule, Match], None] | None, queue: deque[Node],
              queued: set[int]) -> bool:
    for match in rule.matches_at(graph, node, Tracer()):
        builder = RewriteBuilder(graph, {"onnxpass.pass": pass_name, "onnxpass.rule": rule.name},
                                 node)
        result = rule.rewrite(builder, match)
        if result is None:
            continue
        new_outputs = [result] if isinstance(result, str) else list(result)
        try:
            graph.replace(match.nodes, match.outputs, builder.nodes, new_outputs)
        except RewriteRefused:
            continue
        builder.commit()
        if on_rewrite:
            on_rewrite(rule, match)
        touched = list(builder.nodes)
        for n in builder.nodes:
            touched += [graph.producer[i] for i in n.inputs if i in graph.producer]
            touched += [u for o in n.outputs for u in graph.users(o)]
        for o in [*match.outputs, *new_outputs]:  # a pre-existing value took over the users
            touched += graph.users(o)
        for t in touched:
            if id(t) not in queued and t.graph is graph:
                queue.append(t)
                queued.add(id(t))
        return True
    return False


@dataclass
class Attempt:
    """What ``--explain`` reports for one place a rule was tried."""

    rule: str
    node: Node
    matched: bool
    depth: int
    size: int
    reason: str
    at: Node | None


def explain(graph: Graph, rules: Sequence[Rule]) -> list[Attempt]:
    """Try every rule at every node whose op type can root it, rewriting nothing."""
    attempts: list[Attempt] = []
    for node in graph.toposort():
        for rule in rules:
            if rule.roots is not None and node.op_type not in rule.roots:
                continue
            tracer = Tracer()
            found: Match | None = None
            for match in rule.matches_at(graph, node, tracer):
                try:
                    graph.check_self_contained(match.nodes, match.outputs)
                except RewriteRefused as e:
                    tracer.refuse(tuple(match.nodes), f"not self-contained: {e}")
                    continue
                found = match
                break
            if found is not None:
                attempts.append(Attempt(rule.name, node, True, len(found.nodes), rule.size, "", None))
            else:
                best = tracer.best
                depth = min(best.depth, rule.size)
                attempts.append(Attempt(rule.name, node, False, depth, rule.size, best.reason,
                                        best.node))
    return attempts


__all__ = ["Attempt", "Const", "Match", "MatchFailure", "RewriteBuilder", "Rule", "Var",
           "apply_rules", "explain"]
