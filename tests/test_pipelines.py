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


def test_plugins_at_opset_12_raise_the_opset_instead_of_aborting() -> None:
    """Plugin bodies are written for opset >= 13: an opset-12 model gets its opset raised (and a
    note saying so) where a plugin rule matches, as the std forms do."""
    import numpy as np

    from onnxpass.loadcheck import load_problems

    src = onnx.parser.parse_model('''<ir_version: 7, opset_import: ["" : 12]>
g (float[2,4,8] x) => (float[2,4,8] y) <float[8] gm = {1,2,1,2,1,2,1,2}, float[8] bt =
  {0,1,0,1,0,1,0,1}, float eps = {1e-5}, float two = {2.0}, float half = {0.5}, float one = {1.0},
  float sq = {1.4142135}> {
  m = ReduceMean <axes = [-1]> (x)
  d = Sub (x, m)
  p = Pow (d, two)
  v = ReduceMean <axes = [-1]> (p)
  ve = Add (v, eps)
  s = Sqrt (ve)
  n = Div (d, s)
  g1 = Mul (n, gm)
  h = Add (g1, bt)
  e1 = Div (h, sq)
  e2 = Erf (e1)
  e3 = Add (e2, one)
  e4 = Mul (h, e3)
  y = Mul (e4, half)
}''')
    work = onnx.ModelProto()
    work.CopyFrom(src)
    out, result = rewrite(work, "layernorm=plugin,gelu=plugin")
    assert [n.op_type for n in out.graph.node] == ["LayerNormPlugin", "GeluPlugin"]
    assert result.notes == ["layernorm=plugin: raised the model's opset 12 -> 13"]
    assert load_problems(out) == []
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)}
    assert all(s.within for s in compare_models(src, out, feeds, RTOL, ATOL))
