"""The canonical pass (onnxpass/passes/canonical.py) and the runner that puts it before the first
pattern pass of every list. Each rule has a golden and a near-miss in tests/goldens/canonical/.

Here: the facts the rules rest on (which Cast pairs round-trip), where the runner inserts the pass,
and real exports that fuse only through it:
- float16 TorchScript exports of GPT-2, Llama and Qwen2 with eager attention
  (``softmax(dtype=float32).to(float16)`` is Softmax -> Cast(float) -> Cast(float16));
- a decoder self-attention on (B*heads, T, d) tensors with a no-op Reshape pair between the
  Softmax and the value MatMul (Whisper's, and a BART-style decoder);
- a tf2onnx-style LayerNorm (ReduceSum * (1/N), eps Expand-ed to a run-time shape).
Every rewritten model loads in ONNX Runtime with its default options and computes the original's
outputs (1e-5 of the output's scale in float32, 1e-2 in float16; canonical alone bit for bit).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxpass.api import rewrite
from onnxpass.cli import main
from onnxpass.graph import Graph
from onnxpass.passes.base import parse_passes
from onnxpass.passes.canonical import EXACT_WIDER
from onnxpass.passes.manager import PassManager, Pipeline, with_canonical
from onnxpass.verify import random_inputs, run, scaled_stats

F, H = TensorProto.FLOAT, TensorProto.FLOAT16
NP: dict[int, Any] = {  # element type -> numpy type
    TensorProto.FLOAT16: np.float16, TensorProto.BFLOAT16: ml_dtypes.bfloat16,
    TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.INT8: np.int8,
    TensorProto.INT16: np.int16, TensorProto.INT32: np.int32, TensorProto.INT64: np.int64,
    TensorProto.UINT8: np.uint8, TensorProto.UINT16: np.uint16, TensorProto.UINT32: np.uint32,
    TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_}


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _fuse(model: onnx.ModelProto, passes: str, canonical: bool = True) -> onnx.ModelProto:
    """``passes`` run on a copy of ``model``; without ``canonical``, the runner does not insert
    the canonical pass (one that ``passes`` names still runs)."""
    if canonical:
        return rewrite(_copy(model), passes)[0]
    return PassManager(parse_passes(passes), canonical=False).run(Graph(_copy(model))).model()


def _count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(n.op_type == op_type for n in model.graph.node)


def _loads_with_defaults(model: onnx.ModelProto) -> None:
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _same_outputs(original: onnx.ModelProto, out: onnx.ModelProto,
                  feeds: list[dict[str, np.ndarray]], tol: float | None) -> None:
    """Within ``tol`` of each output's scale; ``None``: bit for bit (NaN where NaN)."""
    _loads_with_defaults(out)
    for feed in feeds:
        want, got = run(original, feed), run(out, feed)
        assert want.keys() == got.keys()
        for name, e in want.items():
            if tol is None:
                np.testing.assert_array_equal(got[name], e, err_msg=name)
            else:
                stats, err = scaled_stats(name, e, got[name], tol)
                assert stats.within, f"{stats.line()} (scaled max {err:.3g})"


# ---- the facts the Cast rule rests on ----------------------------------------------------------

def _values(t: int) -> np.ndarray:
    """Every value of a 16-bit or smaller type; the extremes and a spread of others of a wider
    one."""
    dt = np.dtype(NP[t])
    if t == TensorProto.BOOL:
        return np.array([False, True])
    if dt.itemsize <= 2:
        return np.arange(2 ** (8 * dt.itemsize), dtype=f"u{dt.itemsize}").view(dt)
    if dt.kind == "f":
        info = np.finfo(dt)
        edge = [info.min, info.max, info.tiny, info.smallest_subnormal, -0.0, np.inf, -np.inf,
                np.nan]
        magnitudes = 10.0 ** np.arange(-30, 30, 60 / 4096)
        spread = np.random.default_rng(0).standard_normal(4096) * magnitudes
        return np.concatenate([np.array(edge), spread]).astype(dt)
    info = np.iinfo(dt)
    spread = np.random.default_rng(0).integers(info.min, info.max, 4096, dtype=dt, endpoint=True)
    return np.concatenate([np.array([info.min, info.max, 0, 1, -1 if info.min else 2], dt),
                           spread])


