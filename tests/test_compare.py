"""``onnxpass compare``: statistics, top-k agreement, JSON, exit codes, engines without TensorRT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxpass.cli import main
from onnxpass.compare import topk_agreement

CLASSIFIER = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,16] x) => (float[N,8] logits) <float[16,8] w = {W}> {
  logits = MatMul (x, w)
}"""


def _save(path: Path, scale: float) -> Path:
    w = np.random.default_rng(0).standard_normal(128).astype(np.float32) * scale
    weights = "{" + ",".join(map(str, w)) + "}"
    onnx.save(onnx.parser.parse_model(CLASSIFIER.replace("{W}", weights)), path)
    return path


def test_same_model_within_and_json(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a = _save(tmp_path / "a.onnx", 1.0)
    assert main(["compare", str(a), str(a), "--dim", "N=32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["outputs"][0]["abs_max"] == 0
    assert out["outputs"][0]["top1"] == 1.0 and out["outputs"][0]["top5"] == 1.0


def test_different_models_fail_and_print(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a, b = _save(tmp_path / "a.onnx", 1.0), _save(tmp_path / "b.onnx", 1.01)
    assert main(["compare", str(a), str(b), "--seed", "3"]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith("logits: abs mean") and "MISMATCH" in line and "top-1 agreement" in line
    assert main(["compare", str(a), str(b), "--rtol", "2e-2"]) == 0


def test_npz_inputs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a = _save(tmp_path / "a.onnx", 1.0)
    np.savez(tmp_path / "in.npz", x=np.ones((3, 16), np.float32))
    assert main(["compare", str(a), str(a), "--inputs", str(tmp_path / "in.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][0]["name"] == "logits"


def test_engine_without_tensorrt(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a = _save(tmp_path / "a.onnx", 1.0)
    (tmp_path / "m.plan").write_bytes(b"engine")
    assert main(["compare", str(a), str(tmp_path / "m.plan")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TensorRT is not installed" in err
    assert "pip install tensorrt" in err


@pytest.mark.parametrize("k,expected", [(1, 0.5), (5, 1.0)])
def test_topk(k: int, expected: float) -> None:
    a = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]], np.float32)
    b = np.array([[0, 1, 2, 3, 5, 4], [5, 4, 3, 2, 1, 0]], np.float32)
    assert topk_agreement(a, b, k) == expected
    assert topk_agreement(a[0], b[0], k) is None


def test_cosine_similarity_of_embeddings() -> None:
    from onnxpass.compare import OutputComparison, cosine_similarity
    from onnxpass.verify import error_stats

    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3, 8)).astype(np.float32)
    b = a.copy()
    b[2] = -b[2]  # one sample points the other way
    lo, mean = cosine_similarity(a, b)  # type: ignore[misc]
    assert lo == pytest.approx(-1.0) and mean == pytest.approx(0.5)
    assert cosine_similarity(a, a[:, :2]) is None  # shapes differ
    assert cosine_similarity(np.zeros((2, 3), np.float32), a[:2, 0, :3]) is None  # zero sample
    line = OutputComparison(error_stats("e", a, b, 1e-3, 1e-3), cosine=(lo, mean)).line()
    assert "cosine min -1.0000 mean 0.5000" in line
