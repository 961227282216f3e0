"""Small random-weight transformers models for the real-model tests (from config, no download).

Each builder returns a :class:`Built`: a module returning a tuple of tensors, example inputs and
their names. :func:`torch_counts` counts LayerNorm and GELU calls by running the torch model (the
expected fusion counts never come from the exported graph); :func:`export` writes it with the
TorchScript or the dynamo exporter.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

BATCH = 2
# torchscript: opset 14, everything decomposed. dynamo: its default opset (20), LayerNormalization
# and Gelu emitted as ops. dynamo18: opset 18, LayerNormalization as an op, GELU decomposed by
# onnxscript's torchlib (a different decomposition from TorchScript's).
EXPORTERS = ("torchscript", "dynamo", "dynamo18")


@dataclass
class Built:
    module: torch.nn.Module
    args: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]


class _Outputs(torch.nn.Module):
    """Calls a transformers model with named inputs; returns the chosen outputs as a tuple."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_names: list[str]
                 ) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = output_names

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.input_names, args)), return_dict=True)
        return tuple(out[k] for k in self.output_names)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Variance-preserving random weights, and gamma/beta away from 1/0 so a pass that drops or
    misplaces them changes the output. (MobileViT's own init gives all-zero outputs.)"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim <= 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def _wrap(model: torch.nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str],
          output_names: list[str], seed: int = 0) -> Built:
    _randomise(model, seed)
    model.eval()
    return Built(_Outputs(model, input_names, output_names).eval(), args, input_names,
                 output_names)


def _image(size: int, channels: int = 3) -> torch.Tensor:
    return torch.randn(BATCH, channels, size, size, generator=torch.Generator().manual_seed(1))


def _tokens(seq: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab, (BATCH, seq), generator=g)
    mask = torch.ones(BATCH, seq, dtype=torch.int64)
    mask[1, seq // 2:] = 0
    return ids, mask


# vocab sizes are >= 16: verify.random_inputs draws integer inputs from [0, 16).
def vit() -> Built:
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, image_size=32, patch_size=8)
    return _wrap(ViTModel(cfg), (_image(32),), ["pixel_values"],
                 ["last_hidden_state", "pooler_output"])


def clip_vision() -> Built:
    """CLIP's default quick_gelu, x * sigmoid(1.702 x), is not GELU: expect no Gelu."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, image_size=32, patch_size=8)
    return _wrap(CLIPVisionModel(cfg), (_image(32),), ["pixel_values"],
                 ["last_hidden_state", "pooler_output"])


def clip_text() -> Built:
    """With tanh-approximated GELU (gelu_pytorch_tanh), to cover that form."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=16, eos_token_id=2,
                         hidden_act="gelu_pytorch_tanh")
    ids, mask = _tokens(8, 64)
    return _wrap(CLIPTextModel(cfg), (ids, mask), ["input_ids", "attention_mask"],
                 ["last_hidden_state", "pooler_output"])


def bert() -> Built:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16)
    ids, mask = _tokens(8, 64)
    return _wrap(BertModel(cfg), (ids, mask), ["input_ids", "attention_mask"],
                 ["last_hidden_state", "pooler_output"])


def mobilevit() -> Built:
    from transformers import MobileViTConfig, MobileViTModel

    cfg = MobileViTConfig(image_size=64, hidden_sizes=[16, 24, 32],
                          neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2,
                          expand_ratio=2.0)
    return _wrap(MobileViTModel(cfg), (_image(64),), ["pixel_values"],
                 ["last_hidden_state", "pooler_output"])


def detr() -> Built:
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                            layer_type="basic", out_features=["stage4"])
    cfg = DetrConfig(backbone_config=backbone, use_timm_backbone=False,
                     use_pretrained_backbone=False, d_model=32, encoder_layers=1,
                     decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
                     encoder_attention_heads=2, decoder_attention_heads=2, num_queries=5,
                     num_labels=4)
    return _wrap(DetrForObjectDetection(cfg), (_image(64),), ["pixel_values"],
                 ["logits", "pred_boxes"])


def levit() -> Built:
    """LeViT normalizes with BatchNorm and uses Hardswish: expect no LayerNorm and no GELU."""
    from transformers import LevitConfig, LevitModel

    cfg = LevitConfig(image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4],
                      depths=[1, 1, 1], key_dim=[8, 8, 8])
    return _wrap(LevitModel(cfg), (_image(64),), ["pixel_values"],
                 ["last_hidden_state", "pooler_output"])


def swin() -> Built:
    """Shifted windows: LayerNorm before window partitioning and in patch merging (4C wide)."""
    from transformers import SwinConfig, SwinModel

    cfg = SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                     window_size=4, mlp_ratio=2.0, drop_path_rate=0.0)
    cfg._attn_implementation = "eager"
    return _wrap(SwinModel(cfg), (_image(32),), ["pixel_values"],
                 ["last_hidden_state", "pooler_output"])


