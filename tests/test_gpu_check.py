"""onnxpass.plugins.gpu_check on the tiny ViT example: the model in plugin form, its plugin nodes
run by Triton's interpreter on the CPU (the GPU runs the same code with Triton's JIT), the rest
by ONNX Runtime, against ONNX Runtime on the original model. In a subprocess: Triton decides
between interpreter and compiler when it is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnxpass.cli import main

pytest.importorskip("triton", reason="the plugin kernels are written in Triton: pip install triton")

ROOT = Path(__file__).resolve().parent.parent
VIT = ROOT / "examples" / "vit_tiny.onnx"


def _check(model: Path) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    p = subprocess.run([sys.executable, "-m", "onnxpass.cli", "plugins", "check", str(model),
                        "--original", str(VIT), "--device", "cpu", "--json"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    assert lines, p.stderr[-3000:]
    r = json.loads(lines[-1])
    assert (p.returncode == 0) == r["ok"]
    return r


@pytest.mark.parametrize("passes,plugins", [
    ("layernorm=plugin,gelu=plugin", {"LayerNormPlugin": 5, "GeluPlugin": 2}),
    ("plugins", {"LayerNormPlugin": 5, "GeluPlugin": 2, "AttentionPlugin": 2}),
])
def test_vit_tiny_in_plugin_form_matches_onnxruntime(tmp_path: Path, passes: str,
                                                     plugins: dict) -> None:
    out = tmp_path / "vit.onnx"
    assert main(["run", str(VIT), "--passes", passes, "-o", str(out), "-q"]) == 0
    r = _check(out)
    assert r["ok"], r["outputs"]
    ran: dict[str, list[str]] = {}
    for _, op, how in r["ran"]:
        ran.setdefault(op, []).append(how)
    for op, n in plugins.items():  # these have Triton kernels: none may fall back
        assert ran.get(op) == ["triton"] * n, (op, ran.get(op))
    assert all(h == "triton" or h.startswith("onnx-function") for hs in ran.values() for h in hs)
    assert r["segments"] >= 1 and all(s["rel_max"] <= 1e-4 for s in r["outputs"])
