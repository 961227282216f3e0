"""Rules (pattern + check + rewrite), the one function that finds their matches, and the worklist
driver that applies them to a fixpoint.

:func:`find_matches` is the single statement of "does this rule apply here": the pattern, the
check, the rewrite (built, not yet applied: a plugin the model's opset cannot hold refuses it) and
self-containment. The driver, ``explain``, a pass's opset decision and the fp16 pins all use it,
so ``onnxpass match --explain`` reports what ``onnxpass run`` does.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import numpy as np
import onnx
from onnx import helper

from onnxpass.errors import PassError
from onnxpass.graph import Graph, Node, RewriteRefused, Shape
from onnxpass.patterns.ir import (
    Const,
    Out,
    PValue,
    Var,
    pattern_op,
    required_op_types,
    root_op_types,
)
from onnxpass.patterns.matcher import (
    Bindings,
    Matcher,
    MatchFailure,
    Tracer,
    pattern_names,
    pattern_nodes,
)
from onnxpass.plugins.base import DOMAIN, PluginSpec, get_plugin

F = TypeVar("F")
# A check refuses with a MatchFailure (or False); anything else is its result, the match's facts.
CheckResult = Any
# The newest default-domain opset: what a pass may raise a model to when a match needs it.
NEWEST_OPSET = onnx.defs.onnx_opset_version()


class Match(Generic[F]):
    """A successful match: bound values, constants, attributes, tags and the matched nodes.
    ``facts`` is what the rule's check returned (None without a check): typed per rule.

    Asking (``m[...]``, ``get``, ``attr``, ``const``, ``tag``) for a name the pattern never binds
    raises KeyError naming the ones it does; a name of an optional branch that did not match is
    absent (``get`` gives None, ``in`` False)."""

    def __init__(self, graph: Graph, b: Bindings, outputs: Sequence[str],
                 names: Iterable[str] = ()) -> None:
        self.graph = graph
        self._b = b
        self._names = frozenset(names)
        self.outputs = list(outputs)
        self.nodes: list[Node] = list({id(n): n for n in b.order}.values())
        self.facts: F = cast(F, None)

    def _known(self, name: str) -> None:
        if self._names and name not in self._names:
            raise KeyError(f"the pattern binds no {name!r}; it binds "
                           f"{', '.join(sorted(self._names))}")

    def __getitem__(self, name: str) -> str:
        """The graph value bound to a Var or named Const."""
        self._known(name)
        if name not in self._b.values:
            raise KeyError(f"{name!r} is not bound in this match (an optional branch left it "
                           f"out, or it is an attribute: use m.attr)")
        return self._b.values[name]

    def __contains__(self, name: str) -> bool:
        """Whether ``name`` is bound; asks nothing of the pattern (a check shared by rules
        with different patterns tests with ``in``)."""
        return name in self._b.values or name in self._b.attrs or name in self._b.tags

    def get(self, name: str, default: str | None = None) -> str | None:
        self._known(name)
        return self._b.values.get(name, default)

    def const(self, name: str) -> np.ndarray:
        """Value of a named Const, or of a Var bound to a constant (decoded on demand)."""
        self._known(name)
        if name in self._b.attrs and isinstance(self._b.attrs[name], np.ndarray):
            return self._b.attrs[name]
        v = self.graph.const_value(self[name])
        if v is None:
            raise KeyError(f"{name} is not a constant")
        return v

    def is_const(self, name: str) -> bool:
        self._known(name)
        return name in self._b.values and self.graph.is_const(self._b.values[name])

    def attr(self, name: str) -> Any:
        """An attribute bound with ``Var(name)`` in an attribute position."""
        self._known(name)
        return self._b.attrs[name]

    def tag(self, name: str) -> str | None:
        """Which branch of the Alt tagged ``name`` matched (None: the Alt was not reached)."""
        self._known(name)
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
    node and returns its output name(s). Every node records the pass and rule that made it.

    Nothing reaches the graph before :meth:`commit`: new initializers and plugin functions are
    recorded, so a refused or unused rewrite leaves the model as it was.

    ``opset`` is the lowest default-domain opset the nodes built so far need: what
    :meth:`require_opset` was told (a pass's standard form: LayerNormalization needs 17) and what
    the plugin nodes' specs say (a float16 plugin body needs CastLike, 15). A pass raises the
    model's opset to the largest ``opset`` of its matches, once, before it rewrites. A need above
    ``max_opset`` refuses the rewrite (raises RewriteRefused)."""

    def __init__(self, graph: Graph, provenance: dict[str, str], near: Node | None = None, *,
                 max_opset: int | None = None) -> None:
        self.graph = graph
        self.near = near  # the matched root: new node names derive from its name
        self.nodes: list[Node] = []
        self.max_opset = graph.opset() if max_opset is None else max_opset
        self.opset = 0
        self._provenance = provenance
        self._consts: dict[str, tuple[np.ndarray, str]] = {}  # placeholder -> (value, hint)
        self._plugins: list[PluginSpec] = []

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
        """A new initializer holding ``value``, added to the graph on :meth:`commit`."""
        # NUL never occurs in an ONNX name: the placeholder cannot collide with the model's
        name = f"{hint}\0{len(self._consts)}"
        self._consts[name] = (np.asarray(value, dtype=dtype), hint)
        return name

    def dtype(self, value: str) -> int | None:
        """The element type of a value, new ones included: a new node's is its first input's
        (the ops a rewrite puts in front of a plugin, Mul, Transpose, Unsqueeze, keep it)."""
        if value in self._consts:
            return helper.np_dtype_to_tensor_dtype(self._consts[value][0].dtype)
        producer = next((n for n in self.nodes if value in n.outputs), None)
        if producer is None:
            return self.graph.dtype(value)
        if producer.op_type == "Cast":
            return cast(int, producer.attr("to"))
        if producer.op_type in _BOOL_OPS:
            return onnx.TensorProto.BOOL
        source = producer.inputs[1:2] if producer.op_type == "Where" else producer.inputs[:1]
        return self.dtype(source[0]) if source else None

    def require_opset(self, opset: int, why: str) -> None:
        """The nodes this rewrite builds need default-domain opset ``opset`` (``why`` names
        them in the refusal when ``max_opset`` is lower)."""
        if opset > self.max_opset:
            raise RewriteRefused(f"{why} needs opset >= {opset}, the model has {self.max_opset}")
        self.opset = max(self.opset, opset)

    def plugin(self, name: str, *inputs: str, **attrs: Any) -> str:
        """A plugin node per docs/design.md's convention; :meth:`commit` adds its local function.
        Refused when the spec takes no such input dtypes, or needs an opset above ``max_opset``
        for them (its reference body in a type other than float32 needs CastLike)."""
        spec = get_plugin(name)
        values = spec.attr_values(attrs)
        dtypes = {io: _dtype_name(self.dtype(v)) for io, v in zip(spec.inputs, inputs)}
        reason = spec.dtype_refusal(dtypes)
        if reason is not None:
            raise RewriteRefused(reason)
        self.require_opset(spec.opset_for(dtypes, values), spec.describe(dtypes))
        self._plugins.append(spec)
        return self.node(name, inputs, spec.node_attributes(values), domain=DOMAIN)

    def commit(self, outputs: Sequence[str]) -> list[str]:
        """Add the new initializers and the plugins' local functions to the model; returns
        ``outputs`` under the initializers' real names (a rewrite may return a constant)."""
        real = {k: self.graph.add_initializer(v, hint) for k, (v, hint) in self._consts.items()}
        for n in self.nodes:
            n.inputs = [real.get(i, i) for i in n.inputs]
        model = self.graph.model
        for spec in self._plugins:
            if not any(f.domain == DOMAIN and f.name == spec.name for f in model.functions):
                model.functions.append(spec.function(self.graph.opset()))
            if not self.graph.opset(DOMAIN):
                self.graph.set_opset(DOMAIN, 1)
        self._consts = {}
        return [real.get(o, o) for o in outputs]


