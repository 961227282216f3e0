"""The pipeline runner: the one way ``run``, ``build``, the Python API and the golden tests
rewrite a model.

:class:`Pipeline` parses a spec (``"default,fp16:pins=pins.txt"``) with its options, and runs it:
load -> check -> passes to a fixpoint -> save. After every pass that changed something: dead code
removed (the one place besides the ``dce`` pass), topological re-sort, ``onnx.checker`` and shape
inference (both on the weight-free skeleton), and, with ``dump_dir``, the graph is saved. A
pipeline still changing after its last round says so in its notes and ``converged``.

Every pattern pass sees the canonical graph: a list that does not name the ``canonical`` pass
(onnxpass/passes/canonical.py) gets it inserted before its first pattern pass
(:func:`with_canonical`), so ``--passes attention`` runs ``canonical,attention``. It shows in the
per-pass stats; ``labels`` stay the passes the user named.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from onnxpass.errors import OnnxpassError, PassError
from onnxpass.graph import Graph
from onnxpass.loadcheck import check_loadable, required_ir_version
from onnxpass.modelio import check_model, load_model, save_model, skeleton
from onnxpass.passes import plugin_hooks
from onnxpass.passes.base import (
    Pass,
    PassContext,
    PatternPass,
    parse_passes,
    pipelines,
    registry,
)
from onnxpass.plugins.base import DOMAIN

if TYPE_CHECKING:
    from onnxpass.targets import Target

# tensorrt.plugin (TensorRT 10.6+) is how onnxpass's plugins reach TensorRT (DESIGN: QDP)
PLUGIN_REGISTRATION = (10, 6)

DEFAULT_MAX_ROUNDS = 4
CANONICAL = "canonical"


@dataclass
class RoundStat:
    """One run of a pass: its round, rewrites, the live node count just before and after it
    (the clean-up and checks after it included), and seconds (``check_seconds`` of them in the
    checks and shape inference after it). ``skipped``: nothing changed since it last ran and
    found nothing, so it did not run."""

    round: int
    matches: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    seconds: float = 0.0
    check_seconds: float = 0.0
    skipped: bool = False


@dataclass
class PassStat:
    """One row per pass instance of the pipeline (a pass listed twice has two): its runs, one per
    round, and their totals. ``nodes_before``/``nodes_after`` are those of its first run, so
    down the rows of a table they follow the graph through the first round."""

    name: str
    matches: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    seconds: float = 0.0
    check_seconds: float = 0.0
    rounds: list[RoundStat] = field(default_factory=list)

    def add(self, r: RoundStat) -> None:
        if not self.rounds:
            self.nodes_before, self.nodes_after = r.nodes_before, r.nodes_after
        self.rounds.append(r)
        self.matches += r.matches
        self.seconds += r.seconds
        self.check_seconds += r.check_seconds

    @property
    def runs(self) -> int:
        return sum(1 for r in self.rounds if not r.skipped)


@dataclass
class PipelineResult:
    graph: Graph
    stats: list[PassStat]
    notes: list[str] = field(default_factory=list)
    rounds: int = 0
    converged: bool = True

    def model(self) -> onnx.ModelProto:
        """The rewritten model (the graph written back into its proto)."""
        return self.graph.to_model()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the rewritten model to ``path`` (external data as :func:`save_model` says)."""
        save_model(self.model(), path, self.graph.base_dir)


