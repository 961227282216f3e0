"""The ``fold`` pass (onnxpass/passes/fold.py) against the folding it replaced
(``fold_graphsurgeon``), and its near-misses.

Every test runs the pass as a pipeline's first pass (dead code removed, types inferred), then
checks the graph's structure, that ONNX Runtime loads the result, and that it computes what the
original did. ``fold`` runs on the model as ``onnxpass run`` loads it (``load_graph``: big
weights left in the file), ``fold_graphsurgeon`` on the model loaded whole, as the pipeline
loaded models when it was the folder (with the weights left in place ONNX Runtime cannot read
them inside GraphSurgeon, and it folds less).

Structurally, ``fold`` must fold everything ``fold_graphsurgeon`` folded and may fold more
(:func:`assert_folds_at_least`): the nodes it keeps are GraphSurgeon's, with the same op types,
attributes and inputs, a constant compared by its value (dtype, dims, bytes) rather than its
name, except where it folded more: an input GraphSurgeon still computed is a constant, or a
Reshape of x to a shape computed to be x's own (``Reshape(x, Concat(Gather(Shape(x), 0), 12,
64))`` of a [batch, 12, 64] x) is gone, its readers reading x. On a static export and on the
node-by-node builders the two are the same; on a dynamic TorchScript export ``fold`` folds more.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxpass.graph
from onnxpass.graph import Graph
from onnxpass.modelio import save_model
from onnxpass.passes import (
    builtin,  # noqa: F401  (registers the passes)
    fold as fold_pass,
)
from onnxpass.passes.base import PassContext
from onnxpass.passes.manager import load_graph, parse_pipeline
from onnxpass.verify import compare_models, random_inputs, session

RTOL, ATOL = 1e-5, 1e-5


# ---- helpers ------------------------------------------------------------------------------------

def run_pass(graph: Graph, spec: str = "fold") -> Graph:
    """``spec`` run on ``graph`` as a pipeline's first pass; dead code removed after."""
    graph.remove_dead()
    graph.refresh_types()
    ctx = PassContext(graph)
    [p] = parse_pipeline(spec)
    p.run(ctx)
    ctx.graph.remove_dead()
    return ctx.graph


def saved(graph: Graph, path: Path) -> onnx.ModelProto:
    """``graph`` saved to ``path`` as the pipeline saves it, and loaded back whole."""
    save_model(graph.to_model(), path, graph.base_dir)
    return onnx.load(str(path))


def checked(original: onnx.ModelProto | Path, graph: Graph, path: Path,
            feeds: list[dict[str, np.ndarray]] | None = None) -> onnx.ModelProto:
    """``graph`` saved; checker-valid, loaded by ONNX Runtime, computing what ``original`` does
    on ``feeds`` (default: random inputs, symbolic dims 2 and 3)."""
    out = saved(graph, path)
    onnx.checker.check_model(out)
    session(out)
    src = onnx.load(str(original)) if isinstance(original, Path) else original
    for f in feeds or [random_inputs(src, seed=1), random_inputs(src, seed=2, dims=_dims(src, 3))]:
        bad = [s.line() for s in compare_models(src, out, f, RTOL, ATOL) if not s.within]
        assert not bad, bad
    return out


def _dims(model: onnx.ModelProto, value: int) -> dict[str, int]:
    return {d.dim_param: value for i in model.graph.input
            for d in i.type.tensor_type.shape.dim if d.dim_param}


def ops(graph: Graph | onnx.ModelProto) -> Counter[str]:
    nodes = graph.nodes if isinstance(graph, Graph) else graph.graph.node
    return Counter(n.op_type for n in nodes)


def produced(model: onnx.ModelProto) -> set[str]:
    return {o for n in model.graph.node for o in n.output if o}


def _constants(model: onnx.ModelProto) -> dict[str, tuple[Any, ...]]:
    return {t.name: (t.data_type, tuple(t.dims),
                     hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest())
            for t in model.graph.initializer}


def _attrs(n: onnx.NodeProto) -> list[tuple[str, bytes]]:
    return sorted((a.name, a.SerializeToString()) for a in n.attribute)