_BOOL_OPS = frozenset({"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And",
                       "Or", "Xor", "IsNaN", "IsInf"})


def _dtype_name(elem: int | None) -> str | None:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name if elem else None


Rewrite = Callable[[RewriteBuilder, Match[Any]], "str | Sequence[str] | None"]


@dataclass(kw_only=True)
class Rule:
    """``pattern(op, *vars)`` builds what to match (its parameters after ``op`` become Vars);
    ``check(match)`` returns a MatchFailure (or False) to refuse, or a result the rewrite reads as
    ``match.facts``; ``rewrite(op, match)`` builds the replacement and returns its output
    value(s), one per pattern output, or None to decline. Of the rules rooted at one node, those
    of higher ``benefit`` are tried first. Every field is keyword-only."""

    name: str
    pattern: Callable[..., Any]
    rewrite: Rewrite
    check: Callable[[Match[Any]], CheckResult] | None = None
    benefit: int = 0
    outputs: list[PValue] = field(init=False)
    roots: set[str] | None = field(init=False)
    required: set[str] = field(init=False)
    size: int = field(init=False)
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        params = list(inspect.signature(self.pattern).parameters)[1:]
        out = self.pattern(pattern_op, *[Var(p) for p in params])
        self.outputs = list(out) if isinstance(out, (tuple, list)) else [out]
        self.roots = root_op_types(self.outputs[0])
        self.required = set().union(*(required_op_types(o) for o in self.outputs))
        self.size = sum(len(pattern_nodes(o)) for o in self.outputs)
        self.names = frozenset(set(params).union(*(pattern_names(o) for o in self.outputs)))

    def matches_at(self, graph: Graph, node: Node, tracer: Tracer) -> Iterator[Match[Any]]:
        """Every complete match anchored at ``node`` that passes ``check`` (its result in
        ``facts``). Pattern and check only: :func:`find_matches` says whether it applies."""
        m = Matcher(graph, tracer)
        root = self.outputs[0]
        anchors = [node.outputs[root.index]] if isinstance(root, Out) else node.outputs
        for anchor in anchors:
            for b in m.match(root, anchor, Bindings()):
                for b2, outs in self._other_outputs(m, b, [anchor]):
                    match: Match[Any] = Match(graph, b2, outs, self.names)
                    result = self.check(match) if self.check else None
                    if result is False or isinstance(result, MatchFailure):
                        reason = result.reason if isinstance(result, MatchFailure) else "check"
                        tracer.refuse(b2.order, f"check failed: {reason}")
                        continue
                    match.facts = None if result is True else result
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


