"""The pass manager: runs a pipeline to a fixpoint, checking the graph after every pass."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxpass.errors import PassError
from onnxpass.graph import Graph, save_model, skeleton
from onnxpass.loadcheck import check_loadable, required_ir_version
from onnxpass.passes.base import Pass, PassContext


@dataclass
class PassStat:
    name: str
    matches: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    seconds: float = 0.0


@dataclass
class PipelineResult:
    graph: Graph
    stats: list[PassStat]
    notes: list[str] = field(default_factory=list)
    rounds: int = 0


class PassManager:
    """Runs ``passes`` in order, repeating the pipeline until a round changes nothing.

    After each pass that changed something: topological re-sort, ``onnx.checker`` and shape
    inference (both on the weight-free skeleton), and, with ``dump_dir``, the graph is saved.
    """

    def __init__(self, passes: Sequence[Pass], *, check: bool = True, max_rounds: int = 4,
                 dump_dir: str | Path | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.passes = list(passes)
        self.check = check
        self.max_rounds = max_rounds
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.progress = progress or (lambda _msg: None)

    def run(self, graph: Graph) -> PipelineResult:
        ctx = PassContext(graph)
        stats = {p.label: PassStat(p.label) for p in self.passes}
        step = 0
        graph.refresh_types()
        rounds = 0
        for rounds in range(1, self.max_rounds + 1):
            changed = 0
            for k, p in enumerate(self.passes):
                stat = stats[p.label]
                before = len(ctx.graph.live_nodes())
                if rounds == 1:
                    stat.nodes_before = before
                t0 = time.perf_counter()
                self.progress(f"[round {rounds}, {k + 1}/{len(self.passes)}] {p.label}")
                n = p.run(ctx)
                if n:
                    self._after(ctx.graph, p)
                stat.seconds += time.perf_counter() - t0
                stat.matches += n
                stat.nodes_after = len(ctx.graph.live_nodes())
                changed += n
                if n and self.dump_dir is not None:
                    step += 1
                    save_model(ctx.graph.to_model(), self.dump_dir / f"{step:02d}_{p.name}.onnx",
                               ctx.graph.base_dir)
            if not changed:
                break
        return PipelineResult(ctx.graph, list(stats.values()), ctx.notes, rounds)

    def _after(self, graph: Graph, p: Pass) -> None:
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
