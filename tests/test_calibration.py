"""Calibration data and statistics for the int8/fp8 passes (onnxpass/calibration.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import calibrate as ort_calibrate
from PIL import Image

from onnxpass import rewrite
from onnxpass.calibration import CalibrationData, calibrate, calibration_data
from onnxpass.errors import OnnxpassError
from onnxpass.images import load_image_folder
from onnxpass.modelio import load_model
from onnxpass.verify import random_inputs

CLASSIFIER = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,H,W] pixel_values, float[N,4] scale) => (float[N,4] logits)
  <float[3,4] w = {1,0,0,1, 0,1,0,1, 0,0,1,1}> {
  pooled = GlobalAveragePool (pixel_values)
  flat = Flatten (pooled)
  proj = MatMul (flat, w)
  logits = Mul (proj, scale)
}""")
W1 = np.array([[1, 2, 3, 4, 5], [-1, -2, -3, -4, -5], [0.5] * 5, [1, 0, 1, 0, 1]], np.float32)
W2 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [-1, -1, -1]], np.float32)
MLP = onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,3] y) <float[4,5] w1 = {{{','.join(map(str, W1.ravel()))}}},
                                    float[5,3] w2 = {{{','.join(map(str, W2.ravel()))}}}> {{
  h = MatMul (x, w1)
  r = Relu (h)
  y = MatMul (r, w2)
}}""")
TWO_INPUTS = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x, int64[N] mask) => (float[N,4] y) {
  m = Cast <to = 1> (mask)
  u = Unsqueeze (m, axes)
  y = Mul (x, u)
}""".replace("axes)", "one)").replace("{\n  m", "<int64[1] one = {1}> {\n  m"))


def _mlp_tensors(x: np.ndarray) -> dict[str, np.ndarray]:
    h = x @ W1
    r = np.maximum(h, 0)
    return {"x": x, "h": h, "r": r, "y": r @ W2}


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """11 RGB PNGs of 6x5 pixels, and a text file to ignore."""
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    for k in range(11):
        Image.fromarray(rng.integers(0, 256, (5, 6, 3), np.uint8)).save(d / f"{k:02d}.png")
    (d / "notes.txt").write_text("not an image")
    return d


# ---- data ---------------------------------------------------------------------------------------

def test_image_folder_streams_batches(photos: Path) -> None:
    data = calibration_data(str(photos), CLASSIFIER, batch_size=4, seed=5)
    assert (data.batches, data.samples, data.random) == (3, 11, False)
    assert data.describe() == f"11 images from {photos}/ in 3 batches"
    batches = list(data)
    assert [b["pixel_values"].shape for b in batches] == [(4, 3, 5, 6), (4, 3, 5, 6),
                                                          (3, 3, 5, 6)]
    assert all(b["pixel_values"].dtype == np.float32 and b["scale"].dtype == np.float32
               for b in batches)
    assert [b["scale"].shape for b in batches] == [(4, 4), (4, 4), (3, 4)]
    np.testing.assert_array_equal(batches[1]["scale"],
                                  random_inputs(CLASSIFIER, 6, {"N": 4, "H": 5, "W": 6})["scale"])
    whole = load_image_folder(photos, CLASSIFIER)["pixel_values"]
    np.testing.assert_array_equal(np.concatenate([b["pixel_values"] for b in batches]), whole)
    assert [b["pixel_values"].shape[0] for b in data] == [4, 4, 3]  # iterates again


