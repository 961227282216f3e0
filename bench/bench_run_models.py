"""The models bench_run.py times, exported once with random weights (nothing is downloaded) and
cached.

- ``export_clip``: transformers' ``CLIPVisionModel(CLIPVisionConfig())``, ViT-B/32, 88M
  parameters, TorchScript exporter at opset 14, stored inline (one ~333 MB .onnx file).
- ``export_vit_huge``: transformers' ``ViTModel`` at ViT-H/14 size (hidden 1280, 32 layers, 16
  heads, MLP 5120, 224x224 images in 14x14 patches), ~632M parameters, ~2.5 GB of float32 weights,
  TorchScript exporter at opset 17, stored with external data: ``vit_h14_op17.onnx`` plus one
  ``vit_h14_op17.onnx.data`` holding every tensor of 1 KiB or more.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _vm_hwm_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024


def export_clip(cache: Path, hidden_act: str = "quick_gelu") -> Path:
    """Export CLIPVisionModel(CLIPVisionConfig()) once; later calls reuse the file."""
    suffix = "" if hidden_act == "quick_gelu" else f"_{hidden_act}"
    path = cache / f"clip_vit_b32_vision_op14{suffix}.onnx"
    if path.exists():
        return path
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_act=hidden_act)
    model = CLIPVisionModel(config).eval()
    pixels = torch.randn(1, 3, config.image_size, config.image_size)
    tmp = path.with_name(path.name + ".tmp")
    t0 = time.perf_counter()
    _log(f"exporting CLIPVisionModel ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
         f"params, hidden_act={hidden_act}) to {path} ...")
    with torch.no_grad():
        torch.onnx.export(model, (pixels,), str(tmp), dynamo=False, opset_version=14,
                          input_names=["pixel_values"],
                          output_names=["last_hidden_state", "pooler_output"],
                          dynamic_axes={"pixel_values": {0: "batch"},
                                        "last_hidden_state": {0: "batch"},
                                        "pooler_output": {0: "batch"}})
    os.replace(tmp, path)
    _log(f"exported in {time.perf_counter() - t0:.1f}s, {path.stat().st_size / 2**20:.0f} MiB")
    return path


VIT_HUGE = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                intermediate_size=5120, image_size=224, patch_size=14)


def export_vit_huge(cache: Path) -> Path:
    """Export a ViT-H/14-sized ViTModel with random weights once, with external data.

    torch's TorchScript exporter writes a >2 GB model's weights as one file per tensor beside the
    .onnx; this loads that export and saves it again with all tensors in one ``.onnx.data`` file
    (the layout onnx.save, onnxpass and ONNX Runtime's optimizer write), then removes the export.
    Peak memory is about three times the weights (~8 GB); on 2 cores it takes a few minutes.
    """
    path = cache / "vit_h14_op17.onnx"
    data = path.with_name(path.name + ".data")
    if path.exists() and data.exists():
        return path
    import onnx
    import torch
    from transformers import ViTConfig, ViTModel

    cache.mkdir(parents=True, exist_ok=True)
    for p in (path, data):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    config = ViTConfig(**VIT_HUGE)
    model = ViTModel(config).eval()
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"exporting ViTModel at ViT-H/14 size ({n_params / 1e6:.1f}M params, "
         f"{n_params * 4 / 2**30:.2f} GiB float32; built in {time.perf_counter() - t0:.1f}s) "
         f"to {path} ...")
    pixels = torch.randn(1, 3, config.image_size, config.image_size)
    tmpdir = cache / "vit_h14_export.tmp"
    shutil.rmtree(tmpdir, ignore_errors=True)
    tmpdir.mkdir()
    t1 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(model, (pixels,), str(tmpdir / "model.onnx"), dynamo=False,
                          opset_version=17, input_names=["pixel_values"],
                          output_names=["last_hidden_state", "pooler_output"],
                          dynamic_axes={"pixel_values": {0: "batch"},
                                        "last_hidden_state": {0: "batch"},
                                        "pooler_output": {0: "batch"}})
    t_export = time.perf_counter() - t1
    files = list(tmpdir.iterdir())
    _log(f"torch.onnx.export: {t_export:.1f}s, {len(files)} files, "
         f"{sum(f.stat().st_size for f in files) / 2**30:.2f} GiB")
    del model
    gc.collect()
    t2 = time.perf_counter()
    m = onnx.load(str(tmpdir / "model.onnx"))  # reads the per-tensor files into the proto
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(m, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
              location=data.name, size_threshold=1024)
    del m
    os.replace(tmp, path)  # the .data already carries its final name; the .onnx goes in last
    shutil.rmtree(tmpdir)
    _log(f"re-saved with one data file in {time.perf_counter() - t2:.1f}s; built in "
         f"{time.perf_counter() - t0:.1f}s in all, peak RSS {_vm_hwm_mib():.0f} MiB; "
         f"{path.stat().st_size / 2**20:.1f} MiB + {data.stat().st_size / 2**30:.2f} GiB data")
    return path


if __name__ == "__main__":  # python bench/bench_run_models.py [CACHE]: build both
    where = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/onnxpass-bench")
    print(export_clip(where))
    print(export_vit_huge(where))