def assert_folds_at_least(new: onnx.ModelProto, old: onnx.ModelProto) -> int:
    """``new`` (fold) folds all ``old`` (fold_graphsurgeon) folds, and may fold more: every node
    ``new`` keeps, ``old`` keeps (same op, domain, attributes, outputs), reading the same inputs
    except where ``new`` reads a constant ``old`` still computes (new folded its producer), or
    the data input of a Reshape ``new`` removed (to its own shape); a constant both read has the
    same value (dtype, dims, bytes), whatever its name. Returns how many of ``old``'s nodes
    ``new`` folded or removed besides."""
    cn, co = _constants(new), _constants(old)
    by_output = {n.output[0]: n for n in old.graph.node}
    extra = produced(old) - produced(new)
    for n in new.graph.node:
        o = by_output.get(n.output[0])
        assert o is not None, f"fold keeps {n.op_type} -> {n.output[0]}, which GraphSurgeon folded"
        assert (n.op_type, n.domain, list(n.output), _attrs(n)) == \
            (o.op_type, o.domain, list(o.output), _attrs(o)), f"{n.output[0]} differs"
        assert len(n.input) == len(o.input), f"{n.output[0]}: inputs {n.input} / {o.input}"
        for a, b in zip(n.input, o.input):
            if b in extra:  # new folded or removed what old still computes
                reshape = by_output.get(b)
                bypassed = reshape is not None and reshape.op_type == "Reshape" \
                    and reshape.input[0] == a
                assert a in cn or bypassed, f"{n.output[0]} reads {a}, GraphSurgeon's {b}"
            elif a in cn or b in co:
                assert cn.get(a) == co.get(b), f"{n.output[0]}: constant {a} != {b}"
            else:
                assert a == b, f"{n.output[0]} reads {a}, GraphSurgeon's {b}"
    assert sorted((o.domain, o.version) for o in new.opset_import) == \
        sorted((o.domain, o.version) for o in old.opset_import)
    return sum(1 for n in old.graph.node if n.output[0] in extra)


# ---- the new fold and the old one on real exports -----------------------------------------------

def _export(request: pytest.FixtureRequest, which: str, tmp_path: Path) -> Path:
    """The export named ``which``: made by the suite's session fixtures (tests/conftest.py), or
    built node by node (tests/models_exporters.py)."""
    source, _, rest = which.partition(":")
    if source == "builder":
        from tests.models_exporters import BUILDERS

        path = tmp_path / f"{rest}.onnx"
        onnx.save(BUILDERS[rest]().model, str(path))
        return path
    name, exporter = rest.split("/")
    cache = request.getfixturevalue("real_models" if source == "models" else "heldout_exports")
    path = cache.export(name, exporter)
    if isinstance(path, str):
        pytest.skip(path)
    return Path(path)


# (export, whether anything folds, whether fold folds more than GraphSurgeon did)
EXPORTS = [
    ("models:bert/torchscript", True, True),    # TorchScript opset 14, dynamic batch: fold
                                                # removes the own-shape Reshapes of attention
    ("heldout:gpt2/ts14-static", True, False),  # TorchScript opset 14, static shapes
    ("builder:paddle", True, False),            # Paddle2ONNX: Constant nodes, int32 shapes
    ("builder:tf2onnx", False, False),          # tf2onnx: unk__N dims, run-time shapes only
]


@pytest.mark.parametrize("which,folds,more", EXPORTS, ids=[e[0] for e in EXPORTS])
def test_fold_folds_what_graphsurgeon_folded_on_real_exports(
        request: pytest.FixtureRequest, which: str, folds: bool, more: bool,
        tmp_path: Path) -> None:
    path = _export(request, which, tmp_path)
    new = checked(path, run_pass(load_graph(path)), tmp_path / "fold.onnx")
    old_graph = run_pass(Graph(onnx.load(str(path)), str(path.parent)), "fold_graphsurgeon")
    old = checked(path, old_graph, tmp_path / "fold_graphsurgeon.onnx")
    before = len(onnx.load(str(path), load_external_data=False).graph.node)
    assert (len(new.graph.node) < before) == folds
    assert (assert_folds_at_least(new, old) > 0) == more


