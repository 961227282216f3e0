"""A small AnchorDETR-style detector for the masked_softmax and mask2pos real-model tests.

Written from the math of "Anchor DETR: Query Design for Transformer-Based Detector" (Wang et al.,
AAAI 2022), not from its code: the transformer on a backbone's feature map and padding mask.

- mask2pos: the padding mask becomes normalized positions, (cumsum(~mask) - 0.5) / total. The
  encoder uses DETR's 2-D form (cumsum along H and W, + eps, * 2 pi); the decoder AnchorDETR's
  1-D form (cumsum of the first column / row, scaled by the sine embedding). Two forms in one
  model so that one export covers both.
- Row-column decoupled attention (RCDA): a query attends to the W columns (keys averaged over H)
  and to the H rows (keys averaged over W) separately; the output is
  sum_{i,j} A_col[i] A_row[j] V[i, j]. The padding mask masks the keys of both softmaxes: with
  masked_fill(-inf) in the encoder (the row scores in AnchorDETR's 3-D view - mask - view form,
  the column scores in 4-D), with an additive (1 - valid) * -10000 mask expanded to full size in
  the decoder.
- Decoder queries: pattern embeddings times learned anchor points; a plain (unmasked) self-
  attention between them, which no masked-softmax pass may touch.

:func:`torch_counts` counts mask2pos and masked-softmax instances by running a torch model (this
one or the transformers models of tests/models.py).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from onnxpass.verify import random_inputs

D, HEADS, FFN = 32, 2, 64
CHANNELS, HEIGHT, WIDTH = 16, 6, 8      # the feature map: H != W catches row/column mix-ups
ANCHORS, PATTERNS, CLASSES = 4, 2, 5
BATCH = 2


def mask2pos_detr(pad: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """DETR's normalized positions over the whole map: (y, x), each [B, H, W], in [0, 2 pi]."""
    valid = ~pad
    y = valid.cumsum(1, dtype=torch.float32)
    x = valid.cumsum(2, dtype=torch.float32)
    y = (y - 0.5) / (y[:, -1:, :] + eps) * (2 * math.pi)
    x = (x - 0.5) / (x[:, :, -1:] + eps) * (2 * math.pi)
    return y, x