def _round_trips(t: int, w: int) -> bool:
    x = _values(t)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        back = x.astype(NP[w]).astype(NP[t])
    if np.dtype(NP[t]).kind in "fV" or NP[t] is ml_dtypes.bfloat16:  # bits, NaN as any NaN
        with np.errstate(invalid="ignore"):
            nan = np.isnan(x.astype(np.float64))
        bits = f"u{x.itemsize}"
        return bool(np.array_equal(back.view(bits)[~nan], x.view(bits)[~nan])
                    and np.isnan(back[nan].astype(np.float64)).all())
    return bool(np.array_equal(back, x))


@pytest.mark.parametrize("t", list(EXACT_WIDER), ids=lambda t: TensorProto.DataType.Name(t))
def test_every_listed_cast_pair_returns_every_value(t: int) -> None:
    for w in EXACT_WIDER[t]:
        assert _round_trips(t, w), (TensorProto.DataType.Name(t), TensorProto.DataType.Name(w))


LOSSY = [(F, H), (F, TensorProto.BFLOAT16), (H, TensorProto.BFLOAT16), (TensorProto.DOUBLE, F),
         (TensorProto.INT64, TensorProto.INT32), (TensorProto.INT32, F), (TensorProto.INT16, H),
         (TensorProto.INT16, TensorProto.INT8)]


@pytest.mark.parametrize(("t", "w"), LOSSY)
def test_pairs_left_out_lose_values(t: int, w: int) -> None:
    assert w not in EXACT_WIDER.get(t, ())
    assert not _round_trips(t, w)


def test_float16_round_trip_in_onnx_runtime() -> None:
    """The oracle agrees: float16 -> float -> float16 in ONNX Runtime returns all 65536 bit
    patterns (NaNs as NaNs), and the canonical pass removes the pair."""
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float16[65536] x) => (float16[65536] y) {
  up = Cast <to = 1> (x)
  y1 = Cast <to = 10> (up)
  y = Identity (y1)
}""")
    x = _values(H)
    got = run(model, {"x": x})["y"]
    assert np.array_equal(got.view(np.uint16)[~np.isnan(x)], x.view(np.uint16)[~np.isnan(x)])
    assert np.isnan(got[np.isnan(x)]).all()
    assert [n.op_type for n in _fuse(model, "canonical").graph.node] == ["Identity"]


# ---- the runner --------------------------------------------------------------------------------

def test_the_runner_runs_canonical_before_the_first_pattern_pass() -> None:
    def labels(spec: str) -> list[str]:
        return [p.label for p in with_canonical(parse_passes(spec))]

    assert labels("attention") == ["canonical", "attention=std"]
    assert labels("fold,layernorm,gelu") == ["fold", "canonical", "layernorm=std", "gelu=std"]
    assert labels("fp16") == ["fp16=mixed"]  # no pattern pass: nothing to canonicalize for
    assert labels("attention,canonical") == ["attention=std", "canonical"]  # where it is named
    default = labels("default")
    assert default.count("canonical") == 1 and default[:4] == ["fold", "noop", "cse", "canonical"]
    plugins = labels("plugins")
    assert plugins.count("canonical") == 1 and plugins[:4] == ["fold", "noop", "cse", "canonical"]
    # labels stay what the user named; the stats show the pass that ran
    pipeline = Pipeline("attention")
    assert pipeline.labels == ["attention=std"]
    assert [p.name for p in pipeline.manager.passes] == ["canonical", "attention"]
    assert [p.name for p in PassManager(parse_passes("attention"), canonical=False).passes] == [
        "attention"]


_FP16_ATTENTION = """<ir_version: 8, opset_import: ["" : 17]>
g (float16[2,2,4,8] q, float16[2,2,4,8] k, float16[2,2,4,8] v) => (float16[2,2,4,8] y) {
  kt = Transpose <perm = [0, 1, 3, 2]> (k)
  s = MatMul (q, kt)
  p = Softmax <axis = -1> (s)
  up = Cast <to = 1> (p)
  back = Cast <to = 10> (up)
  y = MatMul (back, v)
}"""


def test_match_explains_what_run_sees(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``onnxpass match --explain`` explains the passes on the canonical graph, as run fuses."""
    model = onnx.parser.parse_model(_FP16_ATTENTION)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["match", "--passes", "attention", "--explain", str(path)]) == 0
    assert "attention=std/attention: 4 ops ending at MatMul 'y'" in capsys.readouterr().out
    out = _fuse(model, "attention")
    assert [n.op_type for n in out.graph.node] == ["Attention"]
    assert _count(_fuse(model, "attention", canonical=False), "Attention") == 0
    narrowing = onnx.parser.parse_model(_FP16_ATTENTION.replace("float16[", "float[").replace(
        "<to = 1>", "<to = 10>").replace("<to = 10> (up)", "<to = 1> (up)"))
    onnx.save(narrowing, path)
    capsys.readouterr()
    assert main(["match", "--passes", "attention", "--explain", str(path)]) == 0
    assert "matched" not in capsys.readouterr().out
    assert _count(_fuse(narrowing, "attention"), "Attention") == 0