def test_static_batch_takes_full_batches(photos: Path) -> None:
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,5,5,3] img) => (float[2,3] y) { y = ReduceMean <axes = [1, 2]> (img) }""")
    data = calibration_data(str(photos), model, batch_size=4)
    assert (data.batches, data.samples) == (5, 10)
    assert data.describe() == (f"10 images from {photos}/ in 5 batches (1 image left out: input "
                               "'img' takes batches of exactly 2)")
    assert {b["img"].shape for b in data} == {(2, 5, 5, 3)}


def test_npz_one_batch(tmp_path: Path) -> None:
    x = np.ones((3, 4), np.float32)
    np.savez(tmp_path / "calib.npz", x=x, mask=np.array([1, 0, 1]))
    data = calibration_data(str(tmp_path / "calib.npz"), TWO_INPUTS)
    assert (data.batches, data.samples, data.describe()) == (1, 3, "1 batch from calib.npz")
    (batch,) = list(data)
    np.testing.assert_array_equal(batch["x"], x)
    assert batch["mask"].dtype == np.int64


def test_npz_many_batches(tmp_path: Path) -> None:
    x = np.arange(8 * 2 * 4, dtype=np.float32).reshape(8, 2, 4)
    np.savez(tmp_path / "calib.npz", x=x, mask=np.ones((8, 2), np.int64))
    data = calibration_data(str(tmp_path / "calib.npz"), TWO_INPUTS)
    assert (data.batches, data.samples, data.describe()) == (8, 16, "8 batches from calib.npz")
    batches = list(data)
    assert len(batches) == 8 and batches[5]["x"].shape == (2, 4)
    np.testing.assert_array_equal(batches[5]["x"], x[5])


def test_random(tmp_path: Path) -> None:
    data = calibration_data("random:3", TWO_INPUTS, seed=7)
    assert (data.source, data.batches, data.samples, data.random) == ("random", 3, 6, True)
    assert data.describe() == ("random inputs (3 batches of 2, seed 7): scales do not reflect "
                               "real data")
    batches = list(data)
    np.testing.assert_array_equal(batches[2]["x"], random_inputs(TWO_INPUTS, 9)["x"])
    default = calibration_data("random", TWO_INPUTS, dims={"N": 5})
    assert (default.batches, default.samples) == (4, 20)
    assert default.describe().startswith("random inputs (4 batches of 5, seed 0)")


def _png_text(d: Path) -> None:
    d.mkdir()
    (d / "a.png").write_text("not a png")


NO_IMAGE_INPUT = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N,16] x) => (float[N,16] y) { y = Relu (x) }""")


