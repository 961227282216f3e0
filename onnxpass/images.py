"""Model inputs from a folder of images: ``onnxpass compare A B --inputs DIR``.

:func:`load_image_folder` reads the images of a folder (sorted by name) into a batch for the
model's one image input and fills its other inputs with :func:`onnxpass.verify.random_inputs`.
Each image is converted to RGB (L for one channel), resized bilinearly to the input's static H, W,
scaled to [0, 1] and normalized ``(x - mean) / std``: by default with the ImageNet mean
(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) for 3 channels, and 0.5 / 0.5 for 1 channel.
:func:`feeds_from` picks random inputs, an image folder or an ``.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxpass.errors import OnnxpassError
from onnxpass.verify import describe_inputs, load_inputs, random_inputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.5,), (0.5,)


def feeds_from(inputs: str | os.PathLike[str] | None, model: onnx.ModelProto, seed: int = 0,
               dims: dict[str, int] | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Feeds for ``model``: random (``inputs`` None), a folder of images, or an ``.npz``."""
    if inputs and Path(inputs).is_dir():
        return load_image_folder(inputs, model, mean=mean, std=std, seed=seed, dims=dims)
    if mean is not None or std is not None:
        raise OnnxpassError(f"{inputs or 'random inputs'}: mean/std apply only to a folder "
                            "of images")
    return load_inputs(inputs) if inputs else random_inputs(model, seed, dims)


def load_image_folder(folder: str | os.PathLike[str], model: onnx.ModelProto, *,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      layout: str = "auto", seed: int = 0, dims: dict[str, int] | None = None
                      ) -> dict[str, np.ndarray]:
    """The images in ``folder`` as a batch for the model's image input, other inputs random.

    ``layout`` is ``auto``, ``NCHW`` or ``NHWC``. Symbolic batch (and H, W) dims take the number
    (and size) of the images, for the other inputs too; ``dims`` sets their remaining symbolic dims.
    """
    try:
        from PIL import Image
    except ImportError:
        raise OnnxpassError(f"{folder}: reading images needs Pillow: pip install pillow") from None
    folder = Path(folder)
    if not folder.is_dir():
        raise OnnxpassError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file()
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise OnnxpassError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    vi, nhwc = image_input(model, layout, folder)
    n_dim, *hwc = vi.type.tensor_type.shape.dim
    c_dim, h_dim, w_dim = (hwc[2], hwc[0], hwc[1]) if nhwc else hwc
    channels = c_dim.dim_value
    mean_c = _per_channel(folder, "mean", mean, (IMAGENET_MEAN if channels == 3 else GRAY_MEAN),
                          channels)
    std_c = _per_channel(folder, "std", std, (IMAGENET_STD if channels == 3 else GRAY_STD),
                         channels)
    if not np.all(std_c):
        raise OnnxpassError(f"{folder}: std must not be 0")
    if n_dim.HasField("dim_value") and n_dim.dim_value != len(files):
        raise OnnxpassError(f"{folder}: {len(files)} images, but input {vi.name!r} takes a batch "
                            f"of exactly {n_dim.dim_value}")

    static = (w_dim.dim_value, h_dim.dim_value)  # PIL sizes are (width, height); 0: symbolic
    pixels: list[np.ndarray] = []
    target: tuple[int, int] | None = None
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB" if channels == 3 else "L")
        except Exception as e:
            raise OnnxpassError(f"{p}: cannot read the image ({e})") from None
        if target is None:
            target = (static[0] or im.size[0], static[1] or im.size[1])
        if any(not s and i != t for s, i, t in zip(static, im.size, target)):
            raise OnnxpassError(f"{p}: {im.size[0]}x{im.size[1]}, but {files[0].name} is "
                                f"{target[0]}x{target[1]}; input {vi.name!r} has symbolic H/W, "
                                "so all images must share one size")
        if im.size != target:
            im = im.resize(target, Image.Resampling.BILINEAR)
        pixels.append(np.asarray(im, np.float32).reshape(target[1], target[0], channels))
    batch = (np.stack(pixels) / 255.0 - mean_c) / std_c  # N, H, W, C
    if not nhwc:
        batch = batch.transpose(0, 3, 1, 2)

    assert target is not None  # files is not empty
    filled = dict(dims or {})
    for d, value in ((n_dim, len(files)), (w_dim, target[0]), (h_dim, target[1])):
        if d.dim_param:
            filled[d.dim_param] = value
    feeds = random_inputs(model, seed, filled)
    dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    feeds[vi.name] = np.ascontiguousarray(batch, dtype=dtype)
    return feeds


def image_input(model: onnx.ModelProto, layout: str = "auto", where: object = "model"
                ) -> tuple[onnx.ValueInfoProto, bool]:
    """The model's one image input and whether it is NHWC: a float input of rank 4 whose channel
    dim (dim 1 for NCHW, the last dim for NHWC when dim 1 is not 1 or 3) is 1 or 3."""
    if layout not in ("auto", "NCHW", "NHWC"):
        raise OnnxpassError(f"layout {layout!r}: expected auto, NCHW or NHWC")
    inits = {t.name for t in model.graph.initializer}
    found = []
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        if vi.name in inits or tt.elem_type not in _FLOATS or len(tt.shape.dim) != 4:
            continue
        dim1, last = (tt.shape.dim[k].dim_value in (1, 3) for k in (1, 3))
        if dim1 and layout != "NHWC":
            found.append((vi, False))
        elif last and (layout == "NHWC" or (layout == "auto" and not dim1)):
            found.append((vi, True))
    if len(found) != 1:
        what = "no image input" if not found else \
            f"{len(found)} image inputs ({', '.join(vi.name for vi, _ in found)})"
        layouts = "NCHW or NHWC" if layout == "auto" else layout
        raise OnnxpassError(f"{where}: the model has {what}; an image input is a float input of "
                            f"rank 4 with 1 or 3 channels ({layouts}); its inputs: "
                            f"{describe_inputs(model)}")
    return found[0]


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def _per_channel(folder: Path, what: str, given: Sequence[float] | None,
                 default: Sequence[float], channels: int) -> np.ndarray:
    values = np.asarray(default if given is None else given, np.float32)
    if values.size not in (1, channels):
        raise OnnxpassError(f"{folder}: {what} has {values.size} values, but the image input has "
                            f"{channels} channel(s)")
    return np.broadcast_to(values.reshape(-1), (channels,))
