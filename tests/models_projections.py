"""Counts, from running a torch model, of what the matmul2d, add_bias_transpose and tile passes
rewrite in its exports: linear layers on 3-D and 4-D activations, their head splits, and
elementwise ops on a repeated tensor. The expected counts of the real-model tests come from here,
never from the exported graph. Also: a small AnchorDETR-style attention with merged Q/K/V
parameters and a repeated position embedding, and the checked rewrite the tests share.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import onnxpass
from onnxpass.verify import compare_models, random_inputs
from tests.models import Built, export

_VIEWS = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape}
_SPLITS = {torch.Tensor.transpose, torch.transpose, torch.Tensor.permute, torch.permute}
_BROADCASTING = {torch.Tensor.__add__, torch.Tensor.__radd__, torch.add, torch.Tensor.add,
                 torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.mul, torch.Tensor.mul,
                 torch.Tensor.__sub__, torch.Tensor.__rsub__, torch.sub, torch.Tensor.sub}


@dataclass(frozen=True)
class ProjectionCounts:
    linear_nd: int     # F.linear on a 3-D or 4-D input: matmul2d
    head_splits: int   # linear(x).view(B, S, H, d).transpose(1, 2): add_bias_transpose
    repeat_uses: int   # add/sub/mul of a repeat() output: tile's broadcast rule


class _Count(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.linear: set[int] = set()   # ids of linear outputs (with bias) ...
        self.viewed: set[int] = set()   # ... and of their (B, S, H, d) views
        self.repeated: set[int] = set()
        self.keep: list[torch.Tensor] = []  # ids stay unique while the outputs live

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        first = args[0] if args else None
        if func is F.linear:
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if first.ndim in (3, 4):
                self.calls["linear_nd"] += 1
            if first.ndim == 3 and bias is not None:
                self._mark(self.linear, out)
        elif func in _VIEWS and id(first) in self.linear and out.ndim == 4 and (
                tuple(out.shape[:2]) == tuple(first.shape[:2])):
            self._mark(self.viewed, out)
        elif func in _SPLITS and id(first) in self.viewed and _swaps_1_2(func, args, kwargs):
            self.calls["head_splits"] += 1
        elif func in (torch.Tensor.repeat,):
            self._mark(self.repeated, out)
        elif func in _BROADCASTING and any(id(a) in self.repeated for a in args):
            self.calls["repeat_uses"] += 1
        return out

    def _mark(self, ids: set[int], t: torch.Tensor) -> None:
        ids.add(id(t))
        self.keep.append(t)


def _swaps_1_2(func, args, kwargs) -> bool:  # type: ignore[no-untyped-def]
    if func in (torch.Tensor.permute, torch.permute):
        dims = args[1:] if len(args) > 2 else args[1]
        return [int(d) % 4 for d in dims][:3] == [0, 2, 1]
    dims = sorted(int(d) % 4 for d in (args[1:3] if len(args) > 2 else
                                       (kwargs["dim0"], kwargs["dim1"])))
    return dims == [1, 2]


def projection_counts(built: Built) -> ProjectionCounts:
    mode = _Count()
    with torch.no_grad(), mode:
        built.module(*built.args)
    c = mode.calls
    return ProjectionCounts(c["linear_nd"], c["head_splits"], c["repeat_uses"])


class MergedAttention(torch.nn.Module):
    """AnchorDETR-style attention, written from its equations: the Q, K and V weights and biases
    are one merged parameter each, chunked at every use; a learned position embedding is
    repeated over the batch and added to the queries and keys; heads are split by view and
    transpose(1, 2). x: (B, N, D)."""

    def __init__(self, n: int = 6, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.heads = heads
        self.in_proj = torch.nn.Parameter(torch.randn(3 * d, d, generator=g) / d ** 0.5)
        self.in_bias = torch.nn.Parameter(0.1 * torch.randn(3 * d, generator=g))
        self.pos = torch.nn.Parameter(torch.randn(1, n, d, generator=g))
        self.out = torch.nn.Linear(d, d)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor]:  # as tests.models exports
        x = inputs[0]
        b, n, d = x.shape
        pos = self.pos.repeat(b, 1, 1)
        wq, wk, wv = self.in_proj.chunk(3)
        bq, bk, bv = self.in_bias.chunk(3)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k = heads(F.linear(x + pos, wq, bq)), heads(F.linear(x + pos, wk, bk))
        v = heads(F.linear(x, wv, bv))
        a = F.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        return (self.out((a @ v).transpose(1, 2).reshape(b, n, d)),)


def merged_attention() -> Built:
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(1))
    return Built(MergedAttention().eval(), (x,), ["x"], ["y"])


def rewrite_checked(path: object, passes: str) -> tuple[onnx.ModelProto, onnx.ModelProto,
                                                        dict[str, int]]:
    """(original, rewritten, rewrites per pass) of the model at ``path``; the rewritten model
    passes the full checker and computes what the original did within 1e-5 relative (1e-5
    absolute for elements near zero) on random inputs."""
    original = onnx.load(str(path))
    rewritten, result = onnxpass.rewrite(onnx.load(str(path)), passes)
    onnx.checker.check_model(rewritten, full_check=True)
    stats = compare_models(original, rewritten, random_inputs(original), rtol=1e-5, atol=1e-5)
    assert all(s.within for s in stats), "\n".join(s.line() for s in stats)
    return original, rewritten, {s.name.split("=")[0]: s.matches for s in result.stats}


_EXPORTS: dict[str, Path] = {}


def merged_attention_export(exporter: str, root: Path) -> Path:
    """MergedAttention exported once per session (tests.models.export: batch dynamic)."""
    if exporter not in _EXPORTS:
        path = root / f"merged_attention-{exporter}.onnx"
        export(merged_attention(), exporter, path)
        _EXPORTS[exporter] = path
    return _EXPORTS[exporter]
