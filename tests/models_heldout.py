"""Held-out real exports (issue 9, extended by issue 11): architectures the other real-model tests
do not cover.

GPT-2, a T5 encoder, a Llama-style decoder and a Qwen2-style grouped-query decoder (both without
KV cache), Mask2Former (ResNet backbone, multi-scale deformable attention pixel decoder,
masked-attention transformer decoder: conv + attention), Whisper (encoder + decoder, the decoder's
self-attention written on 3-D (B*heads, T, d) tensors) and BEiT (layer scale, mean pooling).
Tiny random-weight configs built from transformers configs (nothing downloaded), exported by the
exporters of :data:`EXPORTERS` (see :func:`exporters` for which model gets which, and why).

Feeds are realistic: token ids in the vocabulary and attention masks with a padded row (right
padding; the decoders are also fed a left-padded batch, as batched generation pads); exports
whose sequence length is dynamic are also fed another batch size and sequence length.

:func:`torch_counts` counts, by running the torch model, the LayerNorm, RMSNorm, GELU and
attention instances it computes: the fused counts tests expect never come from an exported graph.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tests.models import BATCH, Built, _image, _tokens, _wrap, half

SEQ = 12
VOCAB = 64

# name -> (torch.onnx.export keyword arguments, float16 model). The dims an export leaves
# dynamic follow its name: "-static" none, "-dyn" batch and sequence (inputs of
# SEQUENCE_INPUTS), any other the batch, as deployments do. Static shapes make fold and
# shape_of rewrite far more of the graph; a dynamic sequence leaves the most shapes unknown.
EXPORTERS: dict[str, tuple[dict[str, object], bool]] = {
    "ts14": ({"dynamo": False, "opset_version": 14}, False),
    "ts14-static": ({"dynamo": False, "opset_version": 14}, False),
    "ts16": ({"dynamo": False, "opset_version": 16}, False),
    "ts17": ({"dynamo": False, "opset_version": 17}, False),
    "ts17-dyn": ({"dynamo": False, "opset_version": 17}, False),
    "dynamo": ({"dynamo": True}, False),
    "dynamo23": ({"dynamo": True, "opset_version": 23}, False),
    "ts14-fp16": ({"dynamo": False, "opset_version": 14}, True),
    "ts16-fp16": ({"dynamo": False, "opset_version": 16}, True),
    "ts16-fp16-static": ({"dynamo": False, "opset_version": 16}, True),
    "dynamo-fp16": ({"dynamo": True}, True),
}

# Inputs whose dim 1 is the (token) sequence: dynamic in "-dyn" exports.
SEQUENCE_INPUTS = frozenset({"input_ids", "attention_mask", "decoder_input_ids",
                             "decoder_attention_mask"})


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


WHISPER_MELS, WHISPER_FRAMES = 8, 32  # the encoder takes exactly 2 * max_source_positions frames


def whisper() -> Built:
    """Whisper, encoder and decoder: two convolutions each followed by a functional GELU, pre-LN
    layers with GELU MLPs, decoder self-attention (causal) and cross-attention.

    The decoder's self-attention computes as transformers wrote Whisper's, BART's and Marian's
    before its attention refactor: heads flattened into the batch, (B*heads, T, d), two bmm;
    the causal mask added between a Reshape to (B, heads, T, T) and one back, and the
    probabilities reshaped to 4-D and back (the ``output_attentions`` copy) before the value
    bmm: a no-op Reshape pair."""
    from transformers import WhisperConfig, WhisperModel

    cfg = WhisperConfig(vocab_size=VOCAB, num_mel_bins=WHISPER_MELS, d_model=32,
                        encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_source_positions=WHISPER_FRAMES // 2, max_target_positions=32,
                        pad_token_id=1, bos_token_id=2, eos_token_id=3,
                        decoder_start_token_id=2, use_cache=False, dropout=0.0,
                        attention_dropout=0.0, activation_dropout=0.0)
    cfg._attn_implementation = "eager"
    model = WhisperModel(cfg)
    bmm = None
    for layer in model.decoder.layers:
        attn = cast(torch.nn.Module, layer.self_attn)
        bmm = bmm or _bmm_attention(type(attn))
        attn.__class__ = bmm
    features = torch.randn(BATCH, WHISPER_MELS, WHISPER_FRAMES,
                           generator=torch.Generator().manual_seed(3))
    # A decoder mask as batched decoding passes it; without one, transformers looks for packed
    # sequences with torch.diff, which TorchScript cannot export.
    ids, mask = _tokens(SEQ, VOCAB)
    return _wrap(model, (features, ids, mask),
                 ["input_features", "decoder_input_ids", "decoder_attention_mask"],
                 ["last_hidden_state", "encoder_last_hidden_state"])


def _bmm_attention(base: type[torch.nn.Module]) -> type[torch.nn.Module]:
    """``base`` (transformers' WhisperAttention) computing self-attention on 3-D tensors."""

    class Bmm3dAttention(base):  # type: ignore[valid-type, misc]
        num_heads: int
        head_dim: int
        scaling: float
        q_proj: torch.nn.Linear
        k_proj: torch.nn.Linear
        v_proj: torch.nn.Linear
        out_proj: torch.nn.Linear

        def forward(self, hidden_states: torch.Tensor, key_value_states: None = None,
                    cache: None = None, attention_mask: torch.Tensor | None = None,
                    **kwargs: object) -> tuple[torch.Tensor, None]:
            assert key_value_states is None and cache is None, "self-attention without cache"
            bsz, tgt, _ = hidden_states.shape
            h, d = self.num_heads, self.head_dim

            def heads(x: torch.Tensor) -> torch.Tensor:
                return x.view(bsz, -1, h, d).transpose(1, 2).reshape(bsz * h, -1, d)

            q = heads(self.q_proj(hidden_states) * self.scaling)
            k, v = heads(self.k_proj(hidden_states)), heads(self.v_proj(hidden_states))
            w = torch.bmm(q, k.transpose(1, 2))
            src = w.shape[-1]
            if attention_mask is not None:
                w = w.view(bsz, h, tgt, src) + attention_mask
                w = w.view(bsz * h, tgt, src)
            w = F.softmax(w, dim=-1)
            w = w.view(bsz, h, tgt, src).view(bsz * h, tgt, src)
            out = torch.bmm(w, v).view(bsz, h, tgt, d).transpose(1, 2).reshape(bsz, tgt, h * d)
            return self.out_proj(out), None

    return Bmm3dAttention


def beit() -> Built:
    """BEiT: pre-LN layers with layer scale, a shared relative-position bias added to the scores,
    erf GELU, mean pooling and a final LayerNorm (3 layers: 7 LayerNorms, 3 GELUs)."""
    from transformers import BeitConfig, BeitModel

    cfg = BeitConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=64, image_size=32, patch_size=8,
                     use_shared_relative_position_bias=True, use_mean_pooling=True,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     drop_path_rate=0.0)
    return _wrap(BeitModel(cfg), (_image(32),), ["pixel_values"],
                 ["last_hidden_state", "pooler_output"])


