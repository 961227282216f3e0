"""GraphSurgeon passes (onnxpass/passes/graphsurgeon.py): a hackathon-style onnx-graphsurgeon
function, examples/gs_layernorm.py, run as a pass in pipelines with --verify, provenance and
golden tests; and what a broken function gets."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from onnxpass.errors import OnnxpassError
from onnxpass.passes.base import registry
from onnxpass.passes.graphsurgeon import graphsurgeon_pass, load_passes, plugin_attrs
from onnxpass.passes.manager import Pipeline
from onnxpass.verify import compare_models, random_inputs

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "gs_layernorm.py"
GOLDENS = sorted((ROOT / "tests" / "goldens" / "graphsurgeon").glob("*.golden"))


@pytest.mark.parametrize("path", GOLDENS, ids=[p.stem for p in GOLDENS])
def test_golden(path: Path, golden: Callable[[Path], None]) -> None:
    golden(path)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxpass.cli", *args], capture_output=True,
                          text=True)


def test_runs_in_a_pipeline_with_verify(tmp_path: Path) -> None:
    """onnxpass run --load FILE --passes fold,gs_layernorm,gelu --verify: the 5 LayerNorms of
    the tiny ViT become plugin nodes that name what they replaced, GELU still fuses after it,
    and ONNX Runtime computes what the original does."""
    out = tmp_path / "vit.gs.onnx"
    p = _cli("run", "--load", str(EXAMPLE), "--passes", "fold,gs_layernorm,gelu",
             str(ROOT / "examples" / "vit_tiny.onnx"), "-o", str(out), "--verify")
    assert p.returncode == 0, p.stderr
    assert "verify last_hidden_state" in p.stdout and p.stdout.rstrip().endswith(str(out)), \
        p.stdout
    m = onnx.load(str(out))
    ln = [n for n in m.graph.node if n.op_type == "LayerNormPlugin"]
    assert len(ln) == 5 and sum(n.op_type == "Gelu" for n in m.graph.node) == 2
    assert not any(n.op_type in ("ReduceMean", "Sqrt", "Pow") for n in m.graph.node)
    meta = {p.key: p.value for p in ln[0].metadata_props}
    assert meta["onnxpass.pass"] == "gs_layernorm" and meta["onnxpass.rule"] == "gs_layernorm"
    replaced = meta["onnxpass.replaced"].split(",")
    assert len(replaced) >= 9 and all("layernorm" in r for r in replaced), replaced
    assert any(f.name == "LayerNormPlugin" for f in m.functions)
    assert len({n.name for n in m.graph.node}) == len(m.graph.node)


def test_same_result_as_the_builtin_plugin_pass(real_models: Any, tmp_path: Path) -> None:
    """On a real BERT export the GraphSurgeon loop fuses what layernorm=plugin fuses."""
    load_passes(str(EXAMPLE))
    src = real_models.export("bert", "torchscript")
    assert isinstance(src, Path), src
    a, b = tmp_path / "gs.onnx", tmp_path / "builtin.onnx"
    Pipeline("fold,gs_layernorm").rewrite_file(src, a)
    Pipeline("fold,layernorm=plugin").rewrite_file(src, b)
    ma, mb = onnx.load(str(a)), onnx.load(str(b))
    count = [sum(n.op_type == "LayerNormPlugin" for n in m.graph.node) for m in (ma, mb)]
    assert count[0] == count[1] > 0
    feeds = random_inputs(onnx.load(str(src)), seed=0, dims={"batch": 2})
    assert all(s.within for s in compare_models(ma, mb, feeds, rtol=1e-5, atol=1e-5))


def test_a_function_that_breaks_the_graph_is_caught() -> None:
    """The checks after each pass see what a GraphSurgeon function did: a node reading a tensor
    nothing produces fails the pass in one line, naming it."""
    @graphsurgeon_pass("gs_test_break", "test: consume a tensor nothing makes")
    def gs_test_break(graph: Any) -> Any:
        import onnx_graphsurgeon as gs

        ghost = gs.Variable("ghost", dtype=None)
        out = graph.outputs[0]
        graph.nodes.append(gs.Node(op="Identity", inputs=[ghost], outputs=[out]))
        for n in graph.nodes:
            if out in n.outputs and n.op != "Identity":
                n.outputs = []
        return graph

    model = onnx.load(str(ROOT / "examples" / "vit_tiny.onnx"))
    with pytest.raises(OnnxpassError, match="gs_test_break"):
        Pipeline("gs_test_break").rewrite(model)
    assert "gs_test_break" in registry()


def test_wrong_return_and_bad_load() -> None:
    @graphsurgeon_pass("gs_test_wrong", "test: returns a string")
    def gs_test_wrong(graph: Any) -> Any:
        return "not a graph"

    model = onnx.load(str(ROOT / "examples" / "vit_tiny.onnx"))
    with pytest.raises(OnnxpassError, match="returned str, not an onnx_graphsurgeon Graph"):
        Pipeline("gs_test_wrong").rewrite(model)
    p = _cli("run", "--load", "missing_passes.py", "--passes", "gs_layernorm",
             str(ROOT / "examples" / "vit_tiny.onnx"), "-o", "/tmp/never.onnx")
    assert p.returncode == 2 and p.stderr.strip() == \
        "onnxpass: error: --load missing_passes.py: no such file"
    p = _cli("run", "--load", "no_such_module_xyz", "--passes", "gs_layernorm",
             str(ROOT / "examples" / "vit_tiny.onnx"), "-o", "/tmp/never.onnx")
    assert p.returncode == 2 and "--load no_such_module_xyz: ModuleNotFoundError" in p.stderr


def test_plugin_attrs_fill_defaults() -> None:
    a = plugin_attrs("LayerNormPlugin", epsilon=1e-6)
    assert a["plugin_namespace"] == "onnxpass" and a["axis"] == -1
    assert abs(a["epsilon"] - 1e-6) < 1e-12
