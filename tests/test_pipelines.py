"""The shipped pipelines end to end on real exports: `default` (standard ONNX only) and
`plugins` (plugin forms) must give checker-valid models that compute what the originals did."""

from __future__ import annotations

import onnx
import pytest

from onnxpass.api import rewrite
from onnxpass.verify import compare_models, random_inputs

RTOL, ATOL = 1e-5, 1e-5
CASES = [("bert", "torchscript"), ("detr", "dynamo"), ("mobilevit", "torchscript"),
         ("clip_text", "dynamo")]
PLUGIN_DOMAIN = "onnxpass"


@pytest.mark.parametrize("pipeline", ["default", "plugins"])
@pytest.mark.parametrize("name,exporter", CASES)
def test_pipeline_on_real_model(real_models, name: str, exporter: str, pipeline: str, tmp_path,
                                monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = real_models.export(name, exporter)
    if isinstance(path, str):
        pytest.skip(path)
    monkeypatch.chdir(tmp_path)  # nothing (e.g. a folding tool's temp files) may land in the cwd
    original = onnx.load(str(path))
    out, result = rewrite(onnx.load(str(path)), pipeline)
    onnx.checker.check_model(out)
    plugin_nodes = [n.op_type for n in out.graph.node if n.domain == PLUGIN_DOMAIN]
    if pipeline == "default":
        assert not plugin_nodes, f"default pipeline emitted plugins {plugin_nodes}"
    fused = {"LayerNormalization", "Attention", "LayerNormPlugin", "AttentionPlugin"}
    assert any(n.op_type in fused for n in out.graph.node)
    assert len(out.graph.node) < len(original.graph.node)
    feeds = random_inputs(original, seed=1)
    bad = [s.line() for s in compare_models(original, out, feeds, RTOL, ATOL) if not s.within]
    assert not bad, bad
    assert not list(tmp_path.iterdir())
