"""Passes, their registry, and pipeline specs like ``default,attention=plugin``."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, TypeVar

from onnxpass.errors import UnknownPassError
from onnxpass.graph import Graph, convert_opset
from onnxpass.patterns import Alt, PatternOps, PValue, Var
from onnxpass.patterns.rule import (
    NEWEST_OPSET,
    Attempt,
    Match,
    RewriteBuilder,
    Rule,
    apply_rules,
    explain,
    find_matches,
)
from onnxpass.plugins.base import all_plugins


@dataclass
class PassContext:
    """What a pass works on. A pass that must replace the graph (opset conversion) assigns
    ``ctx.graph``; ``notes`` collects lines the user should read (e.g. "opset raised"); ``progress``
    takes lines about a long step (calibration), shown while the pass runs."""

    graph: Graph
    notes: list[str] = field(default_factory=list)
    progress: Callable[[str], None] | None = None  # where a long pass says how far it got


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
    names, per form, the default-domain opset its replacements need (LayerNormalization: 17).

    One mechanism raises the opset for standard and plugin forms: a rewrite states what its
    nodes need (the form's ``required_opset``, which every rule of that form is given, and the
    plugin nodes' specs: a float16 plugin body needs CastLike, opset 15), and the pass raises
    the model's opset, once per run and only when an accepted match needs it, to the largest of
    those needs (onnxpass/opset.py's convert_opset). ``onnxpass match --explain`` reports the
    same decision ("raises the opset to N")."""

    required_opset: ClassVar[dict[str, int]] = {}

    def rules(self) -> list[Rule]:
        raise NotImplementedError

    def run(self, ctx: PassContext) -> int:
        opset = self.target_opset(ctx.graph)
        if opset is None:
            return 0
        if opset > ctx.graph.opset():
            old = ctx.graph.opset()
            ctx.graph = convert_opset(ctx.graph, opset, f"{self.label}")
            ctx.notes.append(f"{self.label}: raised the model's opset {old} -> {opset}")
        return apply_rules(ctx.graph, self._rules(), self.name)

    def target_opset(self, graph: Graph) -> int | None:
        """The opset this pass runs the model at: its own, or raised to what the accepted
        matches' rewrites need; None when a rewrite would need raising and nothing matches (the
        model is left as it is)."""
        opset = graph.opset()
        need = self.required_opset.get(self.form or "", 0)
        if opset >= max(need, _highest_plugin_opset()):  # no rewrite can need more
            return opset
        found = [f.op.opset for f in find_matches(graph, self._rules(), max_opset=NEWEST_OPSET,
                                                  pass_name=self.name) if f.op is not None]
        if not found:
            return None
        return max(opset, *found)

    def explain(self, graph: Graph) -> list[Attempt]:
        """Where each rule matches or why not, as :meth:`run` would decide at ``graph``."""
        return explain(graph, self._rules(), max_opset=self.target_opset(graph) or graph.opset())

    def _rules(self) -> list[Rule]:
        cached = getattr(self, "_rule_cache", None)
        if cached is None:
            cached = self.rules()
            need = self.required_opset.get(self.form or "", 0)
            if need:
                cached = [_requiring(r, need, self.label) for r in cached]
            self._rule_cache = cached
        return cached


def _requiring(rule: Rule, opset: int, label: str) -> Rule:
    """``rule`` whose rewrite first states that its nodes need ``opset``."""
    inner = rule.rewrite

    def rewrite(op: RewriteBuilder, m: Match[Any]) -> str | Sequence[str] | None:
        op.require_opset(opset, label)
        return inner(op, m)

    out = copy.copy(rule)  # the pattern is built once, in the original's __post_init__
    out.rewrite = rewrite
    return out


def _highest_plugin_opset() -> int:
    """No plugin body needs a higher opset than this for any dtype: above it no plugin node
    raises one."""
    return max((max(s.min_opset, s.typed_opset) for s in all_plugins()), default=0)


def native_pattern(op_type: str, inputs: Sequence[str], attrs: Mapping[str, Any], *,
                   optional: int = 0) -> Callable[..., Any]:
    """The pattern of an exporter's own ``op_type`` node: Vars named ``inputs`` (the last
    ``optional`` of them may be absent), attributes as ``attrs`` says (a Var binds one)."""
    def pattern(op: PatternOps) -> PValue:
        values = [Var(n) for n in inputs]
        forms = [getattr(op, op_type)(*values[:len(values) - k], **attrs)
                 for k in range(optional + 1)]
        return Alt(*forms) if len(forms) > 1 else forms[0]

    return pattern


PluginArgs = tuple[Sequence[str], dict[str, Any]]


def native_plugin_rule(name: str, op_type: str, plugin: str, inputs: Sequence[str], *,
                       attrs: Mapping[str, Any], optional: int = 0,
                       convert: Callable[[RewriteBuilder, Match[Any]], PluginArgs],
                       check: Callable[[Match[Any]], Any] | None = None) -> Rule:
    """The rule that turns an exporter's own ``op_type`` node (LayerNormalization, Gelu,
    Attention) into its ``plugin`` node: ``convert(op, m)`` gives the plugin's inputs and
    attributes. The plugin spec decides dtypes and opset (a refusal leaves the node)."""
    def rewrite(op: RewriteBuilder, m: Match[Any]) -> str:
        args, values = convert(op, m)
        return op.plugin(plugin, *args, **values)

    return Rule(name=name, pattern=native_pattern(op_type, inputs, attrs, optional=optional),
                rewrite=rewrite, check=check)


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
    # The built-in passes registered themselves when onnxpass.passes was imported (its
    # __init__ loads passes/builtin.py once): nothing here imports upward.
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