MODELS: dict[str, Callable[[], Built]] = {
    "gpt2": gpt2, "t5_encoder": t5_encoder, "llama": llama, "qwen2": qwen2,
    "mask2former": mask2former, "whisper": whisper, "beit": beit,
}
DECODERS = ("gpt2", "llama", "qwen2")


def exporters(name: str) -> list[str]:
    """Per model: TorchScript at opset 14 with static shapes, TorchScript at opset 17 with batch
    and sequence dynamic, dynamo at its default opset and at opset 23 (where it writes
    LayerNormalization, Attention and RMSNormalization itself when the model calls the matching
    torch op), and one float16 export: TorchScript at opset 16 with static shapes.

    Where torch 2.13 cannot make a valid export, the nearest one that is:
    - Mask2Former's deformable attention needs GridSample (opset 16): TorchScript at 14 raises
      UnsupportedOperatorError ("aten::grid_sampler ... opset version 14 is not supported"), so
      it gets opset 16 instead of 14; and with static shapes TorchScript computes GridSample's
      grid in float64, which ORT has no kernel for ("Could not find an implementation for
      GridSample(16)"), so its opset 16 export keeps the dynamic batch. Its one dynamo export
      (about 30 s) is at opset 23.
    - Mask2Former in float16: TorchScript (16 and 17) writes a float16 Range for the sine
      position embedding, which ONNX's Range does not allow (ORT: "Type 'tensor(float16)' of
      input parameter ... of operator (Range) ... is invalid"), so its float16 export is dynamo's.
    - TorchScript at 17 in float16 writes GPT-2's LayerNormalization with a float32 input and
      float16 weights (ORT: "Type parameter (T) of Optype (LayerNormalization) bound to different
      types"), hence opset 16 for the float16 exports.
    - BEiT (images: no sequence input) is exported in float16 at opset 14, the export of issue
      11 whose plugin forms need the opset raised to 15.
    - The image models' dims other than the batch stay static (position embeddings of a fixed
      size)."""
    if name == "mask2former":
        return ["ts16", "ts17", "dynamo23", "dynamo-fp16"]
    if name == "beit":
        return ["ts14-fp16", "ts17", "dynamo23"]
    if name == "whisper":
        return ["ts14-static", "ts17-dyn", "dynamo23", "ts16-fp16-static"]
    return ["ts14-static", "ts17-dyn", "dynamo", "dynamo23", "ts16-fp16-static"]