@pytest.mark.parametrize("case,where,message", [
    ("missing", "nowhere", "nowhere: no such folder or file"),
    ("empty", "empty", "empty: no images (.png, .jpg, .jpeg, .bmp, .ppm, .webp) in this folder"),
    ("only_text", "text", "text: no images"),
    ("not_images", "fake/a.png", "a.png: cannot read the image"),
    ("mixed_sizes", "mixed/b.png", "b.png: 7x5, but a.png is 6x5; input 'pixel_values' has "
                                   "symbolic H/W, so all images must share one size"),
    ("no_image_input", "photos", "photos: the model has no image input; an image input is a "
                                 "float input of rank 4"),
    ("static_batch", "photos", "photos: 11 images, but input 'img' takes a batch of exactly 16"),
    ("mean_npz", "one.npz", "one.npz: mean/std apply only to a folder of images"),
    ("random_k", "random:0", "random:0: expected random or random:K with K a positive number"),
    ("npz_unreadable", "bad.npz", "bad.npz: not an .npz file of inputs"),
    ("npz_missing", "one.npz", "one.npz: lacks input 'mask'; the model's inputs: x float[N,4], "
                               "mask int64[N]"),
    ("npz_extra", "extra.npz", "extra.npz: 'labels' is not an input of the model; its inputs: "
                               "x float[N,4], mask int64[N]"),
    ("npz_rank", "rank.npz", "rank.npz: input 'x' has shape (2,2,2,4) (rank 4), the model expects "
                             "float[N,4]: rank 2 for one batch, 3 for many"),
    ("npz_dtype_one", "f64.npz", "f64.npz: input 'x' is float64, the model expects float[N,4]"),
    ("npz_dtype_many", "f64s.npz", "f64s.npz (3 batches along dim 0): input 'x' is float64, the "
                                   "model expects float[N,4]"),
    ("npz_dim_one", "dim.npz", "dim.npz: input 'x' has shape (2,5), the model expects float[N,4]: "
                               "dim 1 must be 4"),
    ("npz_dim_many", "dims.npz", "dims.npz (3 batches along dim 0): input 'x' has shape (2,5), "
                                 "the model expects float[N,4]: dim 1 must be 4"),
    ("npz_counts", "counts.npz", "counts.npz: inputs hold different numbers of batches along "
                                 "dim 0 ('x' 3, 'mask' 2)"),
    ("npz_one_and_many", "mix.npz", "mix.npz: 'x' hold many batches (one dim more than the "
                                    "input), 'mask' one batch"),
])
def test_bad_input(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str,
                   where: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    model, kw = TWO_INPUTS, {}
    f32, i64 = np.float32, np.int64
    npz = {"one.npz": {"x": np.ones((2, 4), f32)},
           "extra.npz": {"x": np.ones((2, 4), f32), "mask": np.ones(2, i64),
                         "labels": np.ones(2, i64)},
           "rank.npz": {"x": np.ones((2, 2, 2, 4), f32), "mask": np.ones(2, i64)},
           "f64.npz": {"x": np.ones((2, 4)), "mask": np.ones(2, i64)},
           "f64s.npz": {"x": np.ones((3, 2, 4)), "mask": np.ones((3, 2), i64)},
           "dim.npz": {"x": np.ones((2, 5), f32), "mask": np.ones(2, i64)},
           "dims.npz": {"x": np.ones((3, 2, 5), f32), "mask": np.ones((3, 2), i64)},
           "counts.npz": {"x": np.ones((3, 2, 4), f32), "mask": np.ones((2, 2), i64)},
           "mix.npz": {"x": np.ones((3, 2, 4), f32), "mask": np.ones(2, i64)}}
    if where in npz:
        np.savez(tmp_path / where, **npz[where])  # type: ignore[arg-type]
    if case == "empty":
        (tmp_path / "empty").mkdir()
    elif case == "only_text":
        (tmp_path / "text").mkdir()
        (tmp_path / "text" / "a.txt").write_text("")
    elif case == "not_images":
        _png_text(tmp_path / "fake")
        where, model = "fake", CLASSIFIER
    elif case == "mixed_sizes":
        (tmp_path / "mixed").mkdir()
        Image.new("RGB", (6, 5)).save(tmp_path / "mixed" / "a.png")
        Image.new("RGB", (7, 5)).save(tmp_path / "mixed" / "b.png")
        where, model = "mixed", CLASSIFIER
    elif case == "no_image_input":
        model = NO_IMAGE_INPUT
    elif case == "static_batch":
        model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
            g (float[16,5,5,3] img) => (float[16,5,5,3] y) { y = Relu (img) }""")
    elif case == "mean_npz":
        kw = {"mean": [0.5] * 3}
    elif case == "npz_unreadable":
        (tmp_path / where).write_text("not a zip")
    with pytest.raises(OnnxpassError) as e:
        calibration_data(where, model, batch_size=4, **kw)  # type: ignore[arg-type]
    text = str(e.value)
    assert message in text and len(text.splitlines()) == 1, text
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".onnx") == []


# ---- statistics ---------------------------------------------------------------------------------

def _npz_data(tmp_path: Path, x: np.ndarray, name: str = "calib.npz") -> CalibrationData:
    np.savez(tmp_path / name, x=x)
    return calibration_data(str(tmp_path / name), MLP)


def test_max_is_numpys_and_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).standard_normal((3, 16, 4)).astype(np.float32)
    want = {k: float(np.abs(v).max()) for k, v in _mlp_tensors(x.reshape(-1, 4)).items()}
    lines: list[str] = []
    streamed = calibrate(MLP, ["x", "h", "r", "y"], _npz_data(tmp_path, x), "max",
                         progress=lines.append)
    assert streamed == want
    assert lines == ["calibration: batch 1/3 (max)", "calibration: batch 3/3 (max)"]
    whole = calibrate(MLP, ["x", "h", "r", "y"], _npz_data(tmp_path, x.reshape(-1, 4), "one.npz"))
    assert whole == want
    assert not [p.name for p in tmp_path.iterdir() if p.suffix != ".npz"]  # nothing in the cwd


def test_percentile_and_entropy_within_max(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((2, 64, 4)).astype(np.float32)
    x[0, 0, 0] = 40.0  # one outlier: the estimates clip it, max does not
    data = _npz_data(tmp_path, x)
    top = calibrate(MLP, ["x", "h"], data, "max")
    assert top["x"] == 40.0
    pct = calibrate(MLP, ["x", "h"], data, "percentile", percentile=99.0)
    assert all(0 < pct[k] <= top[k] for k in top) and pct["x"] < 10
    ent = calibrate(MLP, ["x"], data, "entropy")
    assert 0 < ent["x"] <= top["x"]
    assert all(isinstance(v, float) for v in [*pct.values(), *ent.values()])


def test_zero_tensor_and_graph_output(tmp_path: Path) -> None:
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[N,4] y) <float zero = {0.0}> {
          z = Mul (x, zero)
          y = Add (z, x)
        }""")
    data = calibration_data("random:2", model)
    for method in ("max", "percentile", "entropy"):
        amax = calibrate(model, ["z", "y"], data, method)
        assert amax["z"] == 0.0 and amax["y"] > 0, method


def test_only_the_named_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, list[str]]] = []
    create = ort_calibrate.create_calibrator

    def spy(path: Path, *args: Any, **kwargs: Any) -> Any:
        calibrator = create(path, *args, **kwargs)
        augmented = Path(kwargs["augmented_model_path"])
        outputs = [o.name for o in onnx.load(str(augmented)).graph.output]
        seen.append((str(augmented.parent), outputs))
        return calibrator

    monkeypatch.setattr(ort_calibrate, "create_calibrator", spy)
    data = calibration_data("random:1", MLP)
    assert set(calibrate(MLP, ["h"], data, "max")) == {"h"}
    assert set(calibrate(MLP, ["r"], data, "percentile")) == {"r"}
    assert seen[0][1] == ["y", "h_ReduceMin", "h_ReduceMax"] and seen[1][1] == ["y", "r"]
    assert all(Path(folder) != Path.cwd() and not Path(folder).exists() for folder, _ in seen)


