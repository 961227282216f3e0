"""--target trt-X.Y: the passes' forms fit what that TensorRT's ONNX parser imports.

Goldens (tests/goldens/targets) pin the form each pass takes per target; the exports below run the
default pipeline on real ViT and BERT graphs per target, check every op the output holds against
that version's operator table (onnxpass/targets.py), and run it in ONNX Runtime against the input.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from onnxpass.errors import OnnxpassError
from onnxpass.passes.manager import Pipeline
from onnxpass.plugins.base import DOMAIN
from onnxpass.targets import DEFAULT_TARGET, OPS_8_6, OPS_10_0, parse_target
from onnxpass.verify import compare_models, random_inputs

ROOT = Path(__file__).resolve().parent.parent
GOLDENS = sorted((ROOT / "tests" / "goldens" / "targets").glob("*.golden"))


@pytest.mark.parametrize("path", GOLDENS, ids=[p.stem for p in GOLDENS])
def test_golden(path: Path, golden: Callable[[Path], None]) -> None:
    golden(path)


def _forms(target: str, spec: str = "default") -> dict[str, str | None]:
    return {p.name: p.form for p in Pipeline(spec, target=target).passes}


def test_forms_per_target() -> None:
    f = _forms("trt-8.6")
    assert (f["layernorm"], f["gelu"], f["attention"], f["rmsnorm"], f["rotary"]) == \
        ("std", "plugin", "trt", "plugin", "plugin")
    f = _forms("trt-10.0")
    assert (f["gelu"], f["attention"], f["rmsnorm"]) == ("std", "trt", "plugin")
    f = _forms("trt-10.14")
    assert (f["attention"], f["rmsnorm"], f["rotary"]) == ("std", "plugin", "plugin")
    assert set(_forms("trt-10.15").values()) <= {"std", None}  # everything native
    assert _forms("trt-8.4")["layernorm"] == "plugin"
    # a form the user names wins where the target imports it; plugin forms are never changed
    assert _forms("trt-8.6", "default,attention=plugin")["attention"] == "plugin"
    assert _forms(DEFAULT_TARGET) == _forms("trt-10.15")


def test_named_std_form_the_target_cannot_import_is_an_error() -> None:
    with pytest.raises(OnnxpassError, match=r"attention=std emits ONNX Attention, which "
                                            r"TensorRT 8\.6 does not import \(it does since "
                                            r"10\.14\): use attention=trt"):
        Pipeline("default,attention=std", target="trt-8.6")
    with pytest.raises(OnnxpassError, match="gelu=std emits ONNX Gelu"):
        Pipeline("gelu=std", target="trt-9.2")


def test_target_spellings_and_table() -> None:
    assert parse_target("trt-8.6").max_opset == 17
    assert parse_target("8.6.1").version == (8, 6)
    assert parse_target("TensorRT-10.15").max_opset == 24
    assert parse_target("trt-10.7").max_opset == 20  # between entries: the older one's facts
    t = parse_target("trt-11.4")
    assert t.max_opset == 24 and "newer than the newest import table" in t.note
    for bad in ("trt-7.1", "eight", "trt-10"):
        with pytest.raises(OnnxpassError, match="--target"):
            parse_target(bad)
    assert "Attention" not in OPS_8_6 and "CastLike" not in OPS_8_6 and "Gelu" in OPS_10_0


def test_cli_target_errors_and_list(tmp_path: Path) -> None:
    model = ROOT / "examples" / "vit_tiny.onnx"
    out = tmp_path / "out.onnx"
    p = subprocess.run([sys.executable, "-m", "onnxpass.cli", "run", str(model), "--target",
                        "trt-7.0", "-o", str(out)], capture_output=True, text=True)
    assert p.returncode == 2 and not out.exists()
    assert p.stderr.strip().count("\n") == 0 and "--target trt-7.0" in p.stderr
    p = subprocess.run([sys.executable, "-m", "onnxpass.cli", "run", str(model), "--target",
                        "trt-8.6", "--passes", "default,attention=std", "-o", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "attention=std emits ONNX Attention" in p.stderr
    p = subprocess.run([sys.executable, "-m", "onnxpass.cli", "list"], capture_output=True,
                       text=True, check=True)
    assert f"default {DEFAULT_TARGET}" in p.stdout and "trt-8.6   opset 17" in p.stdout


def _standard_ops(m: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in m.graph.node if n.domain in ("", "ai.onnx")}


@pytest.mark.parametrize("model", ["vit", "bert"])
@pytest.mark.parametrize("target", ["trt-8.6", "trt-10.0", "trt-10.14"])
def test_default_pipeline_fits_the_target(model: str, target: str, tmp_path: Path,
                                          real_models: Any) -> None:
    """A TorchScript opset-14 export through ``default`` at each target: only ops that
    TensorRT's operator table lists (or onnxpass plugin nodes), no opset past its highest,
    ONNX Runtime loads it and computes what the input does."""
    src = real_models.export(model, "torchscript")
    assert isinstance(src, Path), src
    out = tmp_path / "out.onnx"
    result = Pipeline("default", target=target).rewrite_file(src, out)
    m = onnx.load(str(out))
    t = parse_target(target)
    ops = _standard_ops(m)
    assert not [op for op in ops if not t.imports(op)], ops
    if target == "trt-8.6":
        assert ops <= OPS_8_6
    plugins = {n.op_type for n in m.graph.node if n.domain == DOMAIN}
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    assert opset <= t.max_opset
    assert ("Attention" in ops) == (target == "trt-10.14")  # 10.14 imports ONNX Attention
    assert ("Gelu" in ops) == (target != "trt-8.6")
    assert ("GeluPlugin" in plugins) == (target == "trt-8.6")
    assert "LayerNormalization" in ops
    assert sum(s.matches for s in result.stats if s.name.startswith("attention")) > 0
    original = onnx.load(str(src))
    feeds = random_inputs(original, seed=0, dims={"batch": 2})
    stats = compare_models(original, m, feeds, rtol=1e-4, atol=1e-5)
    assert all(s.within for s in stats), [s.line() for s in stats]
