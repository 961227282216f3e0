"""``onnxpass debug precision`` on a real export where converting everything to float16 fails.

A ViT (tests/models.py) whose patch embedding is scaled by 300, as in trained ViTs with massive
activations: the hidden states reach the hundreds, and a decomposed LayerNorm's (x - mean)^2
overflows float16 (TorchScript writes Pow/ReduceMean/Add/Sqrt/Div). ``fp16=all`` fails 1e-2; the
default ``mixed`` form (normalizations in float32) passes; the search, starting from ``all``,
pins the variance nodes of the LayerNorms that overflow and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

import onnxpass
from onnxpass.cli import main
from onnxpass.debug_precision import simulate_float16
from onnxpass.passes.fp16 import Float16, read_pins
from onnxpass.verify import random_inputs, run, scaled_stats
from tests.models import MODELS, export

TOL = 1e-2


@pytest.fixture(scope="module")
def vit_outliers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = MODELS["vit"]()
    with torch.no_grad():
        for name, p in built.module.named_parameters():
            if "patch_embeddings" in name:
                p.mul_(300.0)
    path = tmp_path_factory.mktemp("outliers") / "vit_outliers.onnx"
    export(built, "torchscript", path)
    return path


def worst(model: onnx.ModelProto, form: str, pins: Path | None = None) -> float:
    """Max over outputs of max |float16 - float32| / max |float32| (float16 rounding simulated)."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    half, _ = onnxpass.rewrite(work, [Float16(form, pins=str(pins) if pins else None)])
    feeds = random_inputs(model, seed=0)
    want, got = run(model, feeds), run(simulate_float16(half), feeds)
    return max(scaled_stats(k, want[k], got[k], TOL)[1] for k in want)


def test_pins_found_on_a_real_export(vit_outliers: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load(str(vit_outliers))
    assert worst(model, "all") > 10 * TOL  # float16 (x - mean)^2 overflows
    assert worst(model, "mixed") < TOL
    pins = tmp_path / "pins.txt"
    argv = ["debug", "precision", str(vit_outliers), "--tol", str(TOL), "--form", "all", "-o",
            str(pins)]
    assert main(argv) == 0
    assert "use it: onnxpass build" in capsys.readouterr().out
    ops, nodes, patterns = read_pins(pins)
    assert not ops and not patterns and nodes
    kinds = {n.name: n.op_type for n in model.graph.node if n.name in nodes}
    assert kinds.keys() == nodes  # every pin names a node of the model
    assert set(kinds.values()) <= {"Pow", "ReduceMean", "Add", "Sqrt", "Div", "Sub"}, kinds
    assert all("layernorm" in name for name in nodes), nodes
    assert worst(model, "all", pins) < TOL
