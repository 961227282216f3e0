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


def test_attention_p_split_meets_the_default_float16_tolerance() -> None:
    """plan(p_split=True): p v with p = hi + lo in float16, as accurate as float32 p: within
    check.TOLERANCES' float16 (1e-2, 1e-4), which the default (p rounded) is not held to."""
    code = (
        "import numpy as np\n"
        "from onnxpass.plugins.kernels import get_kernel\n"
        "from onnxpass.plugins.kernels import attention as att\n"
        "from onnxpass.plugins.kernels.base import launch\n"
        "from onnxpass.plugins.kernels.check import TOLERANCES, to_torch, to_float32\n"
        "from onnxpass.verify import error_stats\n"
        "import torch\n"
        "k = get_kernel('AttentionPlugin')\n"
        "for c in k.cases:\n"
        "    ins = c.inputs('float16')\n"
        "    attrs = k.spec.attr_values(c.attrs)\n"
        "    want = k.reference(*ins, **attrs)[0]\n"
        "    ts = [to_torch(a) for a in ins]\n"
        "    y = torch.empty(want.shape, dtype=torch.float16)\n"
        "    launch(att.plan([list(a.shape) for a in ins], ['float16'] * 4, attrs,\n"
        "                    p_split=True), ts, [y])\n"
        "    s = error_stats('y', want.astype(np.float32), to_float32(y),\n"
        "                    *TOLERANCES['float16'])\n"
        "    print(c.name, s.within)\n")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    rows = [line.split() for line in p.stdout.splitlines()]
    assert rows and all(ok == "True" for _, ok in rows), (p.stdout, p.stderr[-2000:])


def test_attention_plan_with_a_symbolic_batch_and_sequence() -> None:
    """TensorRT's dynamic batch and sequence: grid and int32 arguments evaluate to the plan for
    the concrete shapes at the same tiles (a key-padding mask: strides B and L symbolic; a
    static sequence may pick other tiles: 32-row blocks up to 128 queries, no key bounds)."""
    from onnxpass.plugins import get_plugin
    from onnxpass.plugins.kernels import get_kernel
    from onnxpass.plugins.kernels.check import sym

    k, values = get_kernel("AttentionPlugin"), get_plugin("AttentionPlugin").attr_values({})
    b, s = sym("b"), sym("s")
    p = k.plan([[b, 12, s, 64], [b, 12, s, 64], [b, 12, s, 64], [b, 1, 1, s]],
               ["float16"] * 4, values)
    for batch, seq in ((2, 197), (8, 128), (3, 1000)):
        same = {"block_m": p.constexprs["BLOCK_M"], "block_n": p.constexprs["BLOCK_N"],
                "num_warps": p.num_warps, "num_stages": p.num_stages}
        q = k.plan([[batch, 12, seq, 64]] * 3 + [[batch, 1, 1, seq]], ["float16"] * 4, values,
                   **same)
        env = {"b": batch, "s": seq}
        assert [g.value(env) if hasattr(g, "value") else g for g in p.grid] == list(q.grid)
        assert [a.value(env) if hasattr(a, "value") else a for a in p.args] == list(q.args)
        assert p.kernel is q.kernel and p.constexprs["MASK"] == q.constexprs["MASK"] == 2
        assert p.constexprs["EVEN"] is False  # L unknown: the key bounds stay
    short = k.plan([[8, 8, 100, 32], [8, 8, 850, 32], [8, 8, 850, 32], [8, 1, 1, 850]],
                   ["float16"] * 4, values)  # DETR's cross-attention: 32-row blocks
    assert (short.constexprs["BLOCK_M"], short.constexprs["BLOCK_N"], short.num_warps) == \
        (32, 128, 2)