# ---- float16 TorchScript exports ---------------------------------------------------------------

DECODERS = ("gpt2", "llama", "qwen2")
FP16 = "ts16-fp16-static"


Export = tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]


class Float16Exports:
    """``name`` of tests/models_heldout.py in float16, exported by TorchScript at opset 16 with
    static shapes, once each; ``eager``: transformers' eager attention instead of its default
    (SDPA)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[tuple[str, bool], Export] = {}

    def get(self, name: str, eager: bool) -> Export:
        if (name, eager) not in self._done:
            from tests.models import half
            from tests.models_heldout import MODELS, export, feeds

            built = MODELS[name]()
            if eager:
                built.module.model.set_attn_implementation("eager")  # type: ignore[union-attr, operator]
            built = half(built)
            path = self.root / f"{name}-{'eager' if eager else 'sdpa'}.onnx"
            export(built, FP16, path)
            self._done[(name, eager)] = (onnx.load(str(path)), feeds(name, built, FP16))
        return self._done[(name, eager)]


@pytest.fixture(scope="module")
def fp16_exports(tmp_path_factory: pytest.TempPathFactory) -> Float16Exports:
    return Float16Exports(tmp_path_factory.mktemp("canonical_fp16"))


@pytest.mark.parametrize("passes", ["default", "attention"])
@pytest.mark.parametrize("name", DECODERS)
def test_float16_eager_attention_fuses(fp16_exports: Float16Exports, name: str,
                                       passes: str) -> None:
    """Eager attention in float16: softmax(dtype=float32).to(float16) exports as Softmax ->
    Cast(float) -> Cast(float16) (Llama, Qwen2; GPT-2 casts to its own type): every attention
    fuses, through the default pipeline and through ``--passes attention`` alone."""
    original, feeds = fp16_exports.get(name, eager=True)
    layers = _count(original, "Softmax")
    assert layers == 2
    out = _fuse(original, passes)
    assert _count(out, "Attention") == layers and _count(out, "Softmax") == 0
    # The right-padded feed only: in the left-padded one the first queries of a row see no key,
    # and what the original computes there, a softmax of scores + finfo(float16).min rounded in
    # float16 (its ulp there is 32), no fused attention reproduces (GPT-2 fuses without
    # canonical and differs there as much); canonical alone is bit for bit on every feed.
    _same_outputs(original, out, feeds[:1], 1e-2)
    _same_outputs(original, _fuse(original, "canonical"), feeds, None)
    if name != "gpt2" and passes == "attention":  # the Cast pair is what stopped the pattern
        assert _count(_fuse(original, passes, canonical=False), "Attention") == 0


@pytest.mark.parametrize("name", DECODERS)
def test_canonical_is_exact_on_float16_sdpa_exports(fp16_exports: Float16Exports,
                                                    name: str) -> None:
    """The default (SDPA) float16 exports: TorchScript builds the bool mask as float32 0/-inf, so
    the float16 scores are Cast to float32 before the mask Add, V is Cast to float32 and the
    attention returns float32 (no Cast pair to remove: attention.py's business, see
    test_attention.py). What canonical rewrites there it rewrites bit for bit."""
    original, feeds = fp16_exports.get(name, eager=False)
    out = _fuse(original, "canonical")
    _same_outputs(original, out, feeds, None)
    assert len(_fuse(out, "canonical").graph.node) == len(out.graph.node)  # a fixpoint


# ---- decoder self-attention on (B*heads, T, d) tensors -----------------------------------------

class _BartStyleAttention(torch.nn.Module):
    """Self-attention as BART, Marian and Whisper wrote it before transformers' attention
    refactor: heads flattened into the batch, two bmm, and the probabilities viewed as
    (B, heads, T, S) and back (the output_attentions copy) before the value bmm. The causal mask
    is added on the 3-D scores."""

    def __init__(self, d: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.h, self.d = heads, d // heads
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, -1, self.h, self.d).transpose(1, 2).reshape(b * self.h, -1, self.d)

        q, k, v = heads(self.q(x) * self.d ** -0.5), heads(self.k(x)), heads(self.v(x))
        w = torch.softmax(torch.bmm(q, k.transpose(1, 2)) + mask, dim=-1)
        s = w.shape[-1]
        w = w.view(b, self.h, t, s).view(b * self.h, t, s)
        out = torch.bmm(w, v).view(b, self.h, t, self.d).transpose(1, 2).reshape(b, t, -1)
        return self.o(out)


class _BartStyleDecoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(_BartStyleAttention() for _ in range(2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x, mask)
        return x


def _bart_style(path: Path, dynamic: bool) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    torch.manual_seed(0)
    model = _BartStyleDecoder().eval()
    x = torch.randn(2, 6, 32)
    mask = torch.triu(torch.full((6, 6), -1e4), 1)
    axes = {"x": {0: "batch", 1: "T"}, "mask": {0: "T", 1: "T"}} if dynamic else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x, mask), str(path), input_names=["x", "mask"],
                          output_names=["y"], dynamo=False, opset_version=17, dynamic_axes=axes)
    return onnx.load(str(path)), {"x": x.numpy(), "mask": mask.numpy()}


def test_decoder_reshape_pair_hides_no_attention(tmp_path: Path) -> None:
    """Static shapes: ``--passes attention`` alone fuses both layers (without canonical it fuses
    none: the Reshape pair sits between the Softmax and the value MatMul)."""
    original, feed = _bart_style(tmp_path / "bart.onnx", dynamic=False)
    out = _fuse(original, "attention")
    assert _count(out, "Attention") == 2 and _count(out, "Softmax") == 0
    assert _count(_fuse(original, "attention", canonical=False), "Attention") == 0
    _same_outputs(original, out, [feed], 1e-5)
    _same_outputs(original, _fuse(original, "canonical"), [feed], None)


def test_decoder_reshape_pair_dynamic_through_default(tmp_path: Path) -> None:
    """Batch and sequence dynamic: the default pipeline's fold gives the pair's dims as symbols
    (2*batch, T, T), which the canonical pass's proof reads."""
    original, feed = _bart_style(tmp_path / "bart.onnx", dynamic=True)
    out, result = rewrite(_copy(original), "default")
    assert _count(out, "Attention") == 2
    assert next(s for s in result.stats if s.name == "canonical").matches >= 2
    _same_outputs(original, out, [feed], 1e-5)


