"""Held-out real exports (issue 9): architectures the other real-model tests do not cover.

GPT-2, a T5 encoder, a Llama-style decoder and a Qwen2-style grouped-query decoder (both without
KV cache), and Mask2Former (ResNet backbone, multi-scale deformable attention pixel decoder,
masked-attention transformer decoder): conv + attention. Tiny random-weight configs built from
transformers configs (nothing downloaded), exported with TorchScript at opset 14 and 17, with
dynamo, and once in float16 (``model.half()``; see :func:`exporters` for the exceptions).

Feeds are realistic: token ids in the vocabulary and attention masks with a padded row (right
padding; the decoders are also fed a left-padded batch, as batched generation pads).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from tests.models import BATCH, Built, _image, _tokens, _wrap, half

SEQ = 12
VOCAB = 64

# name -> (torch.onnx.export keyword arguments, float16 model). Exports have a dynamic batch
# dimension, as deployments do, except those named "-static" (every shape fixed, which makes
# fold and shape_of rewrite far more of the graph).
EXPORTERS: dict[str, tuple[dict[str, object], bool]] = {
    "ts14-static": ({"dynamo": False, "opset_version": 14}, False),
    "ts16": ({"dynamo": False, "opset_version": 16}, False),
    "ts17": ({"dynamo": False, "opset_version": 17}, False),
    "dynamo": ({"dynamo": True}, False),
    "ts16-fp16-static": ({"dynamo": False, "opset_version": 16}, True),
    "dynamo-fp16": ({"dynamo": True}, True),
}


def _text(model: torch.nn.Module, seed: int = 0) -> Built:
    ids, mask = _tokens(SEQ, VOCAB)
    return _wrap(model, (ids, mask), ["input_ids", "attention_mask"], ["last_hidden_state"],
                 seed)


def gpt2() -> Built:
    """GPT-2: Conv1D projections (Addmm), tanh GELU (gelu_new), causal + padding mask."""
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                     n_inner=64, use_cache=False, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0)
    return _text(GPT2Model(cfg))


def t5_encoder() -> Built:
    """T5 encoder: RMSNorm with the variance in float32, relative-position bias, finfo.min mask,
    no attention scaling, ReLU feed-forward."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16,
                   dropout_rate=0.0, use_cache=False)
    return _text(T5EncoderModel(cfg))


def llama() -> Built:
    """Llama-style decoder, no KV cache: RMSNorm (x cast to float32), rotary (rotate-half),
    SiLU-gated MLP, causal + padding mask, 4 heads = 4 KV heads."""
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=64, use_cache=False)
    return _text(LlamaModel(cfg))


def qwen2() -> Built:
    """Qwen2-style grouped-query decoder: 4 query heads share 2 KV heads (K/V repeated by
    Expand+Reshape), biased Q/K/V projections."""
    from transformers import Qwen2Config, Qwen2Model

    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, use_cache=False, use_sliding_window=False)
    return _text(Qwen2Model(cfg))