def parse_pipeline(spec: str | Sequence[str] | Sequence[Pass],
                   options: Mapping[str, str | None] | None = None, *,
                   flag: str | Mapping[str, str] = "--pins",
                   target: Target | None = None) -> list[Pass]:
    """Pass instances for ``spec``, each given its options, in the forms ``target`` imports
    (onnxpass/targets.py: a standard form it cannot import becomes TensorRT's attention form or
    the plugin form, unless the spec names it, ``layernorm=std``: then an error).

    An item of ``spec`` may carry options after a colon: ``fp16:pins=FILE`` (or
    ``fp16=all:pins=FILE``) gives them to that pass. ``options`` go to every pass that takes them
    (``--pins FILE`` to whichever low-precision pass runs); ``flag`` names them in the error
    when no pass does (one name, or one per option; default ``--KEY``).
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    instances = [p for p in items if isinstance(p, Pass)]
    per_pass: dict[str, dict[str, str]] = {}
    if instances:
        passes = instances
    else:
        names = []
        for item in (s for s in items if isinstance(s, str)):
            name, _, opts = item.partition(":")
            names.append(name)
            for opt in filter(None, (o.strip() for o in opts.split(":"))):
                key, eq, value = opt.partition("=")
                if not eq:
                    raise OnnxpassError(f"{item.strip()}: an option is KEY=VALUE (got {opt!r})")
                per_pass.setdefault(name.partition("=")[0].strip(), {})[key.strip()] = value
        passes = parse_passes(names)
        if target is not None:
            passes = _in_forms_of(passes, target, names)
    for name, opts in per_pass.items():
        for key, value in opts.items():
            _give(passes, key, value, lambda p, n=name: p.name == n, f"{name}:{key}={value}")
    for key, value in (options or {}).items():
        if value is not None:
            where = flag.get(key, f"--{key}") if isinstance(flag, Mapping) else flag
            _give(passes, key, value, lambda p: True, where)
    return passes


def _in_forms_of(passes: list[Pass], target: Target, names: Sequence[str]) -> list[Pass]:
    """``passes`` with each standard form ``target`` cannot import replaced (targets.form_for);
    a form named in ``names`` (the user's spec, not a pipeline's) is explicit."""
    from onnxpass.targets import form_for

    plines = pipelines()
    explicit = {n.partition("=")[0].strip() for n in names
                if "=" in n and n.partition("=")[0].strip() not in plines}
    out = []
    for p in passes:
        std = getattr(p, "required_opset", {}).get("std", 0)
        form = form_for(p.name, p.forms, p.form, std, target, p.name in explicit)
        out.append(p if form == p.form else type(p)(form))
    return out


# Who takes an option given to the whole pipeline, for the error when none of them runs.
_TAKERS = {"pins": ("a pin list", "the fp16, bf16, int8 or fp8 pass"),
           "calibration": ("calibration data", "the int8 or fp8 pass"),
           "method": ("a calibration method", "the int8 or fp8 pass")}


def _give(passes: Sequence[Pass], key: str, value: str, wanted: Callable[[Pass], bool],
          where: str) -> None:
    takers = [p for p in passes if wanted(p) and key in getattr(p, "options", ())]
    if not takers:
        if key in _TAKERS:
            what, who = _TAKERS[key]
            raise OnnxpassError(f"{where}: {what} ({value}) is for {who}, which does not run "
                                f"here")
        raise OnnxpassError(f"{where}: no pass in the pipeline takes option {key!r}")
    for p in takers:
        p.set_option(key, value)  # type: ignore[attr-defined]


def with_canonical(passes: Sequence[Pass]) -> list[Pass]:
    """``passes`` with the canonical pass run once before the first pattern pass, unless they
    name it (then it runs where they say) or have no pattern pass."""
    out = list(passes)
    first = next((k for k, p in enumerate(out) if isinstance(p, PatternPass)), None)
    if first is None or any(p.name == CANONICAL for p in out):
        return out
    return [*out[:first], registry()[CANONICAL](), *out[first:]]


def first_pass_view(graph: Graph, passes: Sequence[Pass]) -> Graph:
    """``graph`` as ``onnxpass match`` explains ``passes`` on it: dead code removed (as the
    runner does before its first round), types inferred, and canonicalized when the runner would
    insert the canonical pass into ``passes``."""
    named = list(passes)
    added = [p for p in with_canonical(named) if all(p is not q for q in named)]
    if not added:
        graph.remove_dead()
        graph.refresh_types()
        return graph
    return PassManager(added, canonical=False).run(graph).graph


def load_graph(path: str | os.PathLike[str]) -> Graph:
    """Load and check the model at ``path``; its external data, and the data of its big inline
    initializers, stay on disk (``load_model(in_place=True)``) until a pass reads them."""
    model = load_model(path, in_place=True)
    check_model(model, str(path))
    return Graph(model, str(Path(path).resolve().parent))


class Pipeline:
    """Parsed passes with their options, and how to run them.

    ``Pipeline("default", {"pins": FILE}).rewrite_file(src, out)`` is ``onnxpass run``'s work;
    :meth:`run` (a Graph) and :meth:`rewrite` (a model in memory) are the steps it is made of.
    """

    def __init__(self, spec: str | Sequence[str] | Sequence[Pass],
                 options: Mapping[str, str | None] | None = None, *,
                 flag: str | Mapping[str, str] = "--pins",
                 check: bool = True, max_rounds: int = DEFAULT_MAX_ROUNDS,
                 dump_dir: str | os.PathLike[str] | None = None,
                 progress: Callable[[str], None] | None = None,
                 target: str | Target | None = None) -> None:
        from onnxpass.targets import Target, parse_target

        self.target = target if isinstance(target, Target) else parse_target(target)
        self.passes = parse_pipeline(spec, options, flag=flag, target=self.target)
        self.manager = PassManager(self.passes, check=check, max_rounds=max_rounds,
                                   dump_dir=dump_dir, progress=progress)

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self.passes]

    def run(self, graph: Graph) -> PipelineResult:
        before = {n.op_type for n in graph.nodes if n.domain == ""}
        opset = graph.opset()
        result = self.manager.run(graph)
        self._check_target(result, before, opset)
        return result

    def _check_target(self, result: PipelineResult, before: set[str], opset: int) -> None:
        """The output imports at the target: no opset raised past its highest, no standard op
        it does not import that the passes put there (one the input had is a note)."""
        from onnxpass.targets import unsupported_ops

        t = self.target
        if t.note:
            result.notes.append(f"--target {t.name}: {t.note}")
        g = result.graph
        if g.opset() > max(opset, t.max_opset):
            raise OnnxpassError(f"the passes raised the model's opset to {g.opset()}; TensorRT "
                                f"{t.name[4:]} imports opsets up to {t.max_opset} (--target "
                                f"{t.name})")
        ops = {n.op_type for n in g.nodes if n.domain == ""}
        bad = unsupported_ops(ops, t)
        new = [op for op in bad if op not in before]
        if new:
            raise OnnxpassError(f"the passes emitted {', '.join(new)}, which TensorRT "
                                f"{t.name[4:]} does not import (--target {t.name})")
        if bad:
            result.notes.append(f"--target {t.name}: the input already has "
                                f"{', '.join(bad)}, which TensorRT {t.name[4:]} does not import")
        if opset > t.max_opset:
            result.notes.append(f"--target {t.name}: the input is at opset {opset}, over the "
                                f"{t.max_opset} TensorRT {t.name[4:]} imports")
        plugins = sorted({n.op_type for n in g.nodes if n.domain == DOMAIN})
        if plugins and t.version < PLUGIN_REGISTRATION:
            result.notes.append(
                f"--target {t.name}: the plugin nodes ({', '.join(plugins)}) need a plugin "
                f"library on TensorRT {t.name[4:]}: onnxpass registers its plugins through "
                f"tensorrt.plugin (TensorRT 10.6+, AOT 10.9+)")

    def rewrite(self, model: onnx.ModelProto, base_dir: str = ""
                ) -> tuple[onnx.ModelProto, PipelineResult]:
        """Rewrite ``model`` in place; returns it with the result."""
        result = self.run(Graph(model, base_dir))
        return result.model(), result

    def rewrite_file(self, src: str | os.PathLike[str], out: str | os.PathLike[str]
                     ) -> PipelineResult:
        """Load and check ``src``, run, save to ``out`` (refused, before any work, where it
        would overwrite ``src`` or a file ``src`` reads its weights from)."""
        from onnxpass.modelio import check_output, referenced_files

        graph = load_graph(src)
        check_output(Path(out), src, referenced_files(graph.model, graph.base_dir))
        result = self.run(graph)
        result.save(out)
        return result


class PassManager:
    """Runs ``passes`` in order, repeating the pipeline until a round changes nothing (at most
    ``max_rounds``; one still changing then is reported, not an error). With ``canonical``
    (the default) the canonical pass runs before the first pattern pass (:func:`with_canonical`)."""

    def __init__(self, passes: Sequence[Pass], *, check: bool = True,
                 max_rounds: int = DEFAULT_MAX_ROUNDS,
                 dump_dir: str | os.PathLike[str] | None = None,
                 progress: Callable[[str], None] | None = None, canonical: bool = True) -> None:
        self.passes = with_canonical(passes) if canonical else list(passes)
        self.check = check
        self.max_rounds = max_rounds
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.progress = progress or (lambda _msg: None)

    def run(self, graph: Graph) -> PipelineResult:
        # The graph is a large web of small objects that lives through the whole run: Python's
        # full collections would walk it again and again (7 -> 75 us per node from 1k to 100k
        # nodes, bench/bench_scaling.py). Collected once, at the end.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(graph)
        finally:
            if enabled:
                gc.enable()

    def _run(self, graph: Graph) -> PipelineResult:
        plugin_hooks.install()
        ctx = PassContext(graph, progress=self.progress)
        stats = [PassStat(p.label) for p in self.passes]
        step = 0
        graph.remove_dead()  # passes see only what reaches an output
        graph.refresh_types()
        rounds, changed = 0, 0
        # A pass that found nothing is not run again until another pass has changed the graph:
        # edits[k] is the number of changing runs before pass k last ran and found nothing.
        edits, idle_at = 0, [-1] * len(self.passes)
        for rounds in range(1, self.max_rounds + 1):
            changed = 0
            for k, (p, stat) in enumerate(zip(self.passes, stats)):
                before = len(ctx.graph.nodes)
                if idle_at[k] == edits:
                    stat.add(RoundStat(rounds, 0, before, before, 0.0, 0.0, skipped=True))
                    continue
                t0 = time.perf_counter()
                self.progress(f"[round {rounds}, {k + 1}/{len(self.passes)}] {p.label}")
                old = ctx.graph
                n = p.run(ctx)
                if ctx.graph is not old:  # a new Graph (opset raised): free the old one's web
                    del old
                    gc.collect()
                check = 0.0
                if n:
                    t1 = time.perf_counter()
                    self._after(ctx.graph, p)
                    check = time.perf_counter() - t1
                    edits += 1
                    idle_at[k] = -1
                else:
                    idle_at[k] = edits
                stat.add(RoundStat(rounds, n, before, len(ctx.graph.nodes),
                                   time.perf_counter() - t0, check))
                changed += n
                if n and self.dump_dir is not None:
                    step += 1
                    save_model(ctx.graph.to_model(), self.dump_dir / f"{step:02d}_{p.name}.onnx",
                               ctx.graph.base_dir)
            if not changed:
                break
        converged = not changed
        if not converged:
            ctx.notes.append(f"pipeline did not converge after {rounds} rounds "
                             f"({changed} rewrites in the last)")
        return PipelineResult(ctx.graph, stats, ctx.notes, rounds, converged)

    def _after(self, graph: Graph, p: Pass) -> None:
        graph.remove_dead()
        # One sync and one weight-free skeleton serve both the checker and shape inference.
        model = graph.to_model()
        # The pass may have raised the opset or added local functions: say the IR that holds them.
        model.ir_version = max(model.ir_version, required_ir_version(model))
        skel, _ = skeleton(model)
        if self.check:
            try:
                onnx.checker.check_model(skel)
            except Exception as e:
                raise PassError(f"after pass {p.label}: invalid ONNX graph: "
                                f"{str(e).strip().splitlines()[0]}") from None
            check_loadable(skel, f"after pass {p.label}")
        graph.refresh_types(skel)
