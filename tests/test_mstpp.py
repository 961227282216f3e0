"""A tiny MST++ (tests/models_mstpp.py) exported by TorchScript and dynamo: every F.normalize of
Q and K becomes an L2NormPlugin, every spectral attention (with its per-head learnable rescale)
an Attention node, every LayerNorm and GELU is fused by their passes, and the outputs do not
move. Expected counts come from running the torch model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

import onnxpass
from onnxpass.plugins.base import DOMAIN
from onnxpass.verify import error_stats, run
from tests.models import torch_counts
from tests.models_attention import attention_count
from tests.models_mstpp import l2norm_calls

RTOL, ATOL = 1e-5, 1e-5  # float32; atol for elements near zero
# dynamo writes F.normalize the same at opset 18 and 20: tests/models.py's dynamo18 adds nothing.
EXPORTERS = ("torchscript", "dynamo")
# Left behind by any unfused instance: F.normalize's ReduceL2/Clip/Expand, LayerNorm's
# ReduceMean, GELU's Erf.
DECOMPOSED = {"ReduceL2", "ReduceSum", "Clip", "Expand", "ReduceMean", "Erf"}


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mstpp_fuses_every_instance(mstpp_exports, exporter: str) -> None:  # type: ignore
    built, get = mstpp_exports
    norms, want = l2norm_calls(built)["F.normalize"], torch_counts(built)
    assert (norms, want.layernorm, want.gelu) == (6, 3, 9)
    original = onnx.load(str(get(exporter)))
    rewritten, _ = onnxpass.rewrite(onnx.load(str(get(exporter))),
                                    "fold,l2norm,layernorm,gelu,attention")
    onnx.checker.check_model(rewritten, full_check=True)

    ops = Counter((n.domain, n.op_type) for n in rewritten.graph.node)
    assert ops[(DOMAIN, "L2NormPlugin")] == norms
    assert ops[("", "LayerNormalization")] == want.layernorm
    assert ops[("", "Gelu")] == want.gelu
    assert ops[("", "Attention")] == attention_count(built) == 3
    assert not {op for _, op in ops} & DECOMPOSED, ops

    feeds = {"rgb": built.args[0].numpy()}
    want_y, got_y = run(original, feeds)["hsi"], run(rewritten, feeds)["hsi"]
    stats = error_stats("hsi", want_y, got_y, RTOL, ATOL)
    assert stats.within, stats.line()
    # Relative to the output's scale too: max |rewritten - original| <= 1e-5 max |original|.
    assert stats.abs_max <= 1e-5 * np.abs(want_y).max(), stats.line()