def mask2former() -> Built:
    """Mask2Former with a tiny ResNet backbone: conv pixel decoder with multi-scale deformable
    attention (GridSample, opset >= 16), masked-attention transformer decoder."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                            layer_type="basic",
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=backbone, use_pretrained_backbone=False,
                            use_timm_backbone=False, feature_size=32, mask_feature_size=32,
                            hidden_dim=32, encoder_feedforward_dim=64, dim_feedforward=64,
                            encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                            num_queries=8, num_labels=4, common_stride=4)
    return _wrap(Mask2FormerForUniversalSegmentation(cfg), (_image(64),), ["pixel_values"],
                 ["class_queries_logits", "masks_queries_logits"])


MODELS: dict[str, Callable[[], Built]] = {
    "gpt2": gpt2, "t5_encoder": t5_encoder, "llama": llama, "qwen2": qwen2,
    "mask2former": mask2former,
}
DECODERS = ("gpt2", "llama", "qwen2")


def exporters(name: str) -> list[str]:
    """TorchScript at opset 14 (static shapes) and 17, dynamo, and one float16 export:
    TorchScript at opset 16 (static shapes).

    Where torch 2.13 cannot make a valid export, the nearest one that is:
    - Mask2Former's deformable attention needs GridSample (opset 16): TorchScript at 14 raises
      UnsupportedOperatorError ("aten::grid_sampler ... opset version 14 is not supported"), so
      it gets opset 16 instead of 14; and with static shapes TorchScript computes GridSample's
      grid in float64, which ORT has no kernel for ("Could not find an implementation for
      GridSample(16)"), so its opset 16 export keeps the dynamic batch.
    - Mask2Former in float16: TorchScript (16 and 17) writes a float16 Range for the sine
      position embedding, which ONNX's Range does not allow (ORT: "Type 'tensor(float16)' of
      input parameter ... of operator (Range) ... is invalid"), so its float16 export is dynamo's.
    - TorchScript at 17 in float16 writes GPT-2's LayerNormalization with a float32 input and
      float16 weights (ORT: "Type parameter (T) of Optype (LayerNormalization) bound to different
      types"), hence opset 16 for the float16 exports."""
    if name == "mask2former":
        return ["ts16", "ts17", "dynamo", "dynamo-fp16"]
    return ["ts14-static", "ts17", "dynamo", "ts16-fp16-static"]


def feeds(name: str, built: Built) -> list[dict[str, np.ndarray]]:
    """The example inputs (attention mask with a right-padded row); decoders also get a
    left-padded batch."""
    first = {n: a.detach().cpu().numpy() for n, a in zip(built.input_names, built.args)}
    out = [first]
    if name in DECODERS:
        mask = np.ones((BATCH, SEQ), dtype=np.int64)
        mask[1, : SEQ // 3] = 0
        out.append({**first, "attention_mask": mask})
    return out


def export(built: Built, exporter: str, path: Path) -> None:
    """Export with a dynamic batch dimension unless ``exporter`` ends in "-static". Raises what
    the exporter raises."""
    kwargs, _ = EXPORTERS[exporter]
    names = built.input_names
    dynamic = not exporter.endswith("-static")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not kwargs["dynamo"]:
            axes = {n: {0: "batch"} for n in names} if dynamic else None
            torch.onnx.export(built.module, built.args, str(path), input_names=names,
                              output_names=built.output_names, dynamic_axes=axes,
                              **kwargs)  # type: ignore[arg-type]
        else:
            batch = torch.export.Dim("batch", min=1, max=64)
            shapes = (tuple({0: batch} for _ in names),) if dynamic else None
            program = torch.onnx.export(built.module, built.args, input_names=names,
                                        output_names=built.output_names, dynamic_shapes=shapes,
                                        **kwargs)  # type: ignore[arg-type]
            assert program is not None
            program.save(str(path))


class HeldoutExports:
    """Builds and exports each (model, exporter) once per session; remembers why an export
    failed (as a one-line string) so every test of that export reports it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._paths: dict[tuple[str, str], Path | str] = {}
        self._feeds: dict[tuple[str, str], list[dict[str, np.ndarray]]] = {}

    def export(self, name: str, exporter: str) -> Path | str:
        key = (name, exporter)
        if key not in self._paths:
            path = self.root / f"{name}-{exporter}.onnx"
            try:
                built = MODELS[name]()  # fresh per export: tracing may leave state behind
                if EXPORTERS[exporter][1]:
                    built = half(built)
                export(built, exporter, path)
                self._paths[key] = path
                self._feeds[key] = feeds(name, built)
            except Exception as e:
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                summary = [ln for ln in lines if ln.startswith("<class ")]
                first = summary[0] if summary else (lines[0] if lines else "")
                self._paths[key] = f"{exporter} cannot export {name}: {type(e).__name__}: {first}"
        return self._paths[key]

    def feeds(self, name: str, exporter: str) -> list[dict[str, np.ndarray]]:
        self.export(name, exporter)
        return self._feeds[(name, exporter)]
