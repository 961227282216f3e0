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
