"""tile beyond its goldens: DETR's and an AnchorDETR-style repeated position embedding stop being
tiled where broadcasting gives the same result (real exports, outputs unchanged), and the
value numbering behind "compute once"."""

from __future__ import annotations

import onnx
import pytest

from onnxpass.passes.tile import BROADCASTING, compute_once
from tests.helpers import graph, ops
from tests.models_projections import merged_attention_export, projection_counts, rewrite_checked

HDR = '<ir_version: 8, opset_import: ["" : 17]>'


def broadcast_uses_of_tiles(model: onnx.ModelProto) -> int:
    tiled = {n.output[0] for n in model.graph.node if n.op_type == "Tile"}
    return sum(1 for n in model.graph.node if n.op_type in BROADCASTING
               for i in n.input if i in tiled)


# DETR repeats its query embedding over the batch and adds it to the decoder states twice
# (torch's repeat() feeding two adds: models_projections.projection_counts' repeat_uses). The
# first states are zeros of the repeat's shape: dynamo writes them as a scalar 0 expanded, so
# the first add becomes 0 + repeat, which noop removes (the repeat still feeds the first
# layer's projections, which need it batch-sized). The AnchorDETR-style model adds its repeated
# position embedding to x for Q and K: one Add once the exporter has merged the two.
@pytest.mark.parametrize("exporter", ("torchscript", "dynamo"))
def test_detr_queries_broadcast(real_models, exporter: str) -> None:
    path = real_models.export("detr", exporter)
    if isinstance(path, str):
        pytest.skip(path)
    want = projection_counts(real_models.built("detr")).repeat_uses
    original, rewritten, _ = rewrite_checked(path, "tile,noop")
    assert broadcast_uses_of_tiles(original) == want == 2
    assert broadcast_uses_of_tiles(rewritten) == 0


@pytest.mark.parametrize("exporter", ("torchscript", "dynamo"))
def test_anchordetr_style_position_broadcasts(tmp_path_factory, exporter: str) -> None:
    path = merged_attention_export(exporter, tmp_path_factory.getbasetemp())
    original, rewritten, _ = rewrite_checked(path, "tile")
    assert broadcast_uses_of_tiles(original) == 1
    assert broadcast_uses_of_tiles(rewritten) == 0 and "Tile" not in ops(rewritten)


def test_compute_once_compares_constants_by_value_not_name() -> None:
    g = graph(f"""{HDR} g (float[1,4] x) => (float[3,4] y) <int64[2] r1 = {{3, 1}}> {{
        r2 = Constant <value = int64[2] {{3, 1}}> ()
        a = Tile (x, r1)
        b = Tile (x, r2)
        y = Mul (a, b)
    }}""")
    assert compute_once(g, {"Tile"}) == 1
    assert ops(g).count("Tile") == 1


def test_compute_once_leaves_random_and_graph_outputs() -> None:
    g = graph(f"""{HDR} g (float[1,4] x) => (float[3,4] y, float[3,4] z, float[3,4] v)
                  <int64[2] r = {{3, 1}}> {{
        n1 = RandomNormalLike (x)
        n2 = RandomNormalLike (x)
        a = Tile (n1, r)
        b = Tile (n2, r)
        y = Mul (a, b)
        z = Tile (x, r)
        w = Tile (x, r)
        v = Relu (w)
        u = Tile (x, r)
        t = Identity (u)
    }}""")
    assert compute_once(g, {"Tile"}) == 1  # w is z; random a and b differ; z stays an output
    assert ops(g).count("Tile") == 3