@dataclass
class Found:
    """One rule tried at one node. Accepted: ``match``, and ``op`` holding the built (not yet
    applied) replacement whose outputs are ``new_outputs``. Refused: ``failure`` says why, at
    the deepest point reached (``failure.depth``) or, for a complete match, the refusal."""

    rule: Rule
    node: Node
    match: Match[Any] | None = None
    op: RewriteBuilder | None = None
    new_outputs: list[str] = field(default_factory=list)
    failure: MatchFailure | None = None

    @property
    def accepted(self) -> bool:
        return self.op is not None


def find_matches(graph: Graph, rules: Sequence[Rule], nodes: Iterable[Node] | None = None, *,
                 max_opset: int | None = None, pass_name: str = "", trace_all: bool = False
                 ) -> Iterator[Found]:
    """Try ``rules`` at each of ``nodes`` (default: every live node, topologically): one Found
    per rule that can root there, in benefit order, up to the first accepted one.

    A match is accepted when the check passes, the rewrite builds (plugins within
    ``max_opset``, default the model's opset) and the match is self-contained. After an
    accepted one the next node is taken, so a caller may apply it before resuming; ``nodes``
    is read lazily (a worklist may grow) and nodes a rewrite removed are skipped. Rules needing
    an op the graph lacks cannot match and are skipped, unless ``trace_all`` (to explain how far
    they get).
    """
    present = graph.op_types()
    by_root: dict[str, list[Rule]] = {}
    anywhere: list[Rule] = []
    for r in sorted(rules, key=lambda r: -r.benefit):  # stable: equal benefits keep their order
        if not trace_all and not r.required <= present:
            continue
        if r.roots is None:
            anywhere.append(r)
        for op in r.roots or ():
            by_root.setdefault(op, []).append(r)
    if not by_root and not anywhere:
        return
    for node in graph.toposort() if nodes is None else nodes:
        if node.graph is not graph:
            continue
        for rule in by_root.get(node.op_type, []) + anywhere:
            found = _try_at(graph, rule, node, max_opset, pass_name)
            yield found
            if found.accepted:
                break


def _try_at(graph: Graph, rule: Rule, node: Node, max_opset: int | None, pass_name: str) -> Found:
    tracer = Tracer()
    for match in rule.matches_at(graph, node, tracer):
        op = RewriteBuilder(graph, {"onnxpass.pass": pass_name, "onnxpass.rule": rule.name},
                            node, max_opset=max_opset)
        try:
            result = rule.rewrite(op, match)
            if result is None:
                tracer.refuse(tuple(match.nodes), "the rewrite declined")
                continue
            graph.check_self_contained(match.nodes, match.outputs)
        except RewriteRefused as e:
            tracer.refuse(tuple(match.nodes), str(e))
            continue
        new_outputs = [result] if isinstance(result, str) else list(result)
        return Found(rule, node, match, op, new_outputs)
    return Found(rule, node, failure=tracer.best)


