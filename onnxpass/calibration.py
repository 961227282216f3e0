"""Calibration for the int8/fp8 passes: batches of real inputs and the range of each activation.

:func:`calibration_data` turns what the user gave (``--calibration``) into batches of feeds,
checked against the model before any work and made one batch at a time:

- a folder of images: the model's image input gets the images (``batch_size`` per batch, or the
  input's static batch size), read, resized and normalized as :mod:`onnxpass.images` does; its
  other inputs get random values. Only the image headers are read up front.
- an ``.npz``: one array per model input, named after it. An array of the input's rank is one
  batch; an array with one more leading dim holds K batches along it (K equal for all inputs).
  The file is read whole, as ``--inputs`` reads it.
- ``random`` or ``random:K``: K batches (4 by default) of random inputs, seed ``seed + k``. Its
  scales say nothing about real data, and :meth:`CalibrationData.describe` says so.

:func:`calibrate` measures, per named tensor, the magnitude ``amax`` a symmetric quantizer maps to
its largest code, with ONNX Runtime's calibrators run one batch at a time (their per-call state
merges; memory stays at one batch's activations):

- ``max``: the largest ``|x|`` seen over all batches. Exact, but one outlier sets the scale.
- ``percentile``: the value below which ``percentile`` % of all ``|x|`` fall, read off a
  histogram of ``|x|`` (2048 bins, widened as larger values arrive).
- ``entropy``: the clipping threshold whose quantized histogram (256 levels over [-t, t], as
  int8's 255 codes) differs least, in KL divergence, from the 2048-bin histogram of all ``x``,
  as TensorRT's entropy calibrator chooses. ORT's default of 128 bins leaves a single candidate
  (the max), hence 2048. Its search runs in Python, about a second per tensor: minutes on models
  with hundreds of activations.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from unittest import mock

import numpy as np
import onnx

from onnxpass.errors import OnnxpassError
from onnxpass.images import scan_image_folder
from onnxpass.modelio import first_line, load_model, save_model
from onnxpass.verify import check_feeds, describe_input, describe_inputs, load_inputs, random_inputs

if TYPE_CHECKING:
    from onnxruntime.quantization.calibrate import CalibrationDataReader

METHODS = ("max", "entropy", "percentile")
RANDOM = "random"
DEFAULT_RANDOM_BATCHES = 4
PROGRESS_EVERY_S = 2.0
_CALIBRATED_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)  # what ORT calibrates


Feeds = dict[str, np.ndarray]


@dataclass
class CalibrationData:
    """Batches of feeds for a model, made lazily (a folder of 10k images is never all in memory).
    Iterate it for the batches, as often as needed; :func:`calibration_data` makes one."""

    source: str  # what the user gave: a folder, an .npz path, or "random"
    batches: int  # how many batches iteration yields
    samples: int  # how many samples in all (images, npz rows, random rows)
    random: bool  # True only for the explicit random source
    _text: str = field(repr=False)
    _make: Callable[[], Iterator[Feeds]] = field(repr=False, compare=False)

    def __iter__(self) -> Iterator[Feeds]:
        return self._make()

    def describe(self) -> str:
        """One line for the user: what the batches are and where they come from."""
        return self._text


def calibration_data(source: str, model: onnx.ModelProto, *, batch_size: int = 8,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     seed: int = 0, dims: dict[str, int] | None = None) -> CalibrationData:
    """The batches ``source`` gives for ``model``: a folder of images, an ``.npz``, ``random`` or
    ``random:K`` (see the module docstring). Everything is checked here, before any batch is made;
    each problem raises :class:`OnnxpassError` naming the file or folder. ``mean``/``std``
    normalize images; ``dims`` sets symbolic dims of random inputs (random sources, and the
    non-image inputs of a folder)."""
    source = str(source)
    if source == RANDOM or source.startswith(RANDOM + ":"):
        _no_mean_std(source, mean, std)
        return _random_data(source, model, seed, dims)
    if not Path(source).exists():
        raise OnnxpassError(f"{source}: no such folder or file; expected a folder of images, an "
                            ".npz of inputs, random or random:K")
    if Path(source).is_dir():
        return _folder_data(source, model, batch_size, mean, std, seed, dims)
    _no_mean_std(source, mean, std)
    return _npz_data(source, model)


def _no_mean_std(source: str, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
    if mean is not None or std is not None:
        raise OnnxpassError(f"{source}: mean/std apply only to a folder of images")


def _random_data(source: str, model: onnx.ModelProto, seed: int, dims: dict[str, int] | None
                 ) -> CalibrationData:
    count = source.partition(":")[2]
    if count and not (count.isdigit() and int(count) > 0):
        raise OnnxpassError(f"{source}: expected random or random:K with K a positive number "
                            "of batches")
    k_batches = int(count) if count else DEFAULT_RANDOM_BATCHES
    rows = _rows(random_inputs(model, seed, dims))

    def make() -> Iterator[Feeds]:
        for k in range(k_batches):
            yield random_inputs(model, seed + k, dims)

    text = (f"random inputs ({_count(k_batches, 'batch')} of {rows}, seed {seed}): scales do not "
            "reflect real data")
    return CalibrationData(RANDOM, k_batches, k_batches * rows, True, text, make)


def _folder_data(source: str, model: onnx.ModelProto, batch_size: int,
                 mean: Sequence[float] | None, std: Sequence[float] | None, seed: int,
                 dims: dict[str, int] | None) -> CalibrationData:
    images = scan_image_folder(source, model, mean=mean, std=std)
    n = len(images.files)
    static = images.static_batch
    if static is None and batch_size < 1:
        raise OnnxpassError(f"{source}: batch size {batch_size}: expected at least 1")
    size = static or batch_size
    if n < size and static is not None:
        raise OnnxpassError(f"{source}: {n} images, but input {images.input.name!r} takes a "
                            f"batch of exactly {static}")
    used = n - n % size if static is not None else n  # a static batch takes only full batches
    groups = [images.files[i:i + size] for i in range(0, used, size)]

    def make() -> Iterator[Feeds]:
        for k, files in enumerate(groups):
            yield images.feeds(model, files, seed=seed + k, dims=dims)

    where = source if source.endswith(os.sep) else source + "/"
    text = f"{_count(used, 'image')} from {where} in {_count(len(groups), 'batch')}"
    if used < n:
        text += (f" ({_count(n - used, 'image')} left out: input {images.input.name!r} takes "
                 f"batches of exactly {static})")
    return CalibrationData(source, len(groups), used, False, text, make)


def _npz_data(source: str, model: onnx.ModelProto) -> CalibrationData:
    arrays = load_inputs(source)
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    by_name = {vi.name: vi for vi in model.graph.input}
    unknown = [k for k in arrays if k not in by_name]
    if unknown:
        raise OnnxpassError(f"{source}: {', '.join(map(repr, unknown))} "
                            f"{'is not an input' if len(unknown) == 1 else 'are not inputs'} "
                            f"of the model; its inputs: {describe_inputs(model)}")
    missing = [vi.name for vi in inputs if vi.name not in arrays]
    if missing:
        raise OnnxpassError(f"{source}: lacks input{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(map(repr, missing))}; the model's inputs: "
                            f"{describe_inputs(model)}")
    many = _holds_many(source, arrays, by_name)
    if not many:
        check_feeds(model, arrays, source)

        def one() -> Iterator[Feeds]:
            yield arrays

        return CalibrationData(source, 1, _rows(arrays), False,
                               f"1 batch from {Path(source).name}", one)
    counts = {k: len(a) for k, a in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k!r} {c}" for k, c in counts.items())
        raise OnnxpassError(f"{source}: inputs hold different numbers of batches along dim 0 "
                            f"({listed}); all must hold the same")
    k_batches = next(iter(counts.values()))
    if k_batches == 0:
        raise OnnxpassError(f"{source}: holds 0 batches (dim 0 of every array is 0)")
    first = {k: a[0] for k, a in arrays.items()}  # every batch has its shapes and dtypes
    check_feeds(model, first, f"{source} ({k_batches} batches along dim 0)")

    def make() -> Iterator[Feeds]:
        for k in range(k_batches):
            yield {name: a[k] for name, a in arrays.items()}

    text = f"{_count(k_batches, 'batch')} from {Path(source).name}"
    return CalibrationData(source, k_batches, k_batches * _rows(first), False, text, make)


def _holds_many(source: str, arrays: Feeds, by_name: dict[str, onnx.ValueInfoProto]) -> bool:
    """Whether the arrays hold many batches (one more dim than each input's rank) or one."""
    verdicts: dict[str, bool] = {}
    for name, a in arrays.items():
        tt = by_name[name].type.tensor_type
        if not tt.HasField("shape"):  # unknown rank: the other inputs decide
            continue
        rank = len(tt.shape.dim)
        if a.ndim not in (rank, rank + 1):
            expects = describe_input(by_name[name]).split(" ", 1)[1]
            raise OnnxpassError(f"{source}: input {name!r} has shape {_shape(a.shape)} (rank "
                                f"{a.ndim}), the model expects {expects}: rank {rank} for one "
                                f"batch, {rank + 1} for many (batches along dim 0)")
        verdicts[name] = a.ndim == rank + 1
    if len(set(verdicts.values())) > 1:
        one = [k for k, v in verdicts.items() if not v]
        many = [k for k, v in verdicts.items() if v]
        raise OnnxpassError(f"{source}: {', '.join(map(repr, many))} hold many batches (one dim "
                            f"more than the input), {', '.join(map(repr, one))} one batch; all "
                            "arrays must hold the same")
    return any(verdicts.values())


def _rows(feeds: Feeds) -> int:
    """Samples in one batch: dim 0 of the first input that has one."""
    return next((int(a.shape[0]) for a in feeds.values() if np.ndim(a) > 0), 1)


def _shape(shape: tuple[int, ...]) -> str:
    return f"({','.join(map(str, shape))})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else ('es' if noun.endswith('ch') else 's')}"


# ---- statistics ---------------------------------------------------------------------------------

def calibrate(model: onnx.ModelProto | str | os.PathLike[str], tensors: Sequence[str],
              data: CalibrationData, method: str = "max", *,
              progress: Callable[[str], None] | None = None,
              percentile: float = 99.999, base_dir: str | os.PathLike[str] = ""
              ) -> dict[str, float]:
    """``amax`` (>= 0: the largest magnitude as ``method`` estimates it) of each of ``tensors``
    over ``data``, by ONNX Runtime's calibrator for the method (module docstring), symmetric.

    ``model`` holds its weights in memory, or in external data relative to ``base_dir`` (a
    pass's ``graph.base_dir``: weights left in the input file), or is a path. It may carry local
    functions (plugin nodes), which ONNX Runtime runs. ``tensors`` are float32/float16 values of
    its main graph; the calibrator observes exactly those. Batches are fed one per call, so
    memory stays at one batch's activations; ``progress`` gets ``calibration: batch k/N
    (method)`` for the first and last batch and every 2 s between. Everything ONNX Runtime
    writes stays in a temporary folder. Problems (unknown tensors, a batch ONNX Runtime fails
    on) raise :class:`OnnxpassError` in one line. ``entropy`` is slow on big models."""
    from onnxruntime.quantization import calibrate as ort_calibrate

    if method not in METHODS:
        raise OnnxpassError(f"calibration method {method!r}: expected one of {', '.join(METHODS)}")
    if not 0 < percentile <= 100:
        raise OnnxpassError(f"percentile {percentile:g}: expected a number in (0, 100]")
    wanted = list(dict.fromkeys(tensors))
    if not wanted:
        return {}
    if not isinstance(model, onnx.ModelProto):
        base_dir = str(Path(model).resolve().parent)
        model = load_model(model)  # external data stays on disk: save_model copies it
    _check_tensors(model, wanted)
    say = progress or (lambda _: None)
    options: dict[str, Any] = {"symmetric": True}
    if method == "percentile":
        options.update(num_bins=2048, percentile=percentile)
    elif method == "entropy":
        options.update(num_bins=2048, num_quantized_bins=256)
    kind = {"max": ort_calibrate.CalibrationMethod.MinMax,
            "entropy": ort_calibrate.CalibrationMethod.Entropy,
            "percentile": ort_calibrate.CalibrationMethod.Percentile}[method]

    with tempfile.TemporaryDirectory(prefix="onnxpass-calibrate-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model, path, str(base_dir))  # external stays external, as do models > 2 GB
        big = any(p != path for p in Path(tmp).iterdir())  # a data file: keep the weights there
        select = _selection(wanted)
        try:
            with _quiet(), mock.patch.object(ort_calibrate.CalibraterBase,
                                             "select_tensors_to_calibrate", select):
                calibrator = ort_calibrate.create_calibrator(
                    path, augmented_model_path=str(Path(tmp) / "augmented_model.onnx"),
                    calibrate_method=kind, use_external_data_format=big,
                    providers=["CPUExecutionProvider"], extra_options=options)
        except OnnxpassError:
            raise
        except Exception as e:
            raise OnnxpassError(f"calibration: ONNX Runtime cannot prepare the model: "
                                f"{first_line(e)}") from None
        last = 0.0
        for k, feeds in enumerate(data, 1):
            now = time.monotonic()
            if k in (1, data.batches) or now - last >= PROGRESS_EVERY_S:
                say(f"calibration: batch {k}/{data.batches} ({method})")
                last = now
            try:
                with _quiet():
                    calibrator.collect_data(_OneBatch.reader(feeds))
            except Exception as e:
                raise OnnxpassError(f"{data.source}: calibration batch {k}/{data.batches} failed "
                                    f"in ONNX Runtime's calibrator: {first_line(e)}") from None
        if method != "max":
            say(f"calibration: {method} thresholds of {_count(len(wanted), 'tensor')}")
        try:
            with _quiet():
                ranges = calibrator.compute_data()
        except Exception as e:
            raise OnnxpassError(f"calibration ({method}): computing the ranges failed: "
                                f"{first_line(e)}") from None
        del calibrator  # its session holds the files in tmp open
    amax = {}
    for name in wanted:
        lo, hi = ranges[name].range_value
        value = float(max(np.max(np.abs(lo)), np.max(np.abs(hi))))
        if not np.isfinite(value):
            raise OnnxpassError(f"calibration ({method}): tensor {name!r} has no finite range on "
                                f"{data.describe()} (NaN or infinite values)")
        amax[name] = value
    return amax


def _check_tensors(model: onnx.ModelProto, wanted: list[str]) -> None:
    g = model.graph
    known = ({vi.name for vi in g.input} | {t.name for t in g.initializer}
             | {o for n in g.node for o in n.output})
    missing = [t for t in wanted if t not in known]
    if missing:
        raise OnnxpassError(f"calibration: {', '.join(map(repr, missing[:5]))}"
                            f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''} "
                            f"{'is not a tensor' if len(missing) == 1 else 'are not tensors'} "
                            "of the model's main graph")


def _selection(wanted: list[str]) -> Callable[..., tuple[set[str], dict[str, Any]]]:
    """A stand-in for ORT's ``select_tensors_to_calibrate``: exactly ``wanted``, typed by the
    shape inference ORT ran when it loaded the model."""
    def select(self: object, model: onnx.ModelProto) -> tuple[set[str], dict[str, Any]]:
        g = model.graph
        infos = {vi.name: vi for vi in [*g.value_info, *g.output, *g.input]}
        untyped = [t for t in wanted if t not in infos
                   or not infos[t].type.tensor_type.elem_type]
        if untyped:
            raise OnnxpassError(f"calibration: ONNX shape inference gives no type for "
                                f"{', '.join(map(repr, untyped))}")
        for t in wanted:
            elem = infos[t].type.tensor_type.elem_type
            if elem not in _CALIBRATED_TYPES:
                raise OnnxpassError(f"calibration: tensor {t!r} is "
                                    f"{onnx.TensorProto.DataType.Name(elem).lower()}; only "
                                    "float and float16 tensors are calibrated")
        return set(wanted), infos

    return select


class _OneBatch:
    """A calibration data reader (ORT's protocol: ``get_next`` until None) of one batch."""

    def __init__(self, feeds: Feeds) -> None:
        self._feeds: Feeds | None = feeds

    @classmethod
    def reader(cls, feeds: Feeds) -> CalibrationDataReader:
        # ORT's reader ABC recognizes any class with get_next (its __subclasshook__)
        return cast("CalibrationDataReader", cls(feeds))

    def get_next(self) -> Feeds | None:
        feeds, self._feeds = self._feeds, None
        return feeds


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's calibrators print their progress, its sessions log warnings (unused initializers) and
    numpy warns on empty histograms: none of it is for onnxpass's user."""
    import onnxruntime as ort

    # fatal only: an error surfaces as the exception this module reports in one line; the
    # calibrator's sessions log through this default logger
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), \
                np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        ort.set_default_logger_severity(2)  # ORT's default: warnings
