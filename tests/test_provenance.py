"""Provenance that survives: every node a pass makes names the pass, the rule and the input
model's nodes it stands for (``onnxpass.replaced``), through later passes (folding, opset
conversion, fp16), and its name derives from theirs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest

from onnxpass.passes.manager import Pipeline

ROOT = Path(__file__).resolve().parent.parent


def _made(m: onnx.ModelProto) -> list[tuple[onnx.NodeProto, dict[str, str]]]:
    out = []
    for n in m.graph.node:
        md = {p.key: p.value for p in n.metadata_props}
        if "onnxpass.pass" in md:
            out.append((n, md))
    return out


@pytest.mark.parametrize("spec", ["default,fp16", "plugins,fold"])
@pytest.mark.parametrize("model", ["vit_tiny", "bert"])
def test_every_made_node_names_what_it_replaced(model: str, spec: str, tmp_path: Path,
                                                real_models: Any) -> None:
    src = (ROOT / "examples" / "vit_tiny.onnx" if model == "vit_tiny"
           else real_models.export("bert", "torchscript"))
    assert isinstance(src, Path), src
    out = tmp_path / "out.onnx"
    Pipeline(spec).rewrite_file(src, out)
    names = {n.name for n in onnx.load(str(src)).graph.node}
    made = _made(onnx.load(str(out)))
    assert made
    by_op: dict[str, list[str]] = {}
    for n, md in made:
        assert md.get("onnxpass.rule"), n.name
        replaced = md.get("onnxpass.replaced", "").split(",")
        assert replaced != [""] and set(replaced) <= names, (n.name, replaced)
        by_op.setdefault(n.op_type, []).extend(replaced)
    ln = by_op.get("LayerNormalization") or by_op["LayerNormPlugin"]
    assert any("ReduceMean" in r for r in ln)
    att = by_op.get("Attention") or by_op.get("AttentionPlugin") or by_op["Softmax"]
    assert any("Softmax" in r for r in att) and any("MatMul" in r for r in att)
    for n, md in made:  # generated names keep the scope of a replaced node
        scopes = {r.rsplit("/", 1)[0] for r in md["onnxpass.replaced"].split(",") if "/" in r}
        if scopes and "/" in n.name:
            assert n.name.rsplit("/", 1)[0] in scopes or any(
                s.startswith(n.name.rsplit("/", 1)[0]) for s in scopes), (n.name, scopes)
