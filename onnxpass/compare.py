"""``onnxpass compare A B``: two models on the same inputs, per-output error statistics.

An .onnx runs in ONNX Runtime (the graph as written, see :func:`onnxpass.verify.session`), an
engine (.plan, .engine, .trt) in TensorRT (:class:`onnxpass.trt_build.engine.Engine`), both on the
same feeds: random with a seed, an ``.npz``, or a folder of images
(:func:`onnxpass.images.load_image_folder`). Per output: :func:`onnxpass.verify.error_stats`,
and for classifier-like outputs (2-D float, ``[N, C]`` with C >= 2) top-1 agreement (same
argmax) and top-5 agreement (A's top-1 class is among B's top 5; when C >= 5); for other float
outputs (embeddings, maps) the min and mean cosine similarity of each sample's values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxpass.errors import OnnxpassError
from onnxpass.graph import load_model
from onnxpass.images import feeds_from
from onnxpass.tensorrt_available import tensorrt_missing
from onnxpass.verify import (
    ErrorStats,
    check_dims,
    check_feeds,
    check_same_inputs,
    error_stats,
    load_inputs,
    run,
)

Feeds = dict[str, np.ndarray]

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
TENSORRT_MISSING = ("{path}: a TensorRT engine, and TensorRT is not installed: install it with "
                    "`pip install tensorrt` on a machine with an NVIDIA GPU and NVIDIA's package "
                    "index (https://pypi.nvidia.com)")


@dataclass
class OutputComparison:
    stats: ErrorStats
    top1: float | None = None  # fraction of rows with the same argmax
    top5: float | None = None  # fraction of rows whose A-argmax is in B's top 5
    cosine: tuple[float, float] | None = None  # min and mean over samples (embeddings)

    def line(self) -> str:
        top = "".join(f"; top-{k} agreement {v:.1%}" for k, v in ((1, self.top1), (5, self.top5))
                      if v is not None)
        cos = f"; cosine min {self.cosine[0]:.4f} mean {self.cosine[1]:.4f}" \
            if self.cosine is not None and self.top1 is None else ""
        return self.stats.line() + top + cos

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self.stats), "top1": self.top1, "top5": self.top5,
                "cosine_min": None if self.cosine is None else self.cosine[0],
                "cosine_mean": None if self.cosine is None else self.cosine[1]}


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    """Min and mean over samples (dim 0) of the cosine similarity of A's and B's outputs, each
    sample flattened: how a quantized embedding model agrees with the float one. None for a
    non-float output, a shape mismatch or a sample of zeros."""
    if a.shape != b.shape or a.dtype.kind != "f" or a.ndim < 1 or a.size == 0:
        return None
    x = a.reshape(a.shape[0], -1).astype(np.float64) if a.ndim > 1 else a[None].astype(np.float64)
    y = b.reshape(x.shape).astype(np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    if not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)) or np.any(norms == 0):
        return None
    cos = np.sum(x * y, axis=1) / norms
    return float(cos.min()), float(cos.mean())


def topk_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float | None:
    """Fraction of rows of a classifier output ``[N, C]`` where A's top-1 class is in B's top k."""
    if a.ndim != 2 or a.shape != b.shape or a.dtype.kind != "f" or a.shape[1] < max(k, 2):
        return None
    top_a = np.argmax(a, axis=1)
    top_b = np.argsort(-b.astype(np.float64), axis=1, kind="stable")[:, :k]
    return float(np.mean([t in row for t, row in zip(top_a, top_b)]))


def is_engine(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in ENGINE_SUFFIXES


def runner(path: str | os.PathLike[str]) -> Callable[[Feeds], Feeds]:
    """``feeds -> outputs`` for an .onnx (ONNX Runtime) or an engine (TensorRT)."""
    if not is_engine(path):
        return lambda feeds: run(str(path), feeds)
    if tensorrt_missing() is not None:
        raise OnnxpassError(TENSORRT_MISSING.format(path=path))
    from onnxpass.trt_build.engine import Engine

    return Engine(str(path)).infer


def compare(a: str | os.PathLike[str], b: str | os.PathLike[str], *,
            inputs: str | os.PathLike[str] | None = None, seed: int = 0,
            dims: dict[str, int] | None = None, rtol: float = 1e-5, atol: float = 1e-6,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            load: Callable[[str], onnx.ModelProto] | None = None) -> list[OutputComparison]:
    """Run A and B on the same feeds; one comparison per output of A (B must have them all).
    Random feeds and image batches are made for the first .onnx of A and B; two engines
    need ``inputs`` (an .npz). Inputs that differ between two models, and feeds that do not
    fit them, are refused before anything runs. ``load`` reads an .onnx (default
    :func:`onnxpass.graph.load_model`)."""
    load = load or load_model
    run_a, run_b = runner(a), runner(b)
    models = {p: load(str(p)) for p in (a, b) if not is_engine(p)}
    if not models and (inputs is None or Path(inputs).is_dir()):
        raise OnnxpassError(f"{a}, {b}: two engines need --inputs FILE.npz (random inputs and "
                            f"images are made from an .onnx model)")
    if len(models) == 2:
        check_same_inputs(models[a], models[b], a, b)
    model = next(iter(models.values()), None)
    if model is not None:
        check_dims(model, dims or {})
        feeds = feeds_from(inputs, model, seed, dims, mean, std)
        for m in models.values():
            check_feeds(m, feeds, inputs or "random inputs")
    else:
        feeds = load_inputs(inputs)  # type: ignore[arg-type]
    want, got = run_a(feeds), run_b(feeds)
    missing = [k for k in want if k not in got]
    if missing:
        raise OnnxpassError(f"{b}: lacks outputs {missing} of {a}")
    out = []
    for k, e in want.items():
        g = got[k]
        out.append(OutputComparison(error_stats(k, e, g, rtol, atol),
                                    topk_agreement(e, g, 1), topk_agreement(e, g, 5),
                                    cosine_similarity(e, g)))
    return out
