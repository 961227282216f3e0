"""add_bias_transpose beyond its goldens: on real exports every linear(x).view(B, S, H, d)
.transpose(1, 2) the torch model computes is fused (plugin form), or has its bias in a Gemm
(std form, then matmul2d takes the other linears), outputs unchanged; the plugin spec's shapes."""

from __future__ import annotations

import onnx
import pytest

from onnxpass.graph import Graph
from onnxpass.passes.add_bias_transpose import AddBiasTranspose
from onnxpass.patterns import explain
from onnxpass.plugins import get_plugin
from tests.models import MODELS
from tests.models_projections import (
    merged_attention,
    merged_attention_export,
    projection_counts,
    rewrite_checked,
)

EXPORTERS = ("torchscript", "dynamo")
# DETR adds a position embedding to the encoder's queries and keys and the cross-attention's
# keys; in the TorchScript export ONNX's inference leaves the shape of hidden + pos unknown, so
# it does not prove that the sum is the (B, S) the Reshape's target is built from. The check
# then asks for symbolic dims (Graph.prove_dims), which prove it: all 9 fuse.
SYMBOLIC = {("detr", "torchscript"): 3}


@pytest.mark.parametrize("form", ("plugin", "std"))
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_real_model_every_head_split(real_models, name: str, exporter: str, form: str) -> None:
    path = real_models.export(name, exporter)
    if isinstance(path, str):
        pytest.skip(path)
    want = projection_counts(real_models.built(name))
    splits = want.head_splits
    _, rewritten, rewrites = rewrite_checked(path, f"add_bias_transpose={form},matmul2d")
    assert rewrites["add_bias_transpose"] == splits
    assert rewrites["matmul2d"] == want.linear_nd - (splits if form == "std" else 0)
    plugins = [n for n in rewritten.graph.node if n.op_type == "AddBiasTransposePlugin"]
    assert len(plugins) == (splits if form == "plugin" else 0)


def test_detr_torchscript_proves_b_s_symbolically(real_models, monkeypatch) -> None:
    """With ONNX's dims alone, 3 of DETR's head splits are refused as "may not keep (B, S)";
    the check asks for symbolic dims and all 9 match."""
    path = real_models.export("detr", "torchscript")
    if isinstance(path, str):
        pytest.skip(path)
    g = Graph(onnx.load(str(path)))
    g.refresh_types()
    rules = AddBiasTranspose("plugin").rules()

    def checked(graph: Graph) -> tuple[int, list[str]]:
        attempts = explain(graph, rules)
        return sum(a.matched for a in attempts), [
            a.reason for a in attempts if not a.matched and a.reason.startswith("check failed")]

    with monkeypatch.context() as mp:
        mp.setattr(g, "prove_dims", lambda: False)
        matched, refused = checked(g)
    assert matched == 9 - SYMBOLIC[("detr", "torchscript")]
    assert len(refused) == SYMBOLIC[("detr", "torchscript")]
    assert all("may not keep (B, S)" in r for r in refused), refused
    assert checked(g) == (9, [])


def test_plugin_output_shapes() -> None:
    spec = get_plugin("AddBiasTransposePlugin")
    assert spec.output_shapes([["B", "S", 32], [32]], {"num_heads": 4, "perm": [0, 2, 1, 3]}) \
        == [["B", 4, "S", 8]]
    assert spec.output_shapes([["B", "S", 32], [32]], {"num_heads": 4, "perm": [0, 2, 3, 1]}) \
        == [["B", 4, 8, "S"]]


@pytest.mark.parametrize("exporter, form", [("torchscript", "plugin"), ("dynamo", "std")])
def test_anchordetr_style_in_pipeline_order(tmp_path_factory, exporter: str, form: str) -> None:
    """Q and K project x + a repeated position embedding, with weights and biases chunked from
    merged parameters. Alone, the pass proves little: in TorchScript's graph inference knows
    nothing of (B, S) of x + pos (fold resolves it), in dynamo's the chunks are Splits, not
    constants (const_slice folds them). In the recommended order every head split and every
    linear is fused."""
    want = projection_counts(merged_attention())
    path = merged_attention_export(exporter, tmp_path_factory.getbasetemp())
    _, _, rewrites = rewrite_checked(
        path, f"fold,tile,const_slice,add_bias_transpose={form},matmul2d")
    assert rewrites["add_bias_transpose"] == want.head_splits == 3
    assert rewrites["matmul2d"] == want.linear_nd - (3 if form == "std" else 0)
