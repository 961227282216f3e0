"""Model inputs from a folder of images: ``onnxpass compare A B --inputs DIR``.

:func:`load_image_folder` reads the images of a folder (sorted by name) into a batch for the
model's one image input and fills its other inputs with :func:`onnxpass.verify.random_inputs`.
Each image is converted to RGB (L for one channel), resized bilinearly to the input's static H, W,
scaled to [0, 1] and normalized ``(x - mean) / std``: by default with the ImageNet mean
(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) for 3 channels, and 0.5 / 0.5 for 1 channel.
:func:`scan_image_folder` checks a folder (headers only) and :meth:`ImageFolder.feeds` decodes
any subset of its files into a batch: what calibration streams batch by batch
(onnxpass/calibration.py). :func:`feeds_from` picks random inputs, an image folder or an ``.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
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
    images = scan_image_folder(folder, model, mean=mean, std=std, layout=layout)
    batch = images.static_batch
    if batch is not None and batch != len(images.files):
        raise OnnxpassError(f"{images.folder}: {len(images.files)} images, but input "
                            f"{images.input.name!r} takes a batch of exactly {batch}")
    return images.feeds(model, images.files, seed=seed, dims=dims)


@dataclass(frozen=True)
class ImageFolder:
    """A folder of images checked against a model's image input (:func:`scan_image_folder`):
    its files, the size they are resized to and how they are normalized. Pixels are decoded only
    by :meth:`feeds`, a batch at a time."""

    folder: Path
    files: tuple[Path, ...]  # sorted by name
    input: onnx.ValueInfoProto  # the model's image input
    nhwc: bool
    size: tuple[int, int]  # (width, height) of the batch: the input's, or the images' if symbolic
    mean: np.ndarray  # per channel
    std: np.ndarray

    @property
    def channels(self) -> int:
        return self.input.type.tensor_type.shape.dim[3 if self.nhwc else 1].dim_value

    @property
    def static_batch(self) -> int | None:
        """The batch size the image input requires, None when its batch dim is symbolic."""
        n = self.input.type.tensor_type.shape.dim[0]
        return n.dim_value if n.HasField("dim_value") else None

    def feeds(self, model: onnx.ModelProto, files: Sequence[Path], seed: int = 0,
              dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        """``files`` (of this folder) decoded into one batch for the image input; the model's
        other inputs random (:func:`onnxpass.verify.random_inputs` with ``seed``) for that batch.
        Symbolic batch, H, W dims take the batch's; ``dims`` sets the remaining symbolic dims."""
        from PIL import Image  # scan_image_folder checked that Pillow is there

        mode = "RGB" if self.channels == 3 else "L"
        pixels: list[np.ndarray] = []
        for p in files:
            try:
                with Image.open(p) as im:
                    im = im.convert(mode)
            except Exception as e:
                raise OnnxpassError(f"{p}: cannot read the image ({e})") from None
            if im.size != self.size:
                im = im.resize(self.size, Image.Resampling.BILINEAR)
            pixels.append(np.asarray(im, np.float32).reshape(self.size[1], self.size[0],
                                                             self.channels))
        batch = (np.stack(pixels) / 255.0 - self.mean) / self.std  # N, H, W, C
        if not self.nhwc:
            batch = batch.transpose(0, 3, 1, 2)
        n_dim, *hwc = self.input.type.tensor_type.shape.dim
        h_dim, w_dim = (hwc[0], hwc[1]) if self.nhwc else (hwc[1], hwc[2])
        filled = dict(dims or {})
        for d, value in ((n_dim, len(files)), (w_dim, self.size[0]), (h_dim, self.size[1])):
            if d.dim_param:
                filled[d.dim_param] = value
        feeds = random_inputs(model, seed, filled)
        dtype = helper.tensor_dtype_to_np_dtype(self.input.type.tensor_type.elem_type)
        feeds[self.input.name] = np.ascontiguousarray(batch, dtype=dtype)
        return feeds


def scan_image_folder(folder: str | os.PathLike[str], model: onnx.ModelProto, *,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      layout: str = "auto") -> ImageFolder:
    """Check ``folder`` against the model's image input without decoding pixels: it holds images,
    each one's header reads, they share one size where the input's H/W are symbolic, and
    ``mean``/``std`` fit the channels. Raises :class:`OnnxpassError` naming the first problem."""
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
    _, *hwc = vi.type.tensor_type.shape.dim
    c_dim, h_dim, w_dim = (hwc[2], hwc[0], hwc[1]) if nhwc else hwc
    channels = c_dim.dim_value
    mean_c = _per_channel(folder, "mean", mean, (IMAGENET_MEAN if channels == 3 else GRAY_MEAN),
                          channels)
    std_c = _per_channel(folder, "std", std, (IMAGENET_STD if channels == 3 else GRAY_STD),
                         channels)
    if not np.all(std_c):
        raise OnnxpassError(f"{folder}: std must not be 0")

    static = (w_dim.dim_value, h_dim.dim_value)  # PIL sizes are (width, height); 0: symbolic
    target: tuple[int, int] | None = None
    for p in files:
        try:
            with Image.open(p) as im:  # reads the header only
                size = im.size
        except Exception as e:
            raise OnnxpassError(f"{p}: cannot read the image ({e})") from None
        if target is None:
            target = (static[0] or size[0], static[1] or size[1])
        if any(not s and i != t for s, i, t in zip(static, size, target)):
            raise OnnxpassError(f"{p}: {size[0]}x{size[1]}, but {files[0].name} is "
                                f"{target[0]}x{target[1]}; input {vi.name!r} has symbolic H/W, "
                                "so all images must share one size")
    assert target is not None  # files is not empty
    return ImageFolder(folder, tuple(files), vi, nhwc, target, mean_c, std_c)


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