def segformer() -> Built:
    """LayerNorm on flattened NCHW tokens and on spatially reduced keys; GELU after a
    depthwise conv (Mix-FFN)."""
    from transformers import SegformerConfig, SegformerModel

    cfg = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                          hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2],
                          num_attention_heads=[1, 2], mlp_ratios=[2, 2], drop_path_rate=0.0)
    return _wrap(SegformerModel(cfg), (_image(32),), ["pixel_values"], ["last_hidden_state"])


MODELS: dict[str, Callable[[], Built]] = {
    "vit": vit, "clip_vision": clip_vision, "clip_text": clip_text, "bert": bert,
    "mobilevit": mobilevit, "detr": detr, "levit": levit, "swin": swin, "segformer": segformer,
}


@dataclass(frozen=True)
class OpCounts:
    layernorm: int
    gelu: int        # exact (erf) GELU
    gelu_tanh: int   # tanh-approximated GELU


class _CountCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.layer_norm:
            self.calls["layernorm"] += 1
        elif func is F.gelu:
            approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
            self.calls["gelu_tanh" if approximate == "tanh" else "gelu"] += 1
        return func(*args, **kwargs)


def torch_counts(built: Built) -> OpCounts:
    """LayerNorm and GELU calls made by one forward pass of the torch model."""
    mode = _CountCalls()
    with torch.no_grad(), mode:
        built.module(*built.args)
    return OpCounts(mode.calls["layernorm"], mode.calls["gelu"], mode.calls["gelu_tanh"])


_OPSETS = {"torchscript": 14, "torchscript16": 16, "dynamo": None, "dynamo18": 18}


def export(built: Built, exporter: str, path: Path) -> None:
    """Export with a dynamic batch dimension, as deployments do. ``exporter`` is one of
    EXPORTERS, or torchscript16 (opset 16: LayerNorm still decomposed, CastLike available)."""
    names = built.input_names
    opset = _OPSETS[exporter]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter.startswith("torchscript"):
            torch.onnx.export(built.module, built.args, str(path), dynamo=False,
                              opset_version=opset, input_names=names,
                              output_names=built.output_names,
                              dynamic_axes={n: {0: "batch"} for n in names})
        else:
            batch = torch.export.Dim("batch", min=1, max=64)
            program = torch.onnx.export(built.module, built.args, dynamo=True, opset_version=opset,
                                        input_names=names, output_names=built.output_names,
                                        dynamic_shapes=(tuple({0: batch} for _ in names),))
            assert program is not None
            program.save(str(path))


def lazy_exports(built: Built, root: Path, name: str) -> Callable[[str], Path]:
    """``get(exporter)``: the path of ``built`` exported by ``exporter``, exported on first use."""
    cache: dict[str, Path] = {}

    def get(exporter: str) -> Path:
        if exporter not in cache:
            cache[exporter] = root / f"{name}-{exporter}.onnx"
            export(built, exporter, cache[exporter])
        return cache[exporter]

    return get


def half(built: Built) -> Built:
    """The same model in float16. TorchScript then computes LayerNorm's variance and division in
    double between two Casts, and stores GELU's constants as float16."""
    args = tuple(a.half() if a.is_floating_point() else a for a in built.args)
    return Built(built.module.half(), args, built.input_names, built.output_names)


class ExportCache:
    """Builds, counts and exports each model once; remembers why an export failed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, Built] = {}
        self._counts: dict[str, OpCounts] = {}
        self._paths: dict[tuple[str, str], Path | str] = {}

    def built(self, name: str) -> Built:
        if name not in self._built:
            self._built[name] = MODELS[name]()
        return self._built[name]

    def counts(self, name: str) -> OpCounts:
        if name not in self._counts:
            self._counts[name] = torch_counts(self.built(name))
        return self._counts[name]

    def export(self, name: str, exporter: str, fp16: bool = False) -> Path | str:
        """The exported model's path, or a one-line reason the exporter could not export it."""
        key = (name, exporter + "-fp16" * fp16)
        if key not in self._paths:
            path = self.root / f"{name}-{key[1]}.onnx"
            try:
                # A fresh build (same weights): tracing leaves tensors in Swin's attributes.
                built = MODELS[name]()
                export(half(built) if fp16 else built, exporter, path)
                self._paths[key] = path
            except Exception as e:
                self._paths[key] = f"{exporter} cannot export {name}: {_reason(e)}"
        return self._paths[key]


def _reason(e: Exception) -> str:
    """One line: torch.export's own summary line when it gives one."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    summary = [ln for ln in lines if ln.startswith("<class ")]
    return summary[0] if summary else f"{type(e).__name__}: {lines[0] if lines else ''}"
