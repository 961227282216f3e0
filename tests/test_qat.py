"""Graphs that already carry Q/DQ (issue 13, item 4): the fusion passes fuse what they see
between Q/DQ-wrapped MatMuls and leave every QuantizeLinear/DequantizeLinear where it was.

Models (tests/models_qat.py): BERT and ViT exported by TorchScript (opset 14, LayerNorm and GELU
decomposed), quantized three ways: ONNX Runtime's ``quantize_static`` in QDQ format, a
pytorch-quantization/ModelOpt-style QAT export (Q on the float weights), and its fp8 variant.
Golden cases: tests/goldens/qat/.

Tolerance: the rewritten model runs the same Q/DQ on the same values, so it matches the input
model to float32 rounding: a fused LayerNorm/Gelu differs in the last bits, which can move a value
across a rounding boundary of the next Q only when it lies within an ulp of one. 1e-4 of each
output's largest magnitude allows one such flip, and nothing systematic.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxpass.api import rewrite
from onnxpass.verify import random_inputs, run
from tests import models
from tests.models_qat import fake_quant, op_counts, ort_qdq, qdq_signature

PIPELINES = ("default", "default,attention=plugin", "default,fp16")
VARIANTS = ("ort", "qat", "fp8")
FUSED = ("LayerNormalization", "Gelu")


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """(model, variant) -> path; variant "float" is the export without Q/DQ."""
    root = tmp_path_factory.mktemp("qat")
    paths: dict[tuple[str, str], Path] = {}
    for name in ("bert", "vit"):
        src = root / f"{name}.onnx"
        models.export(getattr(models, name)(), "torchscript", src)
        paths[name, "float"] = src
        paths[name, "ort"] = ort_qdq(src, root / f"{name}-ort.onnx")
        paths[name, "qat"] = fake_quant(src, root / f"{name}-qat.onnx")
        paths[name, "fp8"] = fake_quant(src, root / f"{name}-fp8.onnx", fp8=True)
    return paths


_rewritten: dict[tuple[Path, str], onnx.ModelProto] = {}


def _rewrite(path: Path, pipeline: str) -> onnx.ModelProto:
    if (path, pipeline) not in _rewritten:
        _rewritten[path, pipeline] = rewrite(onnx.load(str(path)), pipeline)[0]
    return _rewritten[path, pipeline]


def _fusions(model: onnx.ModelProto) -> Counter[str]:
    counts = op_counts(model)
    return Counter({k: counts[k] for k in (*FUSED, "Attention", "AttentionPlugin")})


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["bert", "vit"])
def test_qdq_kept_and_norms_fused(exports: dict[tuple[str, str], Path], name: str,
                                  variant: str, pipeline: str) -> None:
    path = exports[name, variant]
    before = onnx.load(str(path))
    after = _rewrite(path, pipeline)
    want = qdq_signature(before)
    assert sum(want.values()) >= 40  # every MatMul's inputs carry Q/DQ
    assert qdq_signature(after) == want
    # LayerNorm and GELU fuse as in the float model; attention never through a Q/DQ pair.
    plain = _fusions(_rewrite(exports[name, "float"], pipeline))
    got = _fusions(after)
    assert [got[k] for k in FUSED] == [plain[k] for k in FUSED] == [5, 2]
    assert got["Attention"] == got["AttentionPlugin"] == 0
    assert plain["Attention"] + plain["AttentionPlugin"] == 2

    feeds = random_inputs(before, seed=3)
    expected, actual = run(before, feeds), run(after, feeds)
    for k, e in expected.items():
        err = float(np.max(np.abs(e.astype(np.float64) - actual[k]))) / float(np.abs(e).max())
        # fp16 rounds the activations before each Q: some move to the next int8/fp8 step (one
        # step is 1/127 of a tensor's range, 1/8 relative for fp8's 3 mantissa bits), which
        # two layers amplify; float16 itself keeps the float model within 2e-3.
        assert err < (0.25 if "fp16" in pipeline else 1e-4), (k, err)


def test_ort_default_op_types_leave_quantized_decompositions(
        exports: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    """ONNX Runtime's quantizer with its default op types also puts Q/DQ inside the LayerNorm
    and GELU decompositions (on their Add, Mul, Div...): no pattern matches through a Q/DQ pair,
    so nothing fuses, and every Q/DQ stays."""
    path = ort_qdq(exports["bert", "float"], tmp_path / "bert-ort-default.onnx", op_types=None)
    before = onnx.load(str(path))
    after = _rewrite(path, "default")
    assert qdq_signature(after) == qdq_signature(before)
    assert _fusions(after) == Counter()
    feeds = random_inputs(before, seed=3)
    for k, e in run(before, feeds).items():
        np.testing.assert_allclose(run(after, feeds)[k], e, rtol=1e-5, atol=1e-6)


def _explain(passes: str, path: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "onnxpass.cli", "match", "--passes", passes,
                          str(path), "--explain"], capture_output=True, text=True, check=True)
    return out.stdout + out.stderr


def test_attention_and_matmul2d_refuse_with_reasons(exports: dict[tuple[str, str], Path]
                                                    ) -> None:
    """Attention's BMMs read DequantizeLinear outputs: the pattern stops there (it would drop the
    Q/DQ and change the numerics), and the attention part is left as it was. matmul2d refuses
    to put a Reshape between a DQ and its MatMul."""
    path = exports["bert", "qat"]
    text = _explain("attention", path)
    assert "attention/self/MatMul'" in text
    assert "expected Softmax, found DequantizeLinear" in text
    before, after = onnx.load(str(path)), _rewrite(path, "default")
    attn = Counter(n.op_type for n in before.graph.node if "attention/self/MatMul" in n.name
                   or "attention/self/Softmax" in n.name)
    assert attn == Counter(n.op_type for n in after.graph.node
                           if "attention/self/MatMul" in n.name
                           or "attention/self/Softmax" in n.name) == {"MatMul": 4,
                                                                      "Softmax": 2}
    reasons = _explain("matmul2d", onnx_path_after_fold(path))
    assert "x comes from DequantizeLinear" in reasons


def onnx_path_after_fold(path: Path) -> Path:
    """The model after the default pipeline (what matmul2d sees last), saved next to it."""
    out = path.with_name(path.stem + ".default.onnx")
    if not out.exists():
        onnx.save(_rewrite(path, "default"), str(out))
    return out


def test_fold_keeps_qdq_of_constant_weights(exports: dict[tuple[str, str], Path]) -> None:
    """fold and fold_graphsurgeon leave Q(W) -> DQ of constant weights (and ONNX Runtime's
    int8 weight -> DQ) in place."""
    for variant in ("qat", "ort"):
        path = exports["vit", variant]
        before = onnx.load(str(path))
        for passes in ("fold", "fold_graphsurgeon"):
            after = rewrite(onnx.load(str(path)), passes)[0]
            assert qdq_signature(after) == qdq_signature(before), (variant, passes)
