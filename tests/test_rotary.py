"""The rotary pass on real exports, and what its goldens (tests/goldens/rotary/) cannot express.

Every rotary application of the torch model (one per call of transformers' rotate_half or
rotate_every_two: Q and K of every layer) must be fused, in both forms, through the ``default``
and ``plugins`` pipelines, on Llama and Qwen2 (tests/models_heldout.py) and on tiny GPT-NeoX
(partial rotation) and GPT-J (interleaved, partial, (B, S, H, D)) models; exported by TorchScript
at opset 17, dynamo, and TorchScript in float16 with static shapes. The rewritten model must load
in ONNX Runtime with its default options and compute the original's outputs within 1e-5 of their
scale (1e-2 in float16). Exports with a dynamic sequence keep cos/sin computed in the graph
(folding turns the others' into constants), so both proofs of the caches' equal halves run.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import onnxpass
from onnxpass.plugins.base import get_plugin
from onnxpass.plugins.kernels import get_kernel
from onnxpass.verify import run, scaled_stats
from tests.models import Built, half
from tests.models_heldout import EXPORTERS, MODELS, VOCAB, _text, export

FORMS = {"std": ("default", "RotaryEmbedding"), "plugin": ("plugins", "RotaryEmbeddingPlugin")}
ROTARY_OPS = ("RotaryEmbedding", "RotaryEmbeddingPlugin")
HELDOUT_EXPORTERS = ("ts17", "dynamo", "ts16-fp16-static")
RTOL, RTOL16 = 1e-5, 1e-2


# ---- the torch models and how many rotations they apply ------------------------------------

def gpt_neox() -> Built:
    """GPT-NeoX with a partial rotary factor (rotary_pct) of 0.5: rotate-half of 8 of each head's
    16 dims."""
    from transformers import GPTNeoXConfig, GPTNeoXModel

    cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                         "partial_rotary_factor": 0.5},
                        max_position_embeddings=64, use_cache=False)
    return _text(GPTNeoXModel(cfg))


def gpt_j() -> Built:
    """GPT-J with rotary_dim 8 of 16: interleaved pairs, on (B, S, H, D) before the head
    transpose, cos/sin gathered from a sinusoid table and repeat-interleaved."""
    from transformers import GPTJConfig, GPTJModel

    cfg = GPTJConfig(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     rotary_dim=8, n_inner=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     use_cache=False)
    return _text(GPTJModel(cfg))


BUILDERS: dict[str, Callable[[], Built]] = {**MODELS, "gpt_neox": gpt_neox, "gpt_j": gpt_j}
# the function each model calls once per rotation: (transformers module, name)
ROTATE = {"llama": ("llama", "rotate_half"), "qwen2": ("qwen2", "rotate_half"),
          "gpt_neox": ("gpt_neox", "rotate_half"), "gpt_j": ("gptj", "rotate_every_two")}


@functools.cache
def rotations(name: str) -> int:
    """Rotary applications in one forward pass of the torch model (calls of its rotate
    function), never read from a graph."""
    import importlib

    package, fn = ROTATE[name]
    module = importlib.import_module(f"transformers.models.{package}.modeling_{package}")
    built = BUILDERS[name]()
    calls = 0
    original = getattr(module, fn)

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    with torch.no_grad(), mock.patch.object(module, fn, counted):
        built.module(*built.args)
    assert calls > 0, f"{name} never called {package}.{fn}: the count would prove nothing"
    return calls


# ---- checks -------------------------------------------------------------------------------

def rewrite(model: onnx.ModelProto, pipeline: str) -> onnx.ModelProto:
    work = onnx.ModelProto()
    work.CopyFrom(model)
    out, _ = onnxpass.rewrite(work, pipeline)
    return out


def ort_loads(model: onnx.ModelProto) -> None:
    """ONNX Runtime with its default session options (what a user runs), not onnx.checker."""
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def same_outputs(original: onnx.ModelProto, out: onnx.ModelProto,
                 feeds: list[dict[str, np.ndarray]], tol: float) -> None:
    for k, feed in enumerate(feeds):
        want, got = run(original, feed), run(out, feed)
        for name, w in want.items():
            s, err = scaled_stats(name, w, got[name], tol)
            assert s.within, f"feed {k}: {s.line()} (scaled max {err:.3g}, tol {tol:g})"


def fused(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node if n.op_type in ROTARY_OPS)


def check_export(original: onnx.ModelProto, name: str, form: str,
                 feeds: list[dict[str, np.ndarray]], tol: float) -> onnx.ModelProto:
    """Every rotation fused in ``form`` by its pipeline; loads; same outputs. Returns it."""
    pipeline, op = FORMS[form]
    out = rewrite(original, pipeline)
    native = fused(original)["RotaryEmbedding"]  # an exporter's own op counts as fused
    got = fused(out)
    assert got[op] + (native if op != "RotaryEmbedding" else 0) == rotations(name), got
    # what is left of a rotate-half or rotate-every-two: nothing
    assert not any(n.op_type == "Neg" for n in out.graph.node)
    ort_loads(out)
    same_outputs(original, out, feeds, tol)
    return out


# ---- Llama and Qwen2 (tests/models_heldout.py) ----------------------------------------------

@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("exporter", HELDOUT_EXPORTERS)
@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_heldout_every_rotation_fused(heldout_exports, name: str,  # type: ignore[no-untyped-def]
                                      exporter: str, form: str) -> None:
    path = heldout_exports.export(name, exporter)
    assert not isinstance(path, str), path
    original = onnx.load(str(path))
    tol = RTOL16 if EXPORTERS[exporter][1] else RTOL
    check_export(original, name, form, heldout_exports.feeds(name, exporter), tol)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("exporter", ["ts17", "dynamo"])
def test_llama_rotary_then_attention(heldout_exports, exporter: str,  # type: ignore[no-untyped-def]
                                     form: str) -> None:
    """The attention pass takes the fused rotations' outputs as its Q and K: both fuse, every
    attention of the model reads Q and K straight from a rotary node."""
    out = rewrite(onnx.load(str(heldout_exports.export("llama", exporter))), FORMS[form][0])
    producer = {o: n for n in out.graph.node for o in n.output}
    attention = [n for n in out.graph.node if n.op_type in ("Attention", "AttentionPlugin")]
    assert len(attention) == rotations("llama") // 2  # one per layer
    for node in attention:
        assert [producer[i].op_type for i in node.input[:2]] == [FORMS[form][1]] * 2


# ---- GPT-NeoX (partial) and GPT-J (interleaved, partial, (B, S, H, D)) ----------------------

@functools.cache
def _export(name: str, exporter: str, root: str) -> Path:
    path = Path(root) / f"{name}-{exporter}.onnx"
    built = BUILDERS[name]()
    export(half(built) if EXPORTERS[exporter][1] else built, exporter, path)
    return path


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("rotary"))


def _feeds(path: Path) -> list[dict[str, np.ndarray]]:
    g = np.random.default_rng(0)
    model = onnx.load(str(path), load_external_data=False)
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    ids = g.integers(0, VOCAB, shape).astype(np.int64)
    mask = np.ones(shape, np.int64)
    mask[-1, : shape[1] // 3] = 0  # one left-padded row
    return [{"input_ids": ids, "attention_mask": mask}]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("exporter", HELDOUT_EXPORTERS)
@pytest.mark.parametrize("name", ["gpt_neox", "gpt_j"])
def test_partial_and_interleaved_exports(export_dir: str, name: str, exporter: str,
                                         form: str) -> None:
    path = _export(name, exporter, export_dir)
    tol = RTOL16 if EXPORTERS[exporter][1] else RTOL
    out = check_export(onnx.load(str(path)), name, form, _feeds(path), tol)
    for node in (n for n in out.graph.node if n.op_type in ROTARY_OPS):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["interleaved"] == int(name == "gpt_j") and attrs["rotary_embedding_dim"] == 8


# ---- cos/sin computed in the graph: a dynamic sequence length -------------------------------

@functools.cache
def _export_dynamic_seq(name: str, exporter: str, root: str) -> Path:
    built = BUILDERS[name]()
    path = Path(root) / f"{name}-{exporter}-seq.onnx"
    names = built.input_names
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "ts17":
            torch.onnx.export(built.module, built.args, str(path), input_names=names,
                              output_names=built.output_names, dynamo=False, opset_version=17,
                              dynamic_axes={n: {0: "batch", 1: "seq"} for n in names})
        else:
            dims = {0: torch.export.Dim("batch", min=1, max=64),
                    1: torch.export.Dim("seq", min=2, max=60)}
            program = torch.onnx.export(built.module, built.args, input_names=names,
                                        output_names=built.output_names, dynamo=True,
                                        dynamic_shapes=(tuple(dims for _ in names),))
            assert program is not None
            program.save(str(path))
    return path


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("exporter", ["ts17", "dynamo"])
@pytest.mark.parametrize("name", ["llama", "gpt_j"])
def test_dynamic_sequence_computed_caches(export_dir: str, name: str, exporter: str,
                                          form: str) -> None:
    """With the sequence length dynamic, cos/sin stay computed (Llama: Concat(freqs, freqs) ->
    Cos/Sin; GPT-J: a table gathered by positions, repeat-interleaved): the halves or pairs are
    proven from the graph. Fed 5 and 17 tokens, neither the exported 12."""
    path = _export_dynamic_seq(name, exporter, export_dir)
    original = onnx.load(str(path))
    assert any(n.op_type in ("Cos", "Gather", "GatherND") for n in original.graph.node)
    g = np.random.default_rng(3)
    feeds = [{"input_ids": g.integers(0, VOCAB, (3, s)).astype(np.int64),
              "attention_mask": np.ones((3, s), np.int64)} for s in (5, 17)]
    check_export(original, name, form, feeds, RTOL)


# ---- the op itself ------------------------------------------------------------------------

def test_plugin_reference_is_onnx_rotary_embedding() -> None:
    """RotaryEmbeddingPlugin computes ONNX RotaryEmbedding (run by onnx's reference evaluator)
    for 4-D x without position_ids, on caches broadcast to x's batch and sequence."""
    k = get_kernel("RotaryEmbeddingPlugin")
    assert k is not None
    spec = get_plugin("RotaryEmbeddingPlugin")
    for case in k.cases:
        x, cos, sin = case.inputs("float32")
        attrs = spec.attr_values(case.attrs)
        b, _, s, _ = x.shape
        caches = [np.broadcast_to(c, (b, s, c.shape[2])).copy() for c in (cos, sin)]
        node = helper.make_node("RotaryEmbedding", ["x", "cos", "sin"], ["y"],
                                interleaved=attrs["interleaved"],
                                rotary_embedding_dim=attrs["rotary_embedding_dim"])
        graph = helper.make_graph([node], "g", [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "cos", "sin")],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
        want = ReferenceEvaluator(model).run(None, {"x": x, "cos": caches[0], "sin": caches[1]})
        got = k.reference(x, cos, sin, **attrs)[0]
        np.testing.assert_allclose(got, np.asarray(list(want)[0]), rtol=1e-6, atol=1e-6,
                                   err_msg=case.name)


def test_onnxruntime_takes_no_broadcast_cache() -> None:
    """Why the std form Expands a batch-1 cache: ONNX Runtime 1.32's RotaryEmbedding refuses
    caches whose batch differs from x's (the spec gives them x's batch too)."""
    def model(cache_batch: int) -> bytes:
        node = helper.make_node("RotaryEmbedding", ["x", "cos", "sin"], ["y"])
        graph = helper.make_graph([node], "g", [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 3, 4]),
            helper.make_tensor_value_info("cos", TensorProto.FLOAT, [cache_batch, 3, 2]),
            helper.make_tensor_value_info("sin", TensorProto.FLOAT, [cache_batch, 3, 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]
                                 ).SerializeToString()

    x = np.ones((2, 2, 3, 4), np.float32)
    ok = ort.InferenceSession(model(2), providers=["CPUExecutionProvider"])
    ok.run(None, {"x": x, "cos": np.ones((2, 3, 2), np.float32),
                  "sin": np.zeros((2, 3, 2), np.float32)})
    bad = ort.InferenceSession(model(1), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="same shape as input"):
        bad.run(None, {"x": x, "cos": np.ones((1, 3, 2), np.float32),
                       "sin": np.zeros((1, 3, 2), np.float32)})


@pytest.mark.parametrize("form", FORMS)
def test_an_exporters_own_rotary_embedding_is_left_alone(form: str) -> None:
    """An exporter's own RotaryEmbedding (opset 23) is already fused: neither form touches it."""
    model = onnx.parser.parse_model("""
<ir_version: 10, opset_import: ["" : 23]>
g (float[2,4,6,8] x, float[2,6,4] c, float[2,6,4] s) => (float[2,4,6,8] y) {
  y = RotaryEmbedding <interleaved = 0> (x, c, s)
}""")
    out = rewrite(model, FORMS[form][0])
    assert [n.op_type for n in out.graph.node] == ["RotaryEmbedding"]


def test_caches_are_shared_by_q_k_and_layers(heldout_exports) -> None:  # type: ignore
    """The folded static-shape export has one cos and one sin constant for every layer: the
    fused nodes share one cache each, not a copy per Q, K and layer."""
    original = onnx.load(str(heldout_exports.export("llama", "ts16-fp16-static")))
    out = rewrite(original, "default")
    nodes = [n for n in out.graph.node if n.op_type == "RotaryEmbedding"]
    assert len(nodes) == rotations("llama")
    assert len({n.input[1] for n in nodes}) == 1 and len({n.input[2] for n in nodes}) == 1
