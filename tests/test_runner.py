"""The one pipeline runner (onnxpass/passes/manager.py): options through the spec, ``--pins``
and its alias, per-instance stats, a pipeline that does not converge says so; fp16 and bf16 are
one class."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from onnxpass.errors import OnnxpassError
from onnxpass.graph import Node
from onnxpass.passes.base import Pass, PassContext, registry
from onnxpass.passes.lowprec import BFloat16, Float16, LowPrecision
from onnxpass.passes.manager import Pipeline, parse_pipeline
from tests.helpers import computed_types, toy_model

F, H = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


class _Restless(Pass):
    """Replaces the Relu by a fresh copy every time: always one change."""

    name = "restless"
    summary = "never converges"

    def run(self, ctx: PassContext) -> int:
        g = ctx.graph
        relu = next(n for n in g.nodes if n.op_type == "Relu")
        g.replace([relu], relu.outputs, [Node("Relu", relu.inputs, ["r"], name=relu.name)], ["r"])
        return 1


def test_a_pipeline_that_does_not_converge_says_so() -> None:
    _, result = Pipeline([_Restless()], max_rounds=3).rewrite(toy_model())
    assert not result.converged and result.rounds == 3
    assert "pipeline did not converge after 3 rounds" in result.notes[-1]
    _, calm = Pipeline("noop").rewrite(toy_model())
    assert calm.converged and not calm.notes


def test_stats_are_per_pass_instance() -> None:
    _, result = Pipeline([_Restless(), _Restless()], max_rounds=2).rewrite(toy_model())
    assert [(s.name, s.matches) for s in result.stats] == [("restless", 2), ("restless", 2)]


def test_pins_through_the_spec_and_the_options(tmp_path: Path) -> None:
    pins = tmp_path / "pins.txt"
    pins.write_text("op:Exp\n")
    for spec, options in [(f"fp16:pins={pins}", None), ("fp16", {"pins": str(pins)})]:
        model, _ = Pipeline(spec, options).rewrite(toy_model())
        assert computed_types(model) == {"Relu": H, "Exp": F, "Softmax": F}
    with pytest.raises(OnnxpassError, match="which does not run here"):
        parse_pipeline("cleanup", {"pins": str(pins)})
    with pytest.raises(OnnxpassError, match="which does not run here"):
        parse_pipeline(f"noop:pins={pins},fp16")  # options name their pass
    with pytest.raises(OnnxpassError, match="KEY=VALUE"):
        parse_pipeline("fp16:pins")


def test_pins_flag_and_its_alias(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from onnxpass.cli import main

    src = tmp_path / "toy.onnx"
    onnx.save(toy_model(), src)
    pins = tmp_path / "pins.txt"
    pins.write_text("op:Exp\n")
    for flag in ("--pins", "--fp16-pins"):
        out = tmp_path / f"out{flag}.onnx"
        capsys.readouterr()
        assert main(["run", str(src), "--passes", "bf16" if flag == "--pins" else "fp16", flag,
                     str(pins), "-o", str(out), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["converged"] is True
        types = computed_types(onnx.load(str(out)))
        assert types["Exp"] == F and types["Relu"] != F  # the pins reached bf16 and fp16 alike


def test_fp16_and_bf16_are_one_class() -> None:
    fp16, bf16 = registry()["fp16"], registry()["bf16"]
    assert (fp16, bf16) == (Float16, BFloat16)
    assert issubclass(fp16, LowPrecision) and issubclass(bf16, LowPrecision)
    assert not issubclass(bf16, fp16) and not issubclass(fp16, bf16)
    # the subclasses only name a target: all behaviour is LowPrecision's
    for cls in (fp16, bf16):
        assert set(vars(cls)) - {"__module__", "__doc__", "__qualname__"} <= {
            "name", "summary", "target", "__firstlineno__", "__static_attributes__"}
    assert (Float16().target, BFloat16().target) == (H, onnx.TensorProto.BFLOAT16)


class _Counting(Pass):
    """Changes nothing; counts its runs."""

    name = "counting"
    summary = "idle"

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def run(self, ctx: PassContext) -> int:
        self.runs += 1
        return 0


class _Twice(Pass):
    """Changes the graph in its first two runs (a fresh Relu), then nothing."""

    name = "twice"
    summary = "two changes"

    def __init__(self) -> None:
        super().__init__()
        self.left = 2

    def run(self, ctx: PassContext) -> int:
        if not self.left:
            return 0
        self.left -= 1
        return _Restless().run(ctx)


def test_an_idle_pass_is_not_run_again_until_the_graph_changed() -> None:
    """A pass that found nothing runs again only after another pass changed the graph; its
    skipped rounds show in its stats, and the table's nodes before/after are its first run's."""
    before, after = _Counting(), _Counting()
    _, result = Pipeline([before, _Twice(), after]).rewrite(toy_model())
    # round 1: before, twice (change), after; round 2: before (changed since), twice (change),
    # after; round 3: before (changed since), twice (nothing), after (idle since) -> converged
    assert result.converged and result.rounds == 3
    assert (before.runs, after.runs) == (3, 2)
    stat = result.stats[2]
    assert [r.skipped for r in stat.rounds] == [False, False, True] and stat.runs == 2
    assert [r.matches for r in result.stats[1].rounds] == [1, 1, 0]
    first = result.stats[1].rounds[0]
    assert (result.stats[1].nodes_before, result.stats[1].nodes_after) == \
        (first.nodes_before, first.nodes_after)


def test_run_json_times_every_stage(tmp_path: Path) -> None:
    from onnxpass.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(toy_model(), str(src))
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", "--passes", "noop,cse", str(src), "-o", str(tmp_path / "o.onnx"),
                     "--json"]) == 0
    summary = json.loads(buf.getvalue())
    for key in ("load_seconds", "passes_seconds", "save_seconds", "total_seconds"):
        assert summary[key] >= 0
    assert summary["total_seconds"] >= summary["passes_seconds"]
    for p in summary["passes"]:
        assert {"seconds", "check_seconds", "rounds", "nodes_before", "nodes_after"} <= set(p)
        assert all({"round", "matches", "skipped"} <= set(r) for r in p["rounds"])