def test_reference_evaluator_gives_the_same_graph(request: pytest.FixtureRequest,
                                                  tmp_path: Path) -> None:
    for which in ("models:bert/torchscript", "builder:paddle"):
        path = _export(request, which, tmp_path)
        ort_model = checked(path, run_pass(load_graph(path)), tmp_path / "ort.onnx")
        ref_model = checked(path, run_pass(load_graph(path), "fold:evaluator=reference"),
                            tmp_path / "ref.onnx")
        assert [n.SerializeToString() for n in ref_model.graph.node] == \
            [n.SerializeToString() for n in ort_model.graph.node]
        inits = lambda m: sorted((t.name, t.data_type, tuple(t.dims),
                                  numpy_helper.to_array(t).tobytes()) for t in m.graph.initializer)
        assert inits(ref_model) == inits(ort_model)


# ---- near-misses --------------------------------------------------------------------------------

def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def fold_model(model: onnx.ModelProto, spec: str = "fold") -> Graph:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return run_pass(Graph(copy), spec)


def test_random_ops_are_never_folded(tmp_path: Path) -> None:
    """A random op on constants (or on nothing) would fold to one fixed sample; Dropout is
    random in training mode. The Add of two constants beside them folds."""
    src = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] y) <float[2,3] c = {1,2,3,4,5,6}, float[3] a = {1,2,3},
                                    float[3] b = {4,5,6}> {
  r = RandomNormalLike <seed = 1.0> (c)
  u = RandomUniform <shape = [2,3], seed = 2.0> ()
  d = Dropout (a)
  s = Add (a, b)
  t1 = Add (x, r)
  t2 = Add (t1, u)
  t3 = Add (t2, d)
  y = Add (t3, s)
}""")
    g = fold_model(src)
    assert ops(g) == Counter({"RandomNormalLike": 1, "RandomUniform": 1, "Dropout": 1, "Add": 4})
    assert "s" in g.initializers  # the control folded
    checked(src, g, tmp_path / "out.onnx")  # seeded: ONNX Runtime draws the same sample


def test_a_node_reading_a_graph_input_is_not_folded(tmp_path: Path) -> None:
    """``w`` is a graph input whose initializer is only its default: a node reading it is not
    constant, while the same node on a true initializer folds."""
    src = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[3] x, float[3] w) => (float[3] y) <float[3] w = {1,2,3}, float[3] c = {2,2,2},
                                           float[3] k = {1,1,1}> {
  m = Mul (w, c)
  n = Mul (k, c)
  s = Add (x, m)
  y = Add (s, n)
}""")
    g = fold_model(src)
    assert [(n.op_type, n.inputs) for n in g.toposort()] == [
        ("Mul", ["w", "c"]), ("Add", ["x", "m"]), ("Add", ["s", "n"])]
    x = np.array([0.5, -1, 2], dtype=np.float32)
    w = np.array([7, 8, 9], dtype=np.float32)
    checked(src, g, tmp_path / "out.onnx", [{"x": x}, {"x": x, "w": w}])


