"""masked_softmax and mask2pos on real exports: every instance torch computes is fused, outputs
unchanged.

The AnchorDETR-style model (tests/models_anchordetr.py) has every form the passes target: the
additive and the -inf masks, AnchorDETR's view - masked_fill - view, a mask expanded to full size,
DETR's and AnchorDETR's mask2pos, and an unmasked softmax that must stay. The transformers models
of tests/models.py add SDPA's bool masks (BERT, CLIP text) and DETR's sine position embedding.
Expected counts come from running the torch model (models_anchordetr.torch_counts).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

import onnxpass
from onnxpass.plugins.base import DOMAIN
from onnxpass.verify import compare_models, random_inputs
from tests.models_anchordetr import AnchorDETRExports, Counts, torch_counts

EXPORTERS = ("torchscript", "dynamo")
RTOL, ATOL = 1e-5, 1e-5


def ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type if n.domain in ("", DOMAIN) else f"{n.domain}.{n.op_type}"
                   for n in model.graph.node)


def rewrite(model: onnx.ModelProto, passes: str) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The rewritten copy of ``model``, checked, and how many rewrites each pass made."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    rewritten, result = onnxpass.rewrite(copy, passes)
    onnx.checker.check_model(rewritten, full_check=True)
    return rewritten, {s.name.partition("=")[0]: s.matches for s in result.stats}


def assert_same_outputs(original: onnx.ModelProto, rewritten: onnx.ModelProto,
                        feeds: list[dict[str, np.ndarray]]) -> None:
    for f in feeds:
        stats = compare_models(original, rewritten, f, rtol=RTOL, atol=ATOL)
        assert all(s.within for s in stats), "\n".join(s.line() for s in stats)


def assert_plugins(rewritten: onnx.ModelProto, want: Counts, mask2pos: bool = True) -> None:
    got = ops(rewritten)
    assert got["MaskedSoftmaxPlugin"] == want.masked_softmax, got
    assert got["Softmax"] == want.softmax - want.masked_softmax, got  # unmasked ones stay
    if mask2pos:
        assert (got["Mask2PosPlugin"], got["CumSum"]) == (want.mask2pos, 0), got


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_anchordetr_plugins(anchordetr: AnchorDETRExports, exporter: str) -> None:
    want = anchordetr.counts
    assert (want.masked_softmax, want.softmax, want.mask2pos) == (4, 5, 4)  # the model's design
    original = onnx.load(str(anchordetr.export(exporter)))
    rewritten, _ = rewrite(original, "masked_softmax,mask2pos")
    assert_plugins(rewritten, want)
    assert_same_outputs(original, rewritten, anchordetr.feeds())


# Of the 5 softmaxes, 3 are attentions (each RCDA's column weights times V, and the decoder's
# self-attention); RCDA's row weights then contract another axis of that result, which no
# attention op expresses, and are masked softmaxes.
ATTENTIONS = 3


@pytest.mark.parametrize("pipeline", ["default", "plugins"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_anchordetr_pipelines(anchordetr: AnchorDETRExports, exporter: str, pipeline: str) -> None:
    """Every attention and every masked softmax fused in the shipped pipelines; TorchScript's
    mask.expand(scores.shape) needs shape_of to free the scores."""
    original = onnx.load(str(anchordetr.export(exporter)))
    rewritten, _ = rewrite(original, pipeline)
    got = ops(rewritten)
    plugin = pipeline == "plugins"
    assert got["AttentionPlugin" if plugin else "Attention"] == ATTENTIONS, got
    if plugin:
        assert got["MaskedSoftmaxPlugin"] == anchordetr.counts.masked_softmax - 2, got
        assert (got["Mask2PosPlugin"], got["CumSum"]) == (anchordetr.counts.mask2pos, 0), got
    assert_same_outputs(original, rewritten, anchordetr.feeds())


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_anchordetr_std_drops_full_size_masks(anchordetr: AnchorDETRExports,
                                              exporter: str) -> None:
    original = onnx.load(str(anchordetr.export(exporter)))
    rewritten, matches = rewrite(original, "masked_softmax=std")
    assert matches["masked_softmax"] == anchordetr.counts.expanded == 2
    assert ops(rewritten)["Softmax"] == anchordetr.counts.softmax
    _, again = rewrite(rewritten, "masked_softmax=std")
    assert again["masked_softmax"] == 0, "an expanded mask is left"
    assert_same_outputs(original, rewritten, anchordetr.feeds())


# BERT and CLIP text: SDPA with a bool padding (and causal) mask. DETR: the sine position
# embedding's two mask2pos. (DETR's torch run skips its all-ones attention mask, which the
# exports keep, so its masked softmaxes have no torch count to check against.)
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["bert", "clip_text", "detr"])
def test_transformers_models(real_models, name: str,  # type: ignore[no-untyped-def]
                             exporter: str) -> None:
    path = real_models.export(name, exporter)
    if isinstance(path, str):
        pytest.skip(path)
    built = real_models.built(name)
    want = torch_counts(built.module, built.args)
    original = onnx.load(str(path))
    rewritten, _ = rewrite(original, "mask2pos" if name == "detr" else "masked_softmax,mask2pos")
    got = ops(rewritten)
    if name == "detr":
        assert (got["Mask2PosPlugin"], got["CumSum"]) == (want.mask2pos, 0) == (2, 0), got
    else:
        assert want.masked_softmax == 2
        assert_plugins(rewritten, want)
    assert_same_outputs(original, rewritten, [random_inputs(original)])


# ---- what goldens cannot express: integer masks beyond 0/1, float16 scores ------------------

SCALED = """<ir_version: 8, opset_import: ["" : {opset}]>
g ({t}[2,2,3,6] x, int64[2,1,1,6] mask, int64[2,4,6] count) => ({t}[2,2,3,6] y, float[2,4,6] pos)
  <float one = {{1.0}}, float fill = {{-1000.0}}, int64 a1 = {{1}}, int64[1] start = {{-1}},
   int64[1] end = {{9223372036854775807}}, int64[1] ax1 = {{1}}, float eps = {{0.5}}> {{
  mf = Cast <to = {to}> (mask)
  inv = Sub (one, mf)
  bias = Mul (inv, fill)
  z = Add (x, bias)
  y = Softmax <axis = -1> (z)
  f = Cast <to = 1> (count)
  c = CumSum (f, a1)
  last = Slice (c, start, end, ax1)
  d = Add (last, eps)
  pos = Div (c, d)
}}"""


@pytest.mark.parametrize("dtype,opset", [("float", 14), ("float16", 17)])
def test_plugins_keep_the_formula_for_any_integer_mask(dtype: str, opset: int) -> None:
    """(1 - m) * fill and cumsum(m) use the mask's values as numbers: a mask holding 2 or -1
    gives what the original gives (the plugin is not a boolean mask)."""
    to = onnx.TensorProto.FLOAT if dtype == "float" else onnx.TensorProto.FLOAT16
    model = onnx.parser.parse_model(SCALED.format(t=dtype, opset=opset, to=to))
    for t in model.graph.initializer:  # the text syntax has no float16 literals
        if t.name in ("one", "fill") and dtype == "float16":
            t.CopyFrom(onnx.numpy_helper.from_array(
                onnx.numpy_helper.to_array(t).astype(np.float16), t.name))
    rewritten, matches = rewrite(model, "masked_softmax,mask2pos")
    # (canonical: the runner's, before the first pattern pass)
    assert matches == {"canonical": 0, "masked_softmax": 1, "mask2pos": 1}, matches
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 2, 3, 6)).astype(np.float32 if dtype == "float"
                                                             else np.float16),
             "mask": rng.integers(-1, 3, (2, 1, 1, 6)), "count": rng.integers(0, 3, (2, 4, 6))}
    assert_same_outputs(model, rewritten, [feeds])
