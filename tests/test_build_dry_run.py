"""onnxpass build --dry-run: no TensorRT (none is installed here), the rewritten model, the plugins
it needs, and the trtexec line for the target TensorRT."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from onnxpass.verify import compare_models, random_inputs

ROOT = Path(__file__).resolve().parent.parent
VIT = ROOT / "examples" / "vit_tiny.onnx"
SHAPES = ["--shapes", "pixel_values:1x3x32x32,4x3x32x32,8x3x32x32"]


def _dry(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    engine = tmp_path / "vit.plan"
    p = subprocess.run([sys.executable, "-m", "onnxpass.cli", "build", str(VIT), "--dry-run",
                        "-o", str(engine), *SHAPES, *args], capture_output=True, text=True)
    return p, engine


def _trtexec(p: subprocess.CompletedProcess[str]) -> list[str]:
    line = p.stdout.strip().splitlines()[-1]
    assert line.startswith("trtexec "), p.stdout + p.stderr
    return shlex.split(line)


def test_fp16_on_tensorrt_10(tmp_path: Path) -> None:
    p, engine = _dry(tmp_path, "--precision", "fp16", "--passes", "default", "--workspace", "2G",
                     "--opt-level", "4", "--target", "trt-10.13")
    assert p.returncode == 0, p.stderr
    cmd = _trtexec(p)
    onnx_path = engine.with_name("vit.plan.onnx")
    assert cmd[1:3] == [f"--onnx={onnx_path}", f"--saveEngine={engine}"]
    assert "--fp16" in cmd and "--noTF32" in cmd and "--stronglyTyped" not in cmd
    assert "--minShapes=pixel_values:1x3x32x32" in cmd and \
        "--maxShapes=pixel_values:8x3x32x32" in cmd
    assert "--memPoolSize=workspace:2048M" in cmd and "--builderOptimizationLevel=4" in cmd
    assert not engine.exists()  # nothing pretends an engine was built
    m = onnx.load(str(onnx_path))  # the default pipeline at 10.13: trt attention form, Gelu
    ops = {n.op_type for n in m.graph.node}
    assert "Attention" not in ops and "Gelu" in ops and "LayerNormalization" in ops
    feeds = random_inputs(onnx.load(str(VIT)), dims={"batch": 2})
    assert all(s.within for s in compare_models(str(VIT), m, feeds, rtol=1e-4, atol=1e-5))


def test_tensorrt_11_has_no_precision_flags(tmp_path: Path) -> None:
    """11 is always strongly typed: fp16 is the graph's (the fp16 pass ran), no trtexec flag."""
    p, engine = _dry(tmp_path, "--precision", "fp16", "--target", "trt-11.4")
    assert p.returncode == 0, p.stderr
    cmd = _trtexec(p)
    assert not {"--fp16", "--stronglyTyped", "--noTF32"} & set(cmd)
    m = onnx.load(str(engine.with_name("vit.plan.onnx")))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    assert "taken to import what trt-10.15 does" in p.stderr


def test_plugins_are_listed(tmp_path: Path) -> None:
    p, engine = _dry(tmp_path, "--passes", "plugins", "--target", "trt-8.6", "--workspace", "1G")
    assert p.returncode == 0, p.stderr
    cmd = _trtexec(p)
    assert "--workspace=1024" in cmd and "--fp16" not in cmd
    info = json.loads(Path(str(engine) + ".plugins.json").read_text())
    names = {e["plugin"]: e for e in info["plugins"]}
    assert info["target"] == "trt-8.6"
    assert names["onnxpass::LayerNormPlugin"]["nodes"] == 5
    assert names["onnxpass::GeluPlugin"]["kernel"] == "aot"
    assert names["onnxpass::LayerNormPlugin"]["input_dtypes"] == [["float32"] * 3]
    assert "trtexec cannot register onnxpass's plugins" in p.stderr
    # the plugin nodes run in ONNX Runtime through their local functions
    m = onnx.load(str(engine.with_name("vit.plan.onnx")))
    feeds = random_inputs(m, dims={"batch": 2})
    assert np.isfinite(list(compare_models(str(VIT), m, feeds, rtol=1e-3, atol=1e-4))[0].abs_max)


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    p, engine = _dry(tmp_path, "--target", "trt-7.2")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert not engine.with_name("vit.plan.onnx").exists()
    p, _ = _dry(tmp_path, "--precision", "int8")
    assert p.returncode == 2 and "give --calibration" in p.stderr


def test_the_rewritten_model_never_replaces_the_input(tmp_path: Path) -> None:
    """-o m beside m.onnx: the build writes its model to ENGINE.onnx, here the input's path."""
    src = tmp_path / "m.onnx"
    src.write_bytes(VIT.read_bytes())
    before = src.read_bytes()
    p = subprocess.run([sys.executable, "-m", "onnxpass.cli", "build", str(src), "--dry-run",
                        "--passes", "default", "-o", str(tmp_path / "m"), *SHAPES],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "output would overwrite the input model" in p.stderr, p.stderr
    assert p.stderr.strip().count("\n") == 0 and src.read_bytes() == before
