"""Passes, their registry, and pipeline specs like ``default,attention=plugin``."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import ClassVar, TypeVar

from onnxpass.errors import UnknownPassError
from onnxpass.graph import Graph, RewriteRefused, convert_opset
from onnxpass.patterns.matcher import Tracer
from onnxpass.patterns.rule import Rule, apply_rules


@dataclass
class PassContext:
    """What a pass works on. A pass that must replace the graph (opset conversion) assigns
    ``ctx.graph``; ``notes`` collects lines the user should read (e.g. "opset raised")."""

    graph: Graph
    notes: list[str] = field(default_factory=list)


class Pass:
    """A named transformation. Subclasses set ``name`` and ``summary`` and implement ``run``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    forms: ClassVar[tuple[str, ...]] = ()
    default_form: ClassVar[str | None] = None

    def __init__(self, form: str | None = None) -> None:
        if form is not None and form not in self.forms:
            if not self.forms:
                raise UnknownPassError(f"pass {self.name} has no forms (got ={form})")
            raise UnknownPassError(f"pass {self.name} has no form {form!r}; forms: "
                                   f"{', '.join(self.forms)}")
        self.form = form or self.default_form

    def run(self, ctx: PassContext) -> int:
        """Transform ``ctx.graph``; return how many rewrites were made."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        return f"{self.name}={self.form}" if self.form and self.forms else self.name


class PatternPass(Pass):
    """A pass made of rules. ``rules()`` builds them for ``self.form``; ``required_opset``
    names the default-domain opset the replacement needs, raised only when a rule matches."""

    required_opset: ClassVar[dict[str, int]] = {}

    def rules(self) -> list[Rule]:
        raise NotImplementedError

    def run(self, ctx: PassContext) -> int:
        rules = self._rules()
        need = self.required_opset.get(self.form or "", 0)
        if self.form == "plugin":  # plugin reference bodies are written for opset >= min_opset
            need = max(need, _plugin_min_opset())
        if need > ctx.graph.opset() and self._any_match(ctx.graph, rules):
            old = ctx.graph.opset()
            ctx.graph = convert_opset(ctx.graph, need, f"{self.label}")
            ctx.notes.append(f"{self.label}: raised the model's opset {old} -> {need}")
        elif need > ctx.graph.opset():
            return 0
        return apply_rules(ctx.graph, rules, self.name)

    def _rules(self) -> list[Rule]:
        cached = getattr(self, "_rule_cache", None)
        if cached is None:
            cached = self.rules()
            self._rule_cache = cached
        return cached

    def _any_match(self, graph: Graph, rules: Sequence[Rule]) -> bool:
        present = graph.op_types()
        for node in graph.live_nodes():
            for r in rules:
                if r.required <= present and (r.roots is None or node.op_type in r.roots):
                    for m in r.matches_at(graph, node, Tracer()):
                        try:  # a match the rewrite would refuse raises no opset
                            graph.check_self_contained(m.nodes, m.outputs)
                        except RewriteRefused:
                            continue
                        return True
        return False


def _plugin_min_opset() -> int:
    from onnxpass.plugins.base import all_plugins

    return max(s.min_opset for s in all_plugins())


_PASSES: dict[str, type[Pass]] = {}
_PIPELINES: dict[str, list[str]] = {}
_loaded_entry_points = False


_P = TypeVar("_P", bound=type["Pass"])


def register(cls: _P) -> _P:
    """Class decorator: make a pass available by name (to ``onnxpass run --passes``)."""
    if cls.name in _PASSES and _PASSES[cls.name] is not cls:
        raise ValueError(f"pass {cls.name} registered twice")
    _PASSES[cls.name] = cls
    return cls


def register_pipeline(name: str, specs: list[str]) -> None:
    _PIPELINES[name] = specs


def registry() -> dict[str, type[Pass]]:
    """All passes: built-in ones and those published under the ``onnxpass.passes`` entry point
    group (each entry point names a module or a Pass subclass)."""
    global _loaded_entry_points
    from onnxpass.passes import builtin  # noqa: F401  (registers the built-in passes)

    if not _loaded_entry_points:
        _loaded_entry_points = True
        for ep in entry_points(group="onnxpass.passes"):
            try:
                obj = ep.load()
            except Exception as e:  # a broken third-party package: say which one, in one line
                raise UnknownPassError(f"entry point onnxpass.passes:{ep.name} = {ep.value} "
                                       f"fails to load: {type(e).__name__}: {e}") from None
            if isinstance(obj, type) and issubclass(obj, Pass):
                register(obj)
    return dict(_PASSES)


def pipelines() -> dict[str, list[str]]:
    registry()
    return dict(_PIPELINES)


def parse_passes(spec: str | Sequence[str]) -> list[Pass]:
    """``"default,attention=plugin"`` -> pass instances. A pipeline name expands in place; a later
    ``name=form`` overrides the form of that pass inside an expanded pipeline."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    passes = registry()
    plines = pipelines()
    if not items:  # an empty spec is a mistake, not a request to do nothing
        raise UnknownPassError(f"names no pass; give passes or a pipeline "
                               f"({', '.join(sorted(plines))}; onnxpass list shows all)")
    out: list[tuple[str, str | None]] = []
    for item in items:
        name, _, form = item.partition("=")
        name = name.strip()
        if name in plines:
            out.extend(_split(s) for s in plines[name])
            continue
        if name not in passes:
            raise UnknownPassError(_unknown(name, list(passes) + list(plines)))
        positions = [k for k, (n, _) in enumerate(out) if n == name]
        if positions and form:
            for k in positions:
                out[k] = (name, form)
        else:
            out.append((name, form or None))
    return [passes[n](f) for n, f in out]


def _split(s: str) -> tuple[str, str | None]:
    n, _, f = s.partition("=")
    return n, f or None


def _unknown(name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(sorted(known))}"
    return f"unknown pass {name!r}{hint}"


PassFactory = Callable[[str | None], Pass]
