"""matmul2d beyond its goldens: on real exports every linear layer applied to a 3-D or 4-D
activation becomes a Gemm (the count comes from running the torch model), bit for bit the same
outputs; a MatMul whose activation has unknown rank is left alone."""

from __future__ import annotations

import pytest

from onnxpass.passes.matmul2d import MatMul2D
from onnxpass.patterns import apply_rules, explain
from tests.helpers import graph, ops
from tests.models import MODELS
from tests.models_projections import projection_counts, rewrite_checked

EXPORTERS = ("torchscript", "dynamo")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_real_model_every_linear_becomes_a_gemm(real_models, name: str, exporter: str) -> None:
    path = real_models.export(name, exporter)
    if isinstance(path, str):
        pytest.skip(path)
    want = projection_counts(real_models.built(name)).linear_nd
    _, _, rewrites = rewrite_checked(path, "matmul2d")
    assert rewrites["matmul2d"] == want


def test_unknown_rank_is_left_alone() -> None:
    g = graph("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[40] x, int64[K] s) => (float y) {
        r = Reshape (x, s)
        c = Constant <value = float[8,4] {0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,
                                          21,22,23,24,25,26,27,28,29,30,31}> ()
        y = MatMul (r, c)
    }""")
    rules = MatMul2D().rules()
    assert apply_rules(g, rules, "matmul2d") == 0 and "Gemm" not in ops(g)
    (attempt,) = [a for a in explain(g, rules) if a.node.op_type == "MatMul"]
    assert "rank None, not 3 or 4" in attempt.reason
