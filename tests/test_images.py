"""Inputs from a folder of images (onnxpass/images.py) and ``compare --inputs DIR``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from onnxpass.cli import main
from onnxpass.errors import OnnxpassError
from onnxpass.images import IMAGENET_MEAN, IMAGENET_STD, feeds_from, load_image_folder
from onnxpass.verify import random_inputs

CLASSIFIER = """
<ir_version: 8, opset_import: ["" : 17]>
g ({X} pixel_values{EXTRA}) => (float[N,5] logits) <float[{C},5] w = {W}> {
  pooled = GlobalAveragePool (pixel_values)
  flat = Flatten (pooled)
  logits = MatMul (flat, w)
}"""
CHW = "float[N,3,8,8]"


def _model(x: str = CHW, extra: str = "", channels: int = 3) -> onnx.ModelProto:
    w = ",".join(str(0.1 * k) for k in range(channels * 5))
    text = CLASSIFIER.replace("{X}", x).replace("{EXTRA}", extra)
    return onnx.parser.parse_model(text.replace("{C}", str(channels)).replace("{W}", "{" + w + "}"))


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """b.png 12x10 RGB, a.png 8x8 RGB, c.png 6x5 grayscale, and a text file to ignore."""
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), np.uint8)).save(d / "b.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 256, (5, 6), np.uint8), mode="L").save(d / "c.png")
    (d / "notes.txt").write_text("not an image")
    return d


def _by_hand(path: Path, size: tuple[int, int], mode: str = "RGB") -> np.ndarray:
    """Resize, then (x / 255 - mean) / std; H, W, C."""
    pixels = np.asarray(Image.open(path).convert(mode).resize(size, Image.Resampling.BILINEAR),
                        np.float64).reshape(size[1], size[0], -1)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if mode == "RGB" else ((0.5,), (0.5,))
    return (pixels / 255 - np.array(mean)) / np.array(std)


def test_batch_in_name_order_and_values(folder: Path) -> None:
    feeds = load_image_folder(folder, _model())
    x = feeds["pixel_values"]
    assert list(feeds) == ["pixel_values"] and x.shape == (3, 3, 8, 8) and x.dtype == np.float32
    for k, name in enumerate(["a.png", "b.png", "c.png"]):
        want = _by_hand(folder / name, (8, 8)).transpose(2, 0, 1)
        np.testing.assert_allclose(x[k], want, rtol=1e-5, atol=1e-5)


def test_nhwc_gray_and_mean_std(folder: Path) -> None:
    x = load_image_folder(folder, _model("float[N,8,8,3]"))["pixel_values"]
    assert x.shape == (3, 8, 8, 3)
    np.testing.assert_allclose(x[1], _by_hand(folder / "b.png", (8, 8)), rtol=1e-5, atol=1e-5)
    gray = load_image_folder(folder, _model("float[N,1,4,6]", channels=1))["pixel_values"]
    assert gray.shape == (3, 1, 4, 6)
    np.testing.assert_allclose(gray[2, 0], _by_hand(folder / "c.png", (6, 4), "L")[..., 0],
                               rtol=1e-5, atol=1e-5)
    x = load_image_folder(folder, _model(), mean=[0.5] * 3, std=[0.5] * 3)["pixel_values"]
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9


def test_other_inputs_random_for_the_batch(folder: Path) -> None:
    model = _model(extra=", float[N,4] scale, int64[N] ids")
    feeds = load_image_folder(folder, model, seed=3)
    assert feeds["scale"].shape == (3, 4) and feeds["ids"].shape == (3,)
    np.testing.assert_array_equal(feeds["scale"], random_inputs(model, 3, {"N": 3})["scale"])


def test_symbolic_hw_needs_one_size(folder: Path, tmp_path: Path) -> None:
    same = tmp_path / "same"
    same.mkdir()
    for name in ("x.png", "y.jpg"):
        Image.new("RGB", (7, 5), (255, 0, 0)).save(same / name)
    x = load_image_folder(same, _model("float[N,3,H,W]"))["pixel_values"]
    assert x.shape == (2, 3, 5, 7)
    np.testing.assert_allclose(x[0, :, 0, 0], (np.array([1, 0, 0]) - IMAGENET_MEAN) / IMAGENET_STD,
                               rtol=1e-5)
    with pytest.raises(OnnxpassError, match="b.png: 12x10, but a.png is 8x8;.*one size"):
        load_image_folder(folder, _model("float[N,3,H,W]"))


def test_feeds_from_dispatches(folder: Path, tmp_path: Path) -> None:
    model = _model()
    np.testing.assert_array_equal(feeds_from(None, model, 1, {"N": 4})["pixel_values"],
                                  random_inputs(model, 1, {"N": 4})["pixel_values"])
    np.savez(tmp_path / "in.npz", pixel_values=np.ones((1, 3, 8, 8), np.float32))
    assert feeds_from(tmp_path / "in.npz", model, 0, None)["pixel_values"].shape == (1, 3, 8, 8)
    assert feeds_from(str(folder), model, 0, None)["pixel_values"].shape == (3, 3, 8, 8)
    with pytest.raises(OnnxpassError, match="mean/std apply only to a folder of images"):
        feeds_from(tmp_path / "in.npz", model, 0, None, mean=[0.5])


@pytest.mark.parametrize("case,message", [
    ("empty", "empty: no images (.png, .jpg, .jpeg, .bmp, .ppm, .webp) in this folder"),
    ("no_image_input", "the model has no image input; an image input is a float input of rank 4 "
                       "with 1 or 3 channels (NCHW or NHWC); its inputs: x float[N,16]"),
    ("two_image_inputs", "the model has 2 image inputs (pixel_values, mask)"),
    ("static_batch", "3 images, but input 'pixel_values' takes a batch of exactly 2"),
    ("mean_size", "mean has 2 values, but the image input has 3 channel(s)"),
])
def test_errors(folder: Path, tmp_path: Path, case: str, message: str) -> None:
    model, where, kw = _model(), folder, {}
    if case == "empty":
        where = tmp_path / "empty"
        where.mkdir()
        (where / "readme.md").write_text("")
    elif case == "no_image_input":
        model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
            g (float[N,16] x) => (float[N,16] y) { y = Relu (x) }""")
    elif case == "two_image_inputs":
        model = _model(extra=", float[N,1,8,8] mask")
    elif case == "static_batch":
        model = _model("float[2,3,8,8]")
    else:
        kw = {"mean": [0.5, 0.5]}
    with pytest.raises(OnnxpassError) as e:
        load_image_folder(where, model, **kw)
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("flag", ["--mean", "--std"])
def test_cli_bad_mean_std(folder: Path, tmp_path: Path, capsys, flag: str) -> None:  # type: ignore[no-untyped-def]
    a = _save(_model(), tmp_path / "a.onnx")
    assert main(["compare", str(a), str(a), "--inputs", str(folder), flag, "0.5,x,0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"onnxpass: error: {flag} '0.5,x,0.5': expected comma-separated numbers, "
                   "e.g. 0.5,0.5,0.5")


def test_cli_compare_images(folder: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a = _save(_model(), tmp_path / "a.onnx")
    assert main(["compare", str(a), str(a), "--inputs", str(folder), "--json",
                 "--mean", "0.5,0.5,0.5", "--std", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][0]["top1"] == 1.0


@pytest.mark.parametrize("x,message", [("float[N,16]", "the model has no image input"),
                                       ("float[2,3,8,8]", "3 images, but input 'pixel_values'")])
def test_cli_compare_image_errors(folder: Path, tmp_path: Path, capsys, x: str,  # type: ignore[no-untyped-def]
                                  message: str) -> None:
    model = _model(x) if "8,8" in x else onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]> g (float[N,16] x) => (float[N,16] y) {
        y = Relu (x) }""")
    a = _save(model, tmp_path / "a.onnx")
    assert main(["compare", str(a), str(a), "--inputs", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"onnxpass: error: {folder}: ")
    assert message in err


def test_without_pillow(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(OnnxpassError, match="images: reading images needs Pillow: pip install"):
        load_image_folder(folder, _model())