@pytest.mark.parametrize("max_bytes", [64, fold_pass.MAX_BYTES])
def test_a_result_over_max_bytes_is_not_folded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               max_bytes: int) -> None:
    """Tile's result (128 bytes) is known too big before it runs; Cast(NonZero) (512 bytes)
    only once evaluated (NonZero's length is data-dependent). Both stay computed under a
    64-byte MAX_BYTES and fold under the real one; the 32-byte Add folds either way."""
    monkeypatch.setattr(fold_pass, "MAX_BYTES", max_bytes)
    src = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[4,8] x, float[2,64] z) => (float[4,8] y, float[2,64] w)
  <float[1,8] r = {1,2,3,4,5,6,7,8}, int64[2] rep = {4,1}, float[8] a = {1,1,1,1,1,1,1,1},
   float[8] b = {2,2,2,2,2,2,2,2}, bool[8,8] mask = {1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
   1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1}> {
  t = Tile (r, rep)
  s = Add (a, b)
  nz = NonZero (mask)
  f = Cast <to = 1> (nz)
  ts = Add (x, t)
  y = Add (ts, s)
  w = Mul (z, f)
}""")
    g = fold_model(src)
    small = max_bytes < 128
    assert ops(g) == Counter({"Add": 2, "Mul": 1, **({"Tile": 1, "NonZero": 1, "Cast": 1}
                                                       if small else {})})
    assert "s" in g.initializers
    assert ("t" in g.initializers, "f" in g.initializers) == (not small, not small)
    checked(src, g, tmp_path / "out.onnx")


RESHAPES = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4,6] x, float[M,4,6] v) => (float[N,4,6] y1, float[N,6,4] y2, float[N,4,6] y3,
                                       float[N,4,6] y4)
  <int64 zero = {0}, int64[1] axis0 = {0}, int64[2] c46 = {4,6}, int64[2] c64 = {6,4},
   int64[2] cm6 = {-1,6}> {
  s = Shape (x)
  b = Gather <axis = 0> (s, zero)
  bu = Unsqueeze (b, axis0)
  own = Concat <axis = 0> (bu, c46)
  other = Concat <axis = 0> (bu, c64)
  own_infer = Concat <axis = 0> (bu, cm6)
  sv = Shape (v)
  bv = Gather <axis = 0> (sv, zero)
  bvu = Unsqueeze (bv, axis0)
  vshape = Concat <axis = 0> (bvu, c46)
  r1 = Reshape (x, own)
  r2 = Reshape (x, other)
  r3 = Reshape (x, own_infer)
  r4 = Reshape (x, vshape)
  y1 = Relu (r1)
  y2 = Relu (r2)
  y3 = Relu (r3)
  y4 = Relu (r4)
}"""


def test_reshape_to_its_own_shape_is_removed_and_to_another_is_not(tmp_path: Path) -> None:
    """Reshape(x, Concat(Gather(Shape(x), 0), 4, 6)) of a [N, 4, 6] x is x (so is the shape
    [N, -1, 6]); to [N, 6, 4] it stays, and so does one to [M, 4, 6] (another symbol: M = N
    only when the feeds say so)."""
    src = parse(RESHAPES)
    g = fold_model(src)
    reshapes = {n.outputs[0]: n.inputs[1] for n in g.nodes if n.op_type == "Reshape"}
    assert reshapes == {"r2": "other", "r4": "vshape"}
    relus = {n.outputs[0]: n.inputs[0] for n in g.nodes if n.op_type == "Relu"}
    assert relus == {"y1": "x", "y2": "r2", "y3": "x", "y4": "r4"}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    checked(src, g, tmp_path / "out.onnx", [{"x": x, "v": x}, {"x": x[:2], "v": x[:2]}])


def test_the_shape_of_a_dynamic_dim_stays(tmp_path: Path) -> None:
    """Gather(Shape(x), 0) of a [N, 4] x stays computed; dim 1 folds to 4, and so does dim 0 of
    Shape(x, start=1) (GraphSurgeon's shortcut read x's dim 0 there)."""
    src = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] y) <int64 zero = {0}, int64 one = {1}> {
  s = Shape (x)
  d0 = Gather <axis = 0> (s, zero)
  d1 = Gather <axis = 0> (s, one)
  s1 = Shape <start = 1> (x)
  e1 = Gather <axis = 0> (s1, zero)
  f0 = Cast <to = 1> (d0)
  f1 = Cast <to = 1> (d1)
  g1 = Cast <to = 1> (e1)
  t = Mul (x, f0)
  u = Add (t, f1)
  y = Sub (u, g1)
}""")
    g = fold_model(src)
    assert ops(g) == Counter({"Shape": 1, "Gather": 1, "Cast": 1, "Mul": 1, "Add": 1, "Sub": 1})
    assert [n.inputs for n in g.nodes if n.op_type == "Gather"] == [["s", "zero"]]
    assert float(g.const_value("f1")) == 4.0 and float(g.const_value("g1")) == 4.0
    checked(src, g, tmp_path / "out.onnx")


def test_fold_decodes_only_the_weights_it_folds(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """Loaded as ``onnxpass run`` loads it, a weight no folded node reads stays in the model
    file, never decoded; the position table a folded Gather reads, and the weight a folded
    Transpose reads, are read."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)      # 16 KiB each: left in place
    w2 = rng.standard_normal((64, 64)).astype(np.float32)
    table = rng.standard_normal((50, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Transpose", ["w2"], ["w2t"], perm=[1, 0]),
         helper.make_node("MatMul", ["h", "w2t"], ["h2"]),
         helper.make_node("Gather", ["table", "ids"], ["pos"], axis=0),
         helper.make_node("Add", ["h2", "pos"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 64])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(table, "table"),
         numpy_helper.from_array(np.arange(8, dtype=np.int64), "ids")])
    src = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "model.onnx"
    onnx.save(src, str(path))
    decoded: list[str] = []
    to_array = onnxpass.graph.numpy_helper.to_array

    def spy(t: onnx.TensorProto, *args: Any, **kwargs: Any) -> np.ndarray:
        decoded.append(t.name)
        return to_array(t, *args, **kwargs)

    monkeypatch.setattr(onnxpass.graph.numpy_helper, "to_array", spy)
    g = load_graph(path)
    assert all(g.initializers[k].data_location == TensorProto.EXTERNAL
               for k in ("w", "w2", "table"))
    g = run_pass(g)
    monkeypatch.undo()
    assert ops(g) == Counter({"MatMul": 2, "Add": 1})
    assert set(g.initializers) == {"w", "w2t", "pos"}
    t = g.initializers["w"]
    assert t.data_location == TensorProto.EXTERNAL
    assert {e.key: e.value for e in t.external_data}["location"] == path.name  # in place
    assert "w" not in decoded and {"w2", "table"} <= set(decoded)
    checked(src, g, tmp_path / "out.onnx")


