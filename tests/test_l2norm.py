"""l2norm beyond the goldens: special rows (zero, underflowing, overflowing, inf, NaN) for every
form, why LpNormalization is not used, and CLIPModel's projection normalization."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

import onnxpass
from onnxpass.plugins.base import DOMAIN
from onnxpass.verify import compare_models, error_stats, random_inputs, run
from tests.models import Built, _image, _tokens, _wrap, lazy_exports
from tests.models_mstpp import l2norm_calls

RTOL, ATOL = 1e-5, 1e-5
# dynamo writes F.normalize the same at opset 18 and 20: tests/models.py's dynamo18 adds nothing.
EXPORTERS = ("torchscript", "dynamo")

# Rows that make the forms differ: all zero, sum(x^2) underflowing to 0, overflowing to inf,
# an inf, a NaN, an ordinary row.
ROWS = np.array([[0, 0, 0, 0], [1e-30, 0, 0, -1e-30], [1e20, 1, 0, 0], [np.inf, 1, 0, 0],
                 [np.nan, 1, 0, 0], [3, 4, 0, 1]], np.float32)

FORMS = {
    "plain": "n = ReduceL2 <axes = [-1]> (x)\n  y = Div (x, n)",
    "pow_half": "sq = Mul (x, x)\n  s = ReduceSum (sq, axes)\n  n = Pow (s, half)\n"
                "  y = Div (x, n)",
    "clip": "n = ReduceL2 <axes = [-1]> (x)\n  d = Clip (n, eps)\n  y = Div (x, d)",
    "max": "n = ReduceL2 <axes = [-1]> (x)\n  d = Max (n, eps)\n  y = Div (x, d)",
    "add": "sq = Mul (x, x)\n  s = ReduceSum (sq, axes)\n  se = Add (s, eps)\n  d = Sqrt (se)\n"
           "  y = Div (x, d)",
    "tf": "sq = Mul (x, x)\n  s = ReduceSum (sq, axes)\n  m = Max (s, eps)\n  r = Sqrt (m)\n"
          "  inv = Reciprocal (r)\n  y = Mul (x, inv)",
}


def _model(body: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        'g (float[6,4] x) => (float[6,4] y) <float eps = {1e-12}, float half = {0.5}, '
        f'int64[1] axes = {{-1}}> {{\n  {body}\n}}')


@pytest.mark.parametrize("form", list(FORMS))
def test_special_rows_compute_what_the_original_did(form: str) -> None:
    original = _model(FORMS[form])
    rewritten, _ = onnxpass.rewrite(_model(FORMS[form]), "l2norm")
    assert [n.op_type for n in rewritten.graph.node] == ["L2NormPlugin"]
    want, got = run(original, {"x": ROWS})["y"], run(rewritten, {"x": ROWS})["y"]
    with np.errstate(invalid="ignore"):  # inf - inf while measuring
        stats = error_stats("y", want, got, RTOL, 1e-30)
    # Same NaN positions, same infinities, finite values within tolerance.
    assert stats.within, f"\n{want}\n{got}"


def test_lp_normalization_is_not_x_over_its_norm() -> None:
    """Why the pass never emits LpNormalization: ONNX Runtime gives 0 for a zero row (TensorRT's
    importer divides it by 1), x / ||x|| gives NaN; an underflowing row gives inf."""
    lp = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\n'
                                 'g (float[6,4] x) => (float[6,4] y) {\n'
                                 '  y = LpNormalization <axis = -1, p = 2> (x)\n}')
    want, got = run(_model(FORMS["plain"]), {"x": ROWS})["y"], run(lp, {"x": ROWS})["y"]
    assert np.isnan(want[0]).all() and (got[0] == 0).all()
    assert np.isinf(want[1, 0]) and got[1, 0] == 0
    assert np.allclose(want[5], got[5])


# ---- CLIPModel: the image and text embeddings are divided by their norms ------------------------

def clip_model() -> Built:
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=16, eos_token_id=2)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, image_size=32, patch_size=8)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ids, mask = _tokens(8, 64)
    return _wrap(CLIPModel(cfg), (ids, _image(32), mask),
                 ["input_ids", "pixel_values", "attention_mask"],
                 ["logits_per_image", "text_embeds", "image_embeds"])


@pytest.fixture(scope="session")
def clip_exports(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    built = clip_model()
    return built, lazy_exports(built, tmp_path_factory.mktemp("clip_model"), "clip_model")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_clip_model_embedding_norms_fuse(clip_exports, exporter: str) -> None:  # type: ignore
    built, get = clip_exports
    want = sum(l2norm_calls(built).values())
    assert want == 2  # image_embeds / norm, text_embeds / norm
    original = onnx.load(str(get(exporter)))
    rewritten, _ = onnxpass.rewrite(onnx.load(str(get(exporter))), "l2norm")
    onnx.checker.check_model(rewritten, full_check=True)
    ops = Counter((n.domain, n.op_type) for n in rewritten.graph.node)
    assert ops[(DOMAIN, "L2NormPlugin")] == want, ops
    stats = compare_models(original, rewritten, random_inputs(original), RTOL, ATOL)
    assert all(s.within for s in stats), "\n".join(s.line() for s in stats)