def test_model_path_and_external_data(tmp_path: Path) -> None:
    onnx.save(MLP, tmp_path / "mlp.onnx")
    external = tmp_path / "ext"
    external.mkdir()
    raw = onnx.ModelProto()
    raw.CopyFrom(MLP)
    for t in raw.graph.initializer:  # the parser writes float_data, never external
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
    onnx.save(raw, external / "mlp.onnx", save_as_external_data=True, size_threshold=0,
              location="mlp.onnx.data")
    data = calibration_data("random:2", MLP)
    want = calibrate(MLP, ["r"], data)
    assert calibrate(tmp_path / "mlp.onnx", ["r"], data) == want
    assert calibrate(external / "mlp.onnx", ["r"], data) == want
    in_place = load_model(external / "mlp.onnx")  # weights still on disk, as a pass sees them
    assert in_place.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    assert calibrate(in_place, ["r"], data, base_dir=external) == want
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ext", "mlp.onnx", "mlp.onnx",
                                                          "mlp.onnx.data"]


def test_plugin_function_node() -> None:
    """A LayerNormPlugin node (custom domain, local function) between a MatMul and a Relu."""
    gamma = "1.0, 0.5, 2.0, -1.0, 1.5, 0.25, 3.0, 1.0"
    model = onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N,5,8] x) => (float[N,5,8] y) <float[8,8] w = {{{','.join(['0.25'] * 64)}}},
        float[8] gamma = {{{gamma}}}, float[8] beta = {{0, 0.1, -0.2, 0.3, 0, 1, -1, 0.5}},
        float eps = {{1e-5}}, float two = {{2.0}}> {{
      p = MatMul (x, w)
      q = Add (p, x)
      mean = ReduceMean <axes = [-1]> (q)
      d = Sub (q, mean)
      sq = Pow (d, two)
      var = ReduceMean <axes = [-1]> (sq)
      var_eps = Add (var, eps)
      std = Sqrt (var_eps)
      normed = Div (d, std)
      scaled = Mul (normed, gamma)
      ln = Add (scaled, beta)
      y = Relu (ln)
    }}""")
    fused, _ = rewrite(model, "layernorm=plugin")
    plugin = next(n for n in fused.graph.node if n.domain == "onnxpass")
    assert fused.functions and plugin.op_type == "LayerNormPlugin"
    names = ["q", plugin.output[0], "y"]
    data = calibration_data("random:2", fused)
    amax = calibrate(fused, names, data, "max")
    x = np.concatenate([b["x"] for b in data])
    q = x @ np.full((8, 8), 0.25, np.float32) + x
    assert amax["q"] == pytest.approx(float(np.abs(q).max()), rel=1e-6)
    assert 0 < amax[names[2]] <= amax[names[1]]
    assert set(calibrate(fused, names, data, "percentile")) == set(names)


@pytest.mark.parametrize("tensors,method,message", [
    (["h", "nope"], "max", "calibration: 'nope' is not a tensor of the model's main graph"),
    (["h"], "minmax", "calibration method 'minmax': expected one of max, entropy, percentile"),
    (["m"], "max", "calibration: tensor 'm' is int64; only float and float16 tensors"),
])
def test_calibrate_errors(tensors: list[str], method: str, message: str) -> None:
    model = MLP
    if tensors == ["m"]:
        model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
            g (float[N,4] x) => (int64[2] m) { m = Shape (x) }""")
    with pytest.raises(OnnxpassError) as e:
        calibrate(model, tensors, calibration_data("random:1", model), method)
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1


def test_failing_batch_named(capfd: pytest.CaptureFixture[str]) -> None:
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[2,4] y) <int64[2] shape = {2, 4}> {
          r = Relu (x)
          y = Reshape (r, shape)
        }""")
    assert calibrate(model, ["r"], calibration_data("random:2", model), "max")["r"] > 0
    with pytest.raises(OnnxpassError) as e:
        calibrate(model, ["r"], calibration_data("random:2", model, dims={"N": 3}), "max")
    text = str(e.value)
    assert text.startswith("random: calibration batch 1/2 failed in ONNX Runtime's calibrator: ")
    assert len(text.splitlines()) == 1
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # ORT's prints and warnings stay quiet