# Node metadata on every node a rewrite makes: the input model's nodes it stands for, comma
# separated (a replaced node that a pass made itself counts as the nodes it stood for).
REPLACED = "onnxpass.replaced"

# Set to a list to record every rewrite as (pass, rule, matched nodes, made nodes) as protos
# (onnxpass run --report draws them); None: nothing is recorded.
REWRITE_LOG: list[tuple[str, str, list[Any], list[Any]]] | None = None


def _replaced_names(nodes: Sequence[Node]) -> str:
    names: set[str] = set()
    for n in nodes:
        earlier = n.metadata.get(REPLACED)
        names.update(earlier.split(",") if earlier else [n.name])
    return ",".join(sorted(x for x in names if x))


def apply_rules(graph: Graph, rules: Sequence[Rule], pass_name: str,
                on_rewrite: Callable[[Rule, Match[Any]], None] | None = None) -> int:
    """Apply ``rules`` until none matches, revisiting only nodes near each rewrite.

    Rules are indexed by root op type and skipped when the graph lacks an op they need.
    Returns the number of rewrites.
    """
    # Consumers first: a rule rooted at the last op of a chain sees the whole chain before a
    # smaller rule rooted inside it can claim part of it (LayerNorm with vs. without gamma).
    queue = deque(reversed(graph.toposort()))
    queued = {id(n) for n in queue}
    limit = 20 * len(queue) + 1000

    def worklist() -> Iterator[Node]:
        while queue:
            node = queue.popleft()
            queued.discard(id(node))
            yield node

    count = 0
    for found in find_matches(graph, rules, worklist(), pass_name=pass_name):
        if found.op is None or found.match is None:
            continue
        match, op = found.match, found.op
        new_outputs = op.commit(found.new_outputs)
        replaced = _replaced_names(match.nodes)
        for n in op.nodes:
            n.metadata[REPLACED] = replaced
        if REWRITE_LOG is not None:  # --report: each rewrite as it happened
            REWRITE_LOG.append((pass_name, found.rule.name,
                                [m.to_proto() for m in match.nodes],
                                [m.to_proto() for m in op.nodes]))
        graph.replace(match.nodes, match.outputs, op.nodes, new_outputs)
        count += 1
        if count > limit:
            raise PassError(f"pass {pass_name} does not converge (rule {found.rule.name})")
        if on_rewrite:
            on_rewrite(found.rule, match)
        touched = list(op.nodes)
        for n in op.nodes:
            touched += [graph.producer[i] for i in n.inputs if i in graph.producer]
            touched += [u for o in n.outputs for u in graph.users(o)]
        for o in [*match.outputs, *new_outputs]:  # a pre-existing value took over the users
            touched += graph.users(o)
        for t in touched:
            if id(t) not in queued and t.graph is graph:
                queue.append(t)
                queued.add(id(t))
    return count


@dataclass
class Attempt:
    """What ``--explain`` reports for one place a rule was tried. ``opset``: for a match, the
    default-domain opset its plugin nodes need (a pass raises the model's to it; 0: any)."""

    rule: str
    node: Node
    matched: bool
    depth: int
    size: int
    reason: str
    at: Node | None
    opset: int = 0
    nodes: tuple[Node, ...] = ()  # a match's nodes


def explain(graph: Graph, rules: Sequence[Rule], *, max_opset: int = NEWEST_OPSET
            ) -> list[Attempt]:
    """What :func:`find_matches` reports at every live node, rewriting nothing. A pass raises
    the model's opset when a match needs it, so by default a plugin's opset limit refuses only
    what no opset allows (the Attempt says the opset it needs)."""
    attempts: list[Attempt] = []
    for f in find_matches(graph, rules, max_opset=max_opset, trace_all=True):
        if f.match is not None and f.op is not None:
            need = f.op.opset if f.op.opset > graph.opset() else 0
            note = f"the pass raises the opset to {need}" if need else ""
            attempts.append(Attempt(f.rule.name, f.node, True, len(f.match.nodes), f.rule.size,
                                    note, None, need, tuple(f.match.nodes)))
        else:
            best = f.failure if f.failure is not None else MatchFailure("no attempt", -1)
            attempts.append(Attempt(f.rule.name, f.node, False, min(best.depth, f.rule.size),
                                    f.rule.size, best.reason, best.node))
    return attempts


__all__ = ["Attempt", "Const", "Found", "Match", "MatchFailure", "RewriteBuilder", "Rule", "Var",
           "apply_rules", "explain", "find_matches"]
