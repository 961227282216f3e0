"""A tiny MST++ (Cai et al., "MST++: Multi-stage Spectral-wise Transformer for Efficient Spectral
Reconstruction", CVPRW 2022), written from the paper's equations, and a counter of the L2
normalizations a torch model makes.

Spectral-wise multi-head self-attention (S-MSA) attends over channels, not pixels: with
X in R^{HW x C}, Q, K, V = X W_q, X W_k, X W_v are split into heads of d = C / heads channels and
laid out as (B, heads, d, HW); Q and K are L2-normalized along HW (F.normalize), and per head
A = softmax(sigma * K Q^T) is a d x d map with a learnable sigma; the output (A V) goes through a
linear projection, plus a positional term from V (depthwise conv, GELU, depthwise conv). A
spectral-wise attention block (SAB) is X = S-MSA(X) + X; X = FFN(LayerNorm(X)) + X with
FFN = conv1x1, GELU, depthwise conv3x3, GELU, conv1x1. A single-stage spectral transformer (SST)
is a U-net of SABs (conv down, transposed conv up, skip fused by conv1x1); MST++ chains stages
between an input and an output conv with a global residual.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from tests.models import BATCH, Built


class SpectralMSA(nn.Module):
    def __init__(self, dim: int, dim_head: int) -> None:
        super().__init__()
        self.heads = dim // dim_head
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.rescale = nn.Parameter(torch.ones(self.heads, 1, 1))  # sigma, one per head
        self.proj = nn.Linear(dim, dim)
        self.pos_emb = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False), nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, W, C)
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        v_tokens = self.to_v(tokens)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, HW, C) -> (B, heads, d, HW)
            return t.reshape(b, h * w, self.heads, c // self.heads).permute(0, 2, 3, 1)

        q, k, v = heads(self.to_q(tokens)), heads(self.to_k(tokens)), heads(v_tokens)
        q, k = F.normalize(q, p=2, dim=-1), F.normalize(k, p=2, dim=-1)
        attn = ((k @ q.transpose(-2, -1)) * self.rescale).softmax(dim=-1)  # (B, heads, d, d)
        out = (attn @ v).permute(0, 3, 1, 2).reshape(b, h * w, c)
        out = self.proj(out).reshape(b, h, w, c)
        pos = self.pos_emb(v_tokens.reshape(b, h, w, c).permute(0, 3, 1, 2))
        return out + pos.permute(0, 2, 3, 1)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, dim * mult, 1, bias=False), nn.GELU(),
            nn.Conv2d(dim * mult, dim * mult, 3, padding=1, groups=dim * mult, bias=False),
            nn.GELU(), nn.Conv2d(dim * mult, dim, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SAB(nn.Module):
    """Spectral-wise attention blocks on NCHW input (run channels-last inside)."""

    def __init__(self, dim: int, dim_head: int, blocks: int = 1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList([SpectralMSA(dim, dim_head), nn.LayerNorm(dim), FeedForward(dim)])
            for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for attn, norm, ff in self.blocks:  # type: ignore[misc]
            x = attn(x) + x
            x = ff(norm(x)) + x
        return x.permute(0, 3, 1, 2)


class SST(nn.Module):
    """Single-stage spectral transformer: a one-level U-net of SABs."""

    def __init__(self, dim: int, dim_head: int) -> None:
        super().__init__()
        self.embedding = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.encoder = SAB(dim, dim_head)
        self.down = nn.Conv2d(dim, 2 * dim, 4, stride=2, padding=1, bias=False)
        self.bottleneck = SAB(2 * dim, dim_head)
        self.up = nn.ConvTranspose2d(2 * dim, dim, 2, stride=2)
        self.fuse = nn.Conv2d(2 * dim, dim, 1, bias=False)
        self.decoder = SAB(dim, dim_head)
        self.mapping = nn.Conv2d(dim, dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.encoder(self.embedding(x))
        deep = self.bottleneck(self.down(skip))
        out = self.decoder(self.fuse(torch.cat([self.up(deep), skip], dim=1)))
        return self.mapping(out) + x


class MSTPlusPlus(nn.Module):
    """RGB (3 channels) -> ``dim`` spectral bands; ``stages`` SSTs between two convs."""

    def __init__(self, dim: int = 8, dim_head: int = 4, stages: int = 1) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, dim, 3, padding=1, bias=False)
        self.body = nn.Sequential(*(SST(dim, dim_head) for _ in range(stages)))
        self.conv_out = nn.Conv2d(dim, dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        return self.conv_out(self.body(x)) + x


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """Variance-preserving weights; LayerNorm gamma/beta away from 1/0; sigma in [0.5, 4]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("rescale"):
                p.copy_(0.5 + 3.5 * torch.rand(p.shape, generator=g))
            elif p.ndim == 1 and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))


class _Args(nn.Module):
    """forward(*args) -> tuple, the calling convention tests/models.py exports."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.model(*args),)


def mstpp() -> Built:
    """One stage (dynamo's export time grows by ~9 s per stage) of 3 SABs: 6 F.normalize,
    3 LayerNorm, 9 GELU."""
    model = MSTPlusPlus()
    _randomise(model)
    image = torch.rand(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return Built(_Args(model).eval(), (image,), ["rgb"], ["hsi"])


class _CountL2Norms(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.normalize and kwargs.get("p", args[1] if len(args) > 1 else 2.0) == 2:
            self.calls["F.normalize"] += 1
        elif func is torch.pow and len(args) > 1 and args[1] == 0.5:
            self.calls["pow 0.5"] += 1  # CLIP's _get_vector_norm: sum(x^2) ** 0.5
        return func(*args, **kwargs)


def l2norm_calls(built: Built) -> Counter[str]:
    """L2 normalizations one forward pass of the torch model makes: F.normalize(p=2) calls and
    torch.pow(_, 0.5) (each a norm that the model divides by)."""
    mode = _CountL2Norms()
    with torch.no_grad(), mode:
        built.module(*built.args)
    return mode.calls