def test_an_op_onnxruntime_cannot_run_is_left_alone(tmp_path: Path) -> None:
    """ONNX Runtime has no double Tan: evaluating it fails, so it stays (no error), and the
    rest folds, node by node. ONNX Runtime cannot load this model at all, so the numerics are
    ONNX's reference evaluator's, and the reference evaluator folds Tan too."""
    from onnx.reference import ReferenceEvaluator

    src = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (double[3] x) => (double[3] y) <double[3] c = {0.1,0.2,0.3}, double[3] a = {1,2,3},
                                  double[3] b = {4,5,6}> {
  t = Tan (c)
  u = Neg (t)
  s = Add (a, b)
  v = Add (x, u)
  y = Add (v, s)
}""")
    g = fold_model(src)
    assert ops(g) == Counter({"Tan": 1, "Neg": 1, "Add": 2})
    assert "s" in g.initializers
    out = saved(g, tmp_path / "out.onnx")
    onnx.checker.check_model(out, full_check=True)
    x = np.array([1.0, -2.0, 0.5])
    want = ReferenceEvaluator(src).run(None, {"x": x})[0]
    np.testing.assert_allclose(ReferenceEvaluator(out).run(None, {"x": x})[0], want, rtol=1e-12)
    ref = fold_model(src, "fold:evaluator=reference")
    assert ops(ref) == Counter({"Add": 2})
    np.testing.assert_allclose(ReferenceEvaluator(saved(ref, tmp_path / "ref.onnx")).run(
        None, {"x": x})[0], want, rtol=1e-12)


# ---- dims ONNX Runtime's symbolic inference gave GraphSurgeon's path ------------------------

def test_the_dims_a_computed_reshape_gives_are_known(tmp_path: Path) -> None:
    """Flatten(2) written as TorchScript writes it, Reshape(x, Concat(Slice(Shape(x), 0, 2),
    -1)) of a [N, 4, 2, 2] x, transposed: ONNX's inference calls the flattened dim unk__0; fold
    knows it is 4 (as ONNX Runtime's symbolic inference told GraphSurgeon's path) and folds
    Gather(Shape(t), 1) as that path did (LeViT, SegFormer and the dynamic-sequence decoders
    have this)."""
    src = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4,2,2] x) => (float[N,4,4] y) <int64[1] zero = {0}, int64[1] two = {2},
                                          int64[1] m1 = {-1}, int64 one = {1}> {
  s = Shape (x)
  lead = Slice (s, zero, two)
  flat = Concat <axis = 0> (lead, m1)
  r = Reshape (x, flat)
  t = Transpose <perm = [0, 2, 1]> (r)
  st = Shape (t)
  d = Gather <axis = 0> (st, one)
  f = Cast <to = 1> (d)
  y = Mul (t, f)
}""")
    old = fold_model(src, "fold_graphsurgeon")
    assert "Gather" not in ops(old)
    g = fold_model(src)
    checked(src, g, tmp_path / "out.onnx")
    assert ops(g) <= ops(old) and float(g.const_value("f")) == 4.0


