"""``onnxpass compare A B``: two models on the same inputs, per-output error statistics.

Both run in ONNX Runtime (the graph as written, see :func:`onnxpass.verify.session`) on the same
feeds: random with a seed, or an ``.npz``. Per output: :func:`onnxpass.verify.error_stats`, and for
classifier-like outputs (2-D float, ``[N, C]`` with C >= 2) top-1 agreement (same argmax) and top-5
agreement (A's top-1 class is among B's top 5; when C >= 5). TensorRT engines need TensorRT.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onnxpass.errors import OnnxpassError
from onnxpass.graph import load_model
from onnxpass.verify import ErrorStats, error_stats, load_inputs, random_inputs, run

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
TENSORRT_MISSING = ("{path}: a TensorRT engine, and TensorRT is not installed: install it with "
                    "`pip install tensorrt` on a machine with an NVIDIA GPU and NVIDIA's package "
                    "index (https://pypi.nvidia.com)")


@dataclass
class OutputComparison:
    stats: ErrorStats
    top1: float | None = None  # fraction of rows with the same argmax
    top5: float | None = None  # fraction of rows whose A-argmax is in B's top 5

    def line(self) -> str:
        top = "".join(f"; top-{k} agreement {v:.1%}" for k, v in ((1, self.top1), (5, self.top5))
                      if v is not None)
        return self.stats.line() + top

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self.stats), "top1": self.top1, "top5": self.top5}


def topk_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float | None:
    """Fraction of rows of a classifier output ``[N, C]`` where A's top-1 class is in B's top k."""
    if a.ndim != 2 or a.shape != b.shape or a.dtype.kind != "f" or a.shape[1] < max(k, 2):
        return None
    top_a = np.argmax(a, axis=1)
    top_b = np.argsort(-b.astype(np.float64), axis=1, kind="stable")[:, :k]
    return float(np.mean([t in row for t, row in zip(top_a, top_b)]))


def _require_onnx(path: str | os.PathLike[str]) -> None:
    if Path(path).suffix.lower() in ENGINE_SUFFIXES:
        try:
            import tensorrt
        except ImportError:
            tensorrt = None
        if getattr(tensorrt, "__version__", None) is None:  # absent, or only type stubs
            raise OnnxpassError(TENSORRT_MISSING.format(path=path))
        raise OnnxpassError(f"{path}: running TensorRT engines in compare is not supported yet")


def compare(a: str | os.PathLike[str], b: str | os.PathLike[str], *,
            inputs: str | os.PathLike[str] | None = None, seed: int = 0,
            dims: dict[str, int] | None = None, rtol: float = 1e-5, atol: float = 1e-6
            ) -> list[OutputComparison]:
    """Run A and B on the same feeds; one comparison per output of A (B must have them all)."""
    _require_onnx(a)
    _require_onnx(b)
    feeds = load_inputs(inputs) if inputs else random_inputs(load_model(a), seed, dims)
    want, got = run(str(a), feeds), run(str(b), feeds)
    missing = [k for k in want if k not in got]
    if missing:
        raise OnnxpassError(f"{b}: lacks outputs {missing} of {a}")
    out = []
    for k, e in want.items():
        g = got[k]
        out.append(OutputComparison(error_stats(k, e, g, rtol, atol),
                                    topk_agreement(e, g, 1), topk_agreement(e, g, 5)))
    return out