def test_whisper_decoder_probabilities_reach_the_value_matmul(tmp_path: Path) -> None:
    """Whisper (tests/models_heldout.py, its decoder self-attention on 3-D tensors): after
    canonical, the value MatMul of every attention reads the Softmax itself."""
    from tests.models_heldout import MODELS, export, feeds

    built = MODELS["whisper"]()
    path = tmp_path / "whisper.onnx"
    export(built, "ts14-static", path)
    original = onnx.load(str(path))
    out = _fuse(original, "canonical")

    def reading_softmax(model: onnx.ModelProto) -> int:
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        return sum(n.op_type == "MatMul" and producers.get(n.input[0]) == "Softmax"
                   for n in model.graph.node)

    assert _count(original, "Softmax") == 6  # encoder 2, decoder 2 self and 2 cross
    assert reading_softmax(original) == 4  # the decoder's self-attention: a Reshape pair between
    assert reading_softmax(out) == 6
    _same_outputs(original, out, feeds("whisper", built, "ts14-static"), None)


# ---- tf2onnx's LayerNorm -----------------------------------------------------------------------

def _tf2onnx_layernorm() -> onnx.ModelProto:
    """LayerNorm over the last axis of a (batch, seq, 16) x as tf2onnx writes it: the means as
    ReduceSum * (1/16), var = E[x^2] - E[x]^2, eps broadcast by Expand to a shape computed from
    Shape(x), Reciprocal(Sqrt(.)), gamma and beta."""
    rng = np.random.default_rng(0)
    inits = {
        "axes": np.array([-1], np.int64), "inv_n": np.array(1 / 16, np.float32),
        "eps": np.array(1e-3, np.float32), "zero": np.array([0], np.int64),
        "minus_one": np.array([-1], np.int64), "one": np.array([1], np.int64),
        "gamma": (1 + 0.2 * rng.standard_normal(16)).astype(np.float32),
        "beta": (0.1 * rng.standard_normal(16)).astype(np.float32),
    }
    n = helper.make_node
    nodes = [
        n("ReduceSum", ["x", "axes"], ["sum"], keepdims=1), n("Mul", ["sum", "inv_n"], ["mean"]),
        n("Mul", ["x", "x"], ["sq"]), n("ReduceSum", ["sq", "axes"], ["sum_sq"], keepdims=1),
        n("Mul", ["sum_sq", "inv_n"], ["mean_sq"]), n("Mul", ["mean", "mean"], ["mean2"]),
        n("Sub", ["mean_sq", "mean2"], ["var"]),
        n("Shape", ["x"], ["shape"]), n("Slice", ["shape", "zero", "minus_one"], ["lead"]),
        n("Concat", ["lead", "one"], ["target"], axis=0),
        n("Expand", ["eps", "target"], ["eps_b"]), n("Add", ["var", "eps_b"], ["var_eps"]),
        n("Sqrt", ["var_eps"], ["std"]), n("Reciprocal", ["std"], ["inv"]),
        n("Sub", ["x", "mean"], ["centered"]), n("Mul", ["centered", "inv"], ["normed"]),
        n("Mul", ["normed", "gamma"], ["scaled"]), n("Add", ["scaled", "beta"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tf2onnx_layernorm", [helper.make_tensor_value_info("x", F, ["batch", "seq", 16])],
        [helper.make_tensor_value_info("y", F, ["batch", "seq", 16])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_tf2onnx_layernorm_fuses_after_canonical() -> None:
    original = _tf2onnx_layernorm()
    onnx.checker.check_model(original)
    out, result = rewrite(_copy(original), "layernorm")
    assert [n.op_type for n in out.graph.node] == ["LayerNormalization"]
    assert [s.name for s in result.stats] == ["canonical", "layernorm=std"]
    assert _count(_fuse(original, "layernorm", canonical=False), "LayerNormalization") == 0
    feeds = [random_inputs(original, seed=s, dims={"batch": 3, "seq": 5}) for s in (0, 1)]
    _same_outputs(original, out, feeds, 1e-5)
    canonical = _fuse(original, "canonical")
    assert {"ReduceSum", "Expand"} & {n.op_type for n in canonical.graph.node} == set()
    _same_outputs(original, canonical, feeds, None)  # 1/16 is a power of two: bit for bit


# ---- a term added between a no-op Reshape pair (BART-style decoder masks) -----------------------

def mask_between_reshapes(t_shape: list[int], a: list[int]) -> onnx.ModelProto:
    """scores (6, 5, 7) viewed as ``a``, + t, viewed back as (6, 5, 7), then Softmax and a
    MatMul by V: Whisper's decoder self-attention on (B*heads, T, S) scores, static."""
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Reshape", ["s", "a"], ["s4"]),
             helper.make_node("Add", ["s4", "t"], ["sm"]),
             helper.make_node("Reshape", ["sm", "b"], ["s3"]),
             helper.make_node("Softmax", ["s3"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    inits = [numpy_helper.from_array(np.array(a, np.int64), "a"),
             numpy_helper.from_array(np.array([6, 5, 7], np.int64), "b")]
    graph = helper.make_graph(
        nodes, "mask_between_reshapes",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [6, 5, 4]),
         helper.make_tensor_value_info("kt", TensorProto.FLOAT, [6, 4, 7]),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [6, 7, 4]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, t_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 5, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _mask_feeds(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    feeds = []
    for seed in (0, 1):
        f = random_inputs(model, seed=seed)
        f["t"] = np.where(f["t"] > 0.5, -np.inf, 0.0).astype(np.float32)  # a padding-like mask
        feeds.append(f)
    return feeds


@pytest.mark.parametrize("a", [[2, 3, 5, 7], [-1, 3, 5, 7]], ids=["static", "minus_one"])
def test_term_between_reshapes_moves_onto_the_scores_and_attention_fuses(a: list[int]) -> None:
    """dynamo writes the view as (-1, heads, T, S): the -1 is a dim t has too (B)."""
    original = mask_between_reshapes([2, 1, 5, 7], a)
    canon = _fuse(original, "canonical")
    reshaped = [n for n in canon.graph.node if n.op_type == "Reshape"]
    assert [n.input[0] for n in reshaped if n.input[0] == "s"] == []  # the scores stay 3-D
    assert _count(canon, "Expand") == 1
    _same_outputs(original, canon, _mask_feeds(original), None)  # bit for bit
    fused = _fuse(original, "attention")
    assert _count(fused, "Attention") == 1 and _count(fused, "Softmax") == 0
    _same_outputs(original, fused, _mask_feeds(original), 1e-5)


@pytest.mark.parametrize(("t_shape", "a", "why"), [
    ([2, 3, 5, 1, 7], [2, 3, 5, 7], "may broadcast the middle value"),
    ([2, 1, 5, 7], [2, -1, 5, 7], "is not a shape t expands to"),
    ([1, 1, 5, 7], [-1, 3, 5, 7], "is not a shape t expands to"),
], ids=["term_broadcasts_up", "minus_one_where_t_broadcasts", "minus_one_over_a_batch_of_1"])
def test_term_between_reshapes_near_misses(t_shape: list[int], a: list[int], why: str) -> None:
    original = mask_between_reshapes(t_shape, a)
    g = Graph(_copy(original))
    g.refresh_types()
    from onnxpass.passes.canonical import Canonical

    reasons = " | ".join(str(x) for x in Canonical().explain(g) if x.rule == "add-in-reshape-pair")
    assert why in reasons, reasons
    canon = _fuse(original, "canonical")
    assert sum(n.input[0] == "s" and n.op_type == "Reshape" for n in canon.graph.node) == 1
