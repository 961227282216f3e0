"""const_slice beyond its goldens: a chain over a constant folds in one run of the rule driver,
the merged Q/K/V parameters of an AnchorDETR-style export become one initializer per use, and
the Reshapes matmul2d leaves next to the model's own ones merge (real exports, outputs
unchanged)."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from onnxpass.passes.const_slice import FOLDABLE, ConstSlice
from onnxpass.patterns import apply_rules, explain
from tests.helpers import graph, ops
from tests.models_projections import merged_attention_export, rewrite_checked

HDR = '<ir_version: 8, opset_import: ["" : 17]>'


def test_chain_folds_in_one_run() -> None:
    g = graph(f"""{HDR} g (float[2,3] x) => (float[2,2] y)
        <float[2,6] w = {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}}, int64[1] s = {{0}},
         int64[1] e = {{3}}, int64[2] shape = {{3, 2}}> {{
        t = Transpose <perm = [1, 0]> (w)
        part = Slice (t, s, e)
        flat = Reshape (part, shape)
        y = MatMul (x, flat)
    }}""")
    assert apply_rules(g, ConstSlice().rules(), "const_slice") == 3
    assert ops(g) == ["MatMul"]


@pytest.mark.parametrize("exporter", ("torchscript", "dynamo"))
def test_merged_qkv_parameters_fold(tmp_path_factory, exporter: str) -> None:
    """The torch model chunks two merged parameters (weights, biases). TorchScript folds the
    chunks while exporting; dynamo writes a Split of each, which must fold."""
    path = merged_attention_export(exporter, tmp_path_factory.getbasetemp())
    original, rewritten, _ = rewrite_checked(path, "const_slice")
    assert ops(original).count("Split") == (0 if exporter == "torchscript" else 2)
    assert foldable(rewritten) == []


def foldable(model: onnx.ModelProto) -> list[str]:
    """Data-movement nodes whose inputs are all constants."""
    consts = {t.name for t in model.graph.initializer} | {
        n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [n.op_type for n in model.graph.node if n.op_type in (*FOLDABLE, "Split")
            and all(i in consts for i in n.input if i)]


def reshape_pairs(model: onnx.ModelProto) -> int:
    """Reshapes to a constant target of a Reshape output used nowhere else: mergeable (the
    exports' targets have no 0s)."""
    uses = Counter(i for n in model.graph.node for i in n.input)
    reshaped = {n.output[0] for n in model.graph.node if n.op_type == "Reshape"}
    consts = {t.name for t in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "Reshape" and n.input[0] in reshaped
               and uses[n.input[0]] == 1 and n.input[1] in consts)


# (MobileViT's TorchScript export computes the targets that follow matmul2d's Reshapes.)
@pytest.mark.parametrize("name, exporter", [("bert", "torchscript"), ("bert", "dynamo"),
                                            ("mobilevit", "dynamo")])
def test_reshape_pairs_after_matmul2d_merge(real_models, name: str, exporter: str) -> None:
    path = real_models.export(name, exporter)
    if isinstance(path, str):
        pytest.skip(path)
    _, with_pairs, _ = rewrite_checked(path, "matmul2d")
    _, merged, rewrites = rewrite_checked(path, "matmul2d,const_slice")
    assert reshape_pairs(with_pairs) > 0
    assert reshape_pairs(merged) == 0 and rewrites["const_slice"] >= reshape_pairs(with_pairs)


def test_split_rules_of_other_arities_do_not_trip() -> None:
    """The 3..8-output Split rules meet a 2-output Split (the matcher once indexed past its
    outputs); only the 2-output rule matches."""
    g = graph(f"""{HDR} g (float[2,3] x) => (float[2,3] y) <float[4,3] w = {{1, 2, 3, 4, 5, 6,
                                                                          7, 8, 9, 10, 11, 12}}> {{
        a, b = Split <axis = 0, num_outputs = 2> (w)
        s = Mul (a, b)
        y = Add (x, s)
    }}""".replace('"" : 17', '"" : 18'))
    matched = [a.rule for a in explain(g, ConstSlice().rules()) if a.matched]
    assert matched == ["fold-split2"]