def feeds(name: str, built: Built, exporter: str = "ts17") -> list[dict[str, np.ndarray]]:
    """The example inputs (attention mask with a right-padded row); decoders also get a
    left-padded batch, and an export with a dynamic sequence a batch of 3 sequences of 7."""
    first = {n: a.detach().cpu().numpy() for n, a in zip(built.input_names, built.args)}
    out = [first]
    if name in DECODERS:
        mask = np.ones((BATCH, SEQ), dtype=np.int64)
        mask[1, : SEQ // 3] = 0
        out.append({**first, "attention_mask": mask})
    if exporter.endswith("-dyn"):
        rng = np.random.default_rng(4)
        other: dict[str, np.ndarray] = {}
        for n, a in first.items():
            shape = (3, 7) + a.shape[2:] if n in SEQUENCE_INPUTS else (3,) + a.shape[1:]
            if n.endswith("attention_mask"):
                other[n] = np.ones(shape, dtype=a.dtype)
                other[n][0, 5:] = 0
            elif np.issubdtype(a.dtype, np.integer):
                other[n] = rng.integers(4, VOCAB, shape).astype(a.dtype)
            else:
                other[n] = rng.standard_normal(shape).astype(a.dtype)
        out.append(other)
    return out


def export(built: Built, exporter: str, path: Path) -> None:
    """Export with the dims :data:`EXPORTERS` says are dynamic. Raises what the exporter
    raises."""
    kwargs, _ = EXPORTERS[exporter]
    names = built.input_names
    dims = {n: {0: "batch"} for n in names}
    if exporter.endswith("-static"):
        dims = {}
    elif exporter.endswith("-dyn"):
        dims = {n: {0: "batch", 1: "sequence"} if n in SEQUENCE_INPUTS else {0: "batch"}
                for n in names}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not kwargs["dynamo"]:
            torch.onnx.export(built.module, built.args, str(path), input_names=names,
                              output_names=built.output_names, dynamic_axes=dims or None,
                              **kwargs)  # type: ignore[arg-type]
        else:
            batch = torch.export.Dim("batch", min=1, max=64)
            seq = torch.export.Dim("sequence", min=2, max=32)
            shapes = (tuple({k: batch if v == "batch" else seq for k, v in dims[n].items()}
                            for n in names),) if dims else None
            program = torch.onnx.export(built.module, built.args, input_names=names,
                                        output_names=built.output_names, dynamic_shapes=shapes,
                                        **kwargs)  # type: ignore[arg-type]
            assert program is not None
            program.save(str(path))


# ---- what the torch model computes ------------------------------------------------------------

KINDS = ("layernorm", "rmsnorm", "gelu", "attention")

# Modules computing one instance of a kind, by class name (transformers' own classes are matched
# by name so that no model module needs importing). GELU: the exact and tanh forms, not
# QuickGELU (x * sigmoid(1.702 x)) or ClippedGELU (another function).
_NORM_CLASSES = {
    "layernorm": {"LayerNorm"},
    "rmsnorm": {"RMSNorm", "T5LayerNorm", "LlamaRMSNorm", "Qwen2RMSNorm"},
    "gelu": {"GELU", "GELUActivation", "NewGELUActivation", "GELUTanh", "FastGELUActivation",
             "AccurateGELUActivation"},
}
# The same computations called as functions outside such a module (Whisper's conv GELUs).
_FUNCTIONS = {F.layer_norm: "layernorm", F.rms_norm: "rmsnorm", F.gelu: "gelu"}


def _kind(module: torch.nn.Module) -> str | None:
    cls = type(module).__name__
    for kind, names in _NORM_CLASSES.items():
        if cls in names:
            return kind
    if isinstance(module, torch.nn.MultiheadAttention):
        return "attention"
    # Scaled dot-product attention modules; multi-scale deformable attention samples values at
    # learned offsets with softmax weights of a linear layer: no Q K^T, not an attention here.
    if cls.endswith("Attention") and "Deformable" not in cls and not any(
            _kind(c) == "attention" for c in module.children()):
        return "attention"
    return None


class _CountFunctions(TorchFunctionMode):
    """Functional calls of :data:`_FUNCTIONS` made outside a counted module."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not self.inside and func in _FUNCTIONS:
            self.calls[_FUNCTIONS[func]] += 1
        return func(*args, **(kwargs or {}))


def torch_counts(built: Built) -> dict[str, int]:
    """kind -> instances of :data:`KINDS` one forward pass of the torch model computes: calls of
    the modules that compute one (nn.LayerNorm; T5/Llama/Qwen2 RMSNorm; GELU activations;
    attention modules, the innermost where one wraps another), plus functional layer_norm,
    rms_norm and gelu calls made outside such modules."""
    mode = _CountFunctions()
    calls: Counter[str] = Counter()
    hooks = []

    def enter(kind: str) -> Callable[..., None]:
        def pre(*_: object) -> None:
            calls[kind] += 1
            mode.inside += 1
        return pre

    def leave(*_: object) -> None:
        mode.inside -= 1

    for m in built.module.modules():
        kind = _kind(m)
        if kind is not None:
            hooks.append(m.register_forward_pre_hook(enter(kind)))
            hooks.append(m.register_forward_hook(leave))
    try:
        with torch.no_grad(), mode:
            built.module(*built.args)
    finally:
        for h in hooks:
            h.remove()
    return {k: calls[k] + mode.calls[k] for k in KINDS}


_Rotate = Callable[[torch.Tensor], torch.Tensor]


def rotary_count(built: Built) -> int:
    """Tensors one forward pass rotates by rotary position embeddings: calls of the
    ``rotate_half`` of transformers' modeling modules (Llama, Qwen2, ...: one for Q and one for
    K per layer), counted by wrapping it for the pass."""
    import sys

    calls = 0

    def counted(f: _Rotate) -> _Rotate:
        def rotate_half(x: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            calls += 1
            return f(x)
        return rotate_half

    spaces = [vars(m) for n, m in list(sys.modules.items())
              if n.startswith("transformers.models.") and callable(vars(m).get("rotate_half"))]
    saved = [ns["rotate_half"] for ns in spaces]
    try:
        for ns, f in zip(spaces, saved):
            ns["rotate_half"] = counted(f)
        with torch.no_grad():
            built.module(*built.args)
    finally:
        for ns, f in zip(spaces, saved):
            ns["rotate_half"] = f
    return calls


# ---- exports and rewrites, each made once per session -----------------------------------------

class HeldoutExports:
    """Builds and exports each (model, exporter) once per session; remembers why an export
    failed (as a one-line string) so every test of that export reports it. Also keeps each
    model's torch counts and each (export, pipeline) rewrite, so that the tests sharing an
    export rewrite it once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._paths: dict[tuple[str, str], Path | str] = {}
        self._feeds: dict[tuple[str, str], list[dict[str, np.ndarray]]] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._rewrites: dict[tuple[str, str, str], onnx.ModelProto | str] = {}

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
                self._feeds[key] = feeds(name, built, exporter)
            except Exception as e:
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                summary = [ln for ln in lines if ln.startswith("<class ")]
                first = summary[0] if summary else (lines[0] if lines else "")
                self._paths[key] = f"{exporter} cannot export {name}: {type(e).__name__}: {first}"
        return self._paths[key]

    def feeds(self, name: str, exporter: str) -> list[dict[str, np.ndarray]]:
        self.export(name, exporter)
        return self._feeds[(name, exporter)]

    def counts(self, name: str) -> dict[str, int]:
        """:func:`torch_counts` of the model (float32: the float16 model computes the same
        instances)."""
        if name not in self._counts:
            self._counts[name] = torch_counts(MODELS[name]())
        return self._counts[name]

    def rewritten(self, name: str, exporter: str, pipeline: str) -> onnx.ModelProto | str:
        """The export rewritten by ``pipeline`` (a copy: callers may change it), or why the
        export or the rewrite failed, in one line."""
        import onnxpass

        key = (name, exporter, pipeline)
        if key not in self._rewrites:
            path = self.export(name, exporter)
            if isinstance(path, str):
                self._rewrites[key] = path
            else:
                try:
                    self._rewrites[key] = onnxpass.rewrite(onnx.load(str(path)), pipeline)[0]
                except Exception as e:
                    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                    self._rewrites[key] = (f"rewrite raised {type(e).__name__}: "
                                           f"{lines[0] if lines else ''}"[:400])
        found = self._rewrites[key]
        if isinstance(found, str):
            return found
        copy = onnx.ModelProto()
        copy.CopyFrom(found)
        return copy