def mask2pos_anchor(pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AnchorDETR's 1-D positions of the first column (per row, [B, H]) and of the first row
    (per column, [B, W]), in (0, 1)."""
    valid = ~pad
    y = valid[:, :, 0].float().cumsum(1)
    x = valid[:, 0, :].float().cumsum(1)
    return (y - 0.5) / y[:, -1:], (x - 0.5) / x[:, -1:]


def sine(pos: torch.Tensor, dim: int = D, scale: float = 1.0) -> torch.Tensor:
    """Sine/cosine embedding of positions: [...] -> [..., dim]."""
    i = torch.arange(dim, dtype=torch.float32)
    freq = 10000 ** (2 * torch.div(i, 2, rounding_mode="floor") / dim)
    a = (pos * scale)[..., None] / freq
    return torch.stack((a[..., 0::2].sin(), a[..., 1::2].cos()), dim=-1).flatten(-2)


def mlp(*dims: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(len(dims) - 1):
        layers += [nn.Linear(dims[k], dims[k + 1]), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class RCDA(nn.Module):
    """Row-column decoupled multi-head attention; ``additive`` picks the decoder's mask form."""

    def __init__(self, additive: bool) -> None:
        super().__init__()
        self.additive = additive
        self.q_row, self.q_col, self.k_row, self.k_col, self.v, self.out = (
            nn.Linear(D, D) for _ in range(6))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, heads, N, D/heads]
        return t.reshape(t.shape[0], t.shape[1], HEADS, D // HEADS).transpose(1, 2)

    def _mask(self, scores: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """scores [B, heads, L, N], pad [B, N]: the keys that are padding get no weight."""
        if self.additive:
            valid = (~pad)[:, None, None, :].expand(scores.shape).float()
            return scores + (1.0 - valid) * -10000.0
        return scores.masked_fill(pad[:, None, None, :], float("-inf"))

    def forward(self, q_row: torch.Tensor, q_col: torch.Tensor, k_row: torch.Tensor,
                k_col: torch.Tensor, value: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, length, _ = q_row.shape
        _, h, w, _ = value.shape
        dh = D // HEADS
        qr = self._heads(self.q_row(q_row)) / math.sqrt(dh)
        qc = self._heads(self.q_col(q_col)) / math.sqrt(dh)
        kr = self._heads(self.k_row(k_row).mean(1))          # [B, heads, W, dh]
        kc = self._heads(self.k_col(k_col).mean(2))          # [B, heads, H, dh]
        v = self.v(value).reshape(b, h, w, HEADS, dh).permute(0, 3, 1, 2, 4)
        col = qc @ kc.transpose(-1, -2)                      # [B, heads, L, H]
        a_col = F.softmax(self._mask(col, pad[:, :, 0]), dim=-1)
        if self.additive:
            a_row = F.softmax(self._mask(qr @ kr.transpose(-1, -2), pad[:, 0, :]), dim=-1)
        else:  # AnchorDETR's form: 3-D batched scores, viewed as 4-D only to be masked
            row = torch.bmm(qr.reshape(b * HEADS, length, dh),
                            kr.reshape(b * HEADS, w, dh).transpose(1, 2))
            row = self._mask(row.view(b, HEADS, length, w), pad[:, 0, :])
            a_row = F.softmax(row.view(b * HEADS, length, w), dim=-1).view(b, HEADS, length, w)
        t = (a_col @ v.reshape(b, HEADS, h, w * dh)).reshape(b, HEADS, length, w, dh)
        o = (a_row.unsqueeze(-2) @ t).squeeze(-2)            # [B, heads, L, dh]
        return self.out(o.transpose(1, 2).reshape(b, length, D))


class Block(nn.Module):
    """attention + residual + LayerNorm, then FFN + residual + LayerNorm."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.ffn = mlp(D, FFN, D)

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(*args))
        return self.norm2(x + self.ffn(x))


class SelfAttention(nn.Module):
    """Plain multi-head self-attention between the decoder queries: an unmasked softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.qk, self.v, self.out = nn.Linear(D, 2 * D), nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k = self.qk(x + pos).reshape(b, n, 2, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        v = self.v(x).reshape(b, n, HEADS, D // HEADS).transpose(1, 2)
        a = F.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // HEADS), dim=-1)
        return self.out((a @ v).transpose(1, 2).reshape(b, n, D))


class AnchorDETR(nn.Module):
    """features [B, C, H, W], pad [B, H, W] (True = padding) -> class logits, boxes."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(CHANNELS, D, 1)
        self.pos1d, self.pos2d = mlp(D, D, D), mlp(2 * D, D, D)
        self.encoder = Block(RCDA(additive=False))
        self.self_attn, self.cross = Block(SelfAttention()), Block(RCDA(additive=True))
        self.anchors = nn.Parameter(torch.rand(ANCHORS, 2))
        self.patterns = nn.Parameter(torch.randn(PATTERNS, D))
        self.cls, self.box = nn.Linear(D, CLASSES), mlp(D, D, 4)

    def forward(self, features: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b = features.shape[0]
        src = self.proj(features).permute(0, 2, 3, 1)                    # [B, H, W, D]
        y, x = mask2pos_detr(pad)
        row = self.pos1d(sine(x[:, 0, :]))[:, None, :, :]               # per column: [B, 1, W, D]
        col = self.pos1d(sine(y[:, :, 0]))[:, :, None, :]               # per row: [B, H, 1, D]
        k_row, k_col = src + row, src + col
        mem = self.encoder(src.flatten(1, 2), k_row.flatten(1, 2), k_col.flatten(1, 2),
                           k_row, k_col, src, pad).reshape(src.shape)

        anchors = self.anchors.sigmoid()                                 # [A, 2] in (0, 1)
        queries = self.patterns[:, None, :].expand(PATTERNS, ANCHORS, D).reshape(-1, D)
        tgt = queries[None].expand(b, -1, -1)
        q_pos = self.pos2d(sine(anchors, scale=2 * math.pi).flatten(-2)).repeat(PATTERNS, 1)
        qx = self.pos1d(sine(anchors[:, 0], scale=2 * math.pi)).repeat(PATTERNS, 1)[None]
        qy = self.pos1d(sine(anchors[:, 1], scale=2 * math.pi)).repeat(PATTERNS, 1)[None]
        tgt = self.self_attn(tgt, tgt, q_pos[None])
        ay, ax = mask2pos_anchor(pad)
        row = self.pos1d(sine(ax, scale=2 * math.pi))[:, None, :, :]
        col = self.pos1d(sine(ay, scale=2 * math.pi))[:, :, None, :]
        out = self.cross(tgt, tgt + qx, tgt + qy, mem + row, mem + col, mem, pad)
        return self.cls(out), self.box(out).sigmoid()


INPUT_NAMES, OUTPUT_NAMES = ["features", "pad"], ["logits", "boxes"]


def padding_mask() -> torch.Tensor:
    """Image 0 fills the batch's canvas; image 1 is padded below (2 rows) and right (3 cols)."""
    pad = torch.zeros(BATCH, HEIGHT, WIDTH, dtype=torch.bool)
    pad[1, -2:, :] = True
    pad[1, :, -3:] = True
    return pad


def build(seed: int = 0) -> tuple[AnchorDETR, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = AnchorDETR().eval()
    g = torch.Generator().manual_seed(1)
    features = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH, generator=g)
    return model, (features, padding_mask())


@dataclass(frozen=True)
class Counts:
    masked_softmax: int  # softmax over masked scores, and attention with a mask (SDPA)
    softmax: int         # softmax calls and SDPA calls, masked or not
    mask2pos: int        # cumulative sums of a mask
    expanded: int        # masked softmaxes whose mask was expanded to full size


# Ops that turn a mask into a mask: shape ops, casts, scalar arithmetic, masked_fill of a mask.
_MASK_OPS = {"__invert__", "bitwise_not", "logical_not", "float", "to", "__rsub__", "sub",
             "__sub__", "__mul__", "mul", "expand", "unsqueeze", "__getitem__", "view", "reshape",
             "masked_fill", "where"}
_VIEWS = {"view", "reshape", "__getitem__"}


class _CountMasking(TorchFunctionMode):
    """Follows masks (bool tensors and what ``_MASK_OPS`` make of them) through one forward
    pass: to the scores they mask (masked_fill, or + a mask) and on to softmax; into
    scaled_dot_product_attention as attn_mask; into cumsum. The counts come from what torch
    computes, never from an exported graph."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.masks: dict[int, torch.Tensor] = {}     # id -> tensor (kept alive: ids stay unique)
        self.masked: dict[int, torch.Tensor] = {}    # scores masked by one
        self.expanded: dict[int, torch.Tensor] = {}  # masks and scores an expand went into

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        first = tensors[0] if tensors else None
        if name == "scaled_dot_product_attention":
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            self.calls["softmax"] += 1
            self.calls["masked_softmax"] += int(mask is not None)
            self.calls["expanded"] += int(mask is not None and id(mask) in self.expanded)
        elif name == "softmax":
            self.calls["softmax"] += 1
            self.calls["masked_softmax"] += int(id(first) in self.masked)
            self.calls["expanded"] += int(id(first) in self.masked and id(first) in self.expanded)
        elif name == "cumsum" and first is not None and (
                id(first) in self.masks or not first.dtype.is_floating_point):
            self.calls["mask2pos"] += 1
        if not isinstance(out, torch.Tensor):
            return out
        from_masks = [t for t in tensors if id(t) in self.masks]
        if out.dtype == torch.bool or (name in _MASK_OPS and tensors
                                       and len(from_masks) == len(tensors)):
            self.masks[id(out)] = out
        elif name == "masked_fill" or (name in ("add", "__add__") and from_masks) or (
                name in _VIEWS and id(first) in self.masked):
            self.masked[id(out)] = out
        else:
            return out
        if name == "expand" or any(id(t) in self.expanded for t in tensors):
            self.expanded[id(out)] = out
        return out


def torch_counts(model: nn.Module, args: tuple[torch.Tensor, ...]) -> Counts:
    mode = _CountMasking()
    with torch.no_grad(), mode:
        model(*args)
    c = mode.calls
    return Counts(c["masked_softmax"], c["softmax"], c["mask2pos"], c["expanded"])


def export(model: nn.Module, args: tuple[torch.Tensor, ...], exporter: str, path: Path) -> None:
    """TorchScript at opset 14 or dynamo, with a dynamic batch dimension."""
    dynamic: Any
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            dynamic = {n: {0: "batch"} for n in INPUT_NAMES}
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=14,
                              input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                              dynamic_axes=dynamic)
        elif exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=64)
            program = torch.onnx.export(model, args, dynamo=True, input_names=INPUT_NAMES,
                                        output_names=OUTPUT_NAMES,
                                        dynamic_shapes=({0: batch}, {0: batch}), verbose=False)
            assert program is not None
            program.save(str(path))
        else:
            raise ValueError(exporter)


class AnchorDETRExports:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.model, self.args = build()
        self.counts = torch_counts(self.model, self.args)
        self._paths: dict[str, Path] = {}

    def export(self, exporter: str) -> Path:
        if exporter not in self._paths:
            self._paths[exporter] = self.root / f"anchordetr-{exporter}.onnx"
            export(self.model, self.args, exporter, self._paths[exporter])
        return self._paths[exporter]

    def feeds(self) -> list[dict[str, np.ndarray]]:
        """The padded batch the model was built with; random features with a random mask; and
        an all-padding image, whose -inf rows are NaN and must stay NaN, no more, no less."""
        real = {"features": self.args[0].numpy(), "pad": self.args[1].numpy()}
        empty = {"features": real["features"], "pad": real["pad"].copy()}
        empty["pad"][1] = True
        return [real, random_inputs(onnx.load(str(self.export("torchscript"))), seed=3), empty]
