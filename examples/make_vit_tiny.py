"""Regenerate examples/vit_tiny.onnx: a tiny ViT (random weights, fixed seed) exported by
PyTorch's TorchScript exporter at opset 14, as a real decomposed-LayerNorm/GELU graph.

    python examples/make_vit_tiny.py
"""

from pathlib import Path

import torch
from transformers import ViTConfig, ViTModel

torch.manual_seed(0)
config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   image_size=32, patch_size=8, num_channels=3)
model = ViTModel(config, add_pooling_layer=False).eval()
pixels = torch.randn(1, 3, 32, 32)
out = Path(__file__).with_name("vit_tiny.onnx")
torch.onnx.export(model, (pixels,), str(out), input_names=["pixel_values"],
                  output_names=["last_hidden_state"], dynamic_axes={"pixel_values": {0: "batch"}},
                  opset_version=14, dynamo=False)
print(f"wrote {out} ({out.stat().st_size} bytes)")