def test_the_dims_of_an_expanded_token_are_known(tmp_path: Path) -> None:
    """BEiT's class token as TorchScript writes ``cls_token.expand(batch, -1, -1)``:
    Expand(cls [1, 1, 8], Where(Equal(s, -1), 1, s)) for s = (N, -1, -1), concatenated with
    [N, 16, 8] patches: [N, 17, 8], so Gather(Shape(c), 1) is 17, as ONNX Runtime's symbolic
    inference told GraphSurgeon's path (on the BEiT export, without it: 27 shape nodes more, and
    then no Attention fusion and no opset raise to 23). fold also folds the Equal (-1 against
    N, -1, -1: decided), which GraphSurgeon left."""
    src = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,16,8] p) => (float[N,17,8] y) <float[1,1,8] cls = {1,2,3,4,5,6,7,8},
   int64 zero = {0}, int64 one = {1}, int64[1] ax = {0}, int64[1] m1 = {-1}, int64 neg1 = {-1}> {
  s = Shape (p)
  b = Gather <axis = 0> (s, zero)
  bu = Unsqueeze (b, ax)
  want = Concat <axis = 0> (bu, m1, m1)
  r = Reshape (want, m1)
  rs = Shape (r)
  ones = ConstantOfShape <value = int64[1] {1}> (rs)
  neg = Mul (ones, neg1)
  eq = Equal (r, neg)
  shape = Where (eq, ones, r)
  e = Expand (cls, shape)
  c = Concat <axis = 1> (e, p)
  sc = Shape (c)
  d = Gather <axis = 0> (sc, one)
  f = Cast <to = 1> (d)
  y = Mul (c, f)
}""")
    old = fold_model(src, "fold_graphsurgeon")
    assert "Cast" not in ops(old)  # d = 17, f = 17.0
    g = fold_model(src)
    checked(src, g, tmp_path / "out.onnx")
    assert ops(g) <= ops(old) and float(g.const_value("f")) == 17.0


# ---- bugs found by the equivalence sweep (reported; strict: fixing them fails these) -----------

def test_a_graph_output_reshape_to_its_own_shape_becomes_an_identity(tmp_path: Path) -> None:
    src = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4,6] x) => (float[N,4,6] y) <int64 zero = {0}, int64[1] axis0 = {0},
                                        int64[2] c46 = {4,6}> {
  s = Shape (x)
  b = Gather <axis = 0> (s, zero)
  bu = Unsqueeze (b, axis0)
  own = Concat <axis = 0> (bu, c46)
  y = Reshape (x, own)
}""")
    g = fold_model(src)
    checked(src, g, tmp_path / "out.onnx")
    assert [(n.op_type, n.inputs, n.outputs) for n in g.nodes] == [("Identity", ["x"], ["y"])]


def test_a_value_a_subgraph_reads_stays_available(tmp_path: Path) -> None:
    then = helper.make_graph([helper.make_node("Add", ["x", "c"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Mul", ["c", "k"], ["d"]),
         helper.make_node("Add", ["x", "d"], ["y"]),
         helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array([1, 2], np.float32), n) for n in "abk"])
    src = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    g = fold_model(src)
    assert ops(g) == Counter({"Add": 1, "If": 1})
    x = np.array([1, 2], np.float32)
    checked(src, g, tmp_path / "out.onnx", [{"x": x, "cond": np.array(c)} for c in (True, False)])


def test_a_sequence_is_not_folded_into_a_tensor(tmp_path: Path) -> None:
    src = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) <int64 i = {0}> {
  s = SequenceEmpty <dtype = 1> ()
  s2 = SequenceInsert (s, x)
  e = SequenceAt (s2, i)
  y = Add (e, x)
}""")
    g = fold_model(src)
    assert ops(g)["SequenceEmpty"] == 1
    checked(src, g, tmp_path / "out.onnx")
