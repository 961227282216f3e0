"""Plugin kernels: each Triton kernel against its NumPy reference in Triton's interpreter (CPU;
small shapes, odd sizes, leading dims, every dtype the kernel takes), the AOT path (PTX for sm_90
compiled without a GPU, launched as TensorRT would: grid, block and int32 arguments checked
against the JIT launch, with the batch dim symbolic too), TensorRT glue, and the CLI listing.

A process either interprets Triton kernels or compiles them (Triton decides when it is imported),
so both run in subprocesses: python -m onnxpass.plugins.kernels.check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnxpass.cli import main
from onnxpass.plugins import get_plugin, trt
from onnxpass.plugins.kernels import get_kernel
from onnxpass.plugins.kernels.base import _drop_hidden_params, cdiv, prod, static
from onnxpass.plugins.kernels.check import kernels, sym

pytest.importorskip("triton", reason="the plugin kernels are written in Triton: pip install triton")

ROOT = Path(__file__).resolve().parent.parent
CASES = [(k.plugin, c.name, d) for k in kernels() for c in k.cases for d in k.dtypes]
IDS = ["-".join(c) for c in CASES]


def _check(*args: str, interpret: bool) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    p = subprocess.run([sys.executable, "-m", "onnxpass.plugins.kernels.check", "--json", *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert rows, f"check failed (exit {p.returncode}):\n{p.stderr[-3000:]}"
    return rows


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return {(r["plugin"], r["case"], r["dtype"]): r for r in _check(interpret=True)}


@pytest.fixture(scope="module")
def compiled() -> dict:
    rows = _check("--aot", interpret=False)
    return {(r["plugin"], r["case"], r["dtype"], r["symbolic"]): r for r in rows}


@pytest.mark.parametrize("plugin,case,dtype", CASES, ids=IDS)
def test_kernel_matches_reference(interpreted: dict, plugin: str, case: str, dtype: str) -> None:
    r = interpreted[(plugin, case, dtype)]
    assert r["within"], (f"{plugin} {case} {dtype}: rel max {r['rel_max']:.3g}, abs max "
                         f"{r['abs_max']:.3g}")


@pytest.mark.parametrize("plugin,case,dtype", CASES, ids=IDS)
def test_aot_kernel_launches_as_jit_does(compiled: dict, plugin: str, case: str, dtype: str
                                         ) -> None:
    spec = get_plugin(plugin)
    for symbolic in (False, True):
        r = compiled.get((plugin, case, dtype, symbolic))
        if r is None:
            continue
        n_args = len(r["args"])
        assert r["ptx_target"] == "sm_90a" and r["name"] == r["kernel"]
        assert r["ptx_params"] == ([".u64"] * len(spec.inputs) + [".u32"] * n_args
                                   + [".u64"] * len(spec.outputs)), "TensorRT's argument order"
        assert r["grid"] == r["jit_grid"] and r["args"] == r["jit_args"]
        assert r["block"] == [r["jit_block"], 1, 1] and r["shared_mem"] <= 48 * 1024
        shape = next(c for c in get_kernel(plugin).cases if c.name == case).shapes[0]
        if symbolic and len(shape) >= 2:  # the batch reaches the grid or an argument (or both)
            assert any(isinstance(g, str) for g in r["grid_symbolic"]) \
                or None in r["static_args"], "a symbolic batch was baked in"


def test_ptx_isa_is_lowered_to_what_the_driver_loads() -> None:
    """Triton writes the newest PTX ISA its ptxas knows (9.4 for Triton 3.9); a CUDA 13.0
    driver refuses it (seen on the H100 machine), so the PTX is lowered to the driver's."""
    code = ("import onnxpass.plugins.kernels.base as b\n"
            "from triton.backends.compiler import GPUTarget\n"
            "b._driver_ptx_version = lambda: 84\n"
            "t = GPUTarget('cuda', 90, 32)\n"
            "for v in (None, 80):\n"
            "    a = b.aot_kernel('GeluPlugin', [[4, 8]], ['float16'], {}, target=t,\n"
            "                     ptx_version=v)\n"
            "    print(a.ptx.split('.version ')[1][:3])\n")
    p = _compiled(code)
    assert p.stdout.split() == ["8.4", "8.0"], p.stderr[-2000:]


def _compiled(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh Python with Triton compiling (TRITON_INTERPRET unset: it decides
    when Triton is first imported)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_aot_refuses_more_than_48k_of_shared_memory() -> None:
    """An attention tile that needs over 48 KB of shared memory launches in Triton (its loader
    opts in) but not as an AOT kernel: nothing public says TensorRT opts a plugin's kernel in,
    so aot_kernel refuses it in one line instead of writing a plugin that fails at enqueue."""
    code = ("import onnxpass.plugins.kernels.base as b\n"
            "from triton.backends.compiler import GPUTarget\n"
            "s = [[2, 8, 256, 128], [2, 8, 256, 128], [2, 8, 256, 128], [2, 1, 1, 256]]\n"
            "d = ['float16'] * 4\n"
            "try:\n"
            "    b.aot_kernel('AttentionPlugin', s, d, {}, target=GPUTarget('cuda', 90, 32),\n"
            "                 ptx_version=84, block_m=128, block_n=128, num_stages=3)\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    p = _compiled(code)
    assert "an AOT plugin kernel keeps to 49152" in p.stdout, p.stdout + p.stderr[-2000:]


def test_symbolic_plans_evaluate_to_the_concrete_ones() -> None:
    """The launch plan with a run-time batch, evaluated at several batches, is the plan for
    that batch: what TensorRT computes from the AOT kernel's symbolic launch parameters.
    Where the rows are static, a rows kernel may take fewer rows a program (enough programs)
    and drop its row mask and int64 offsets (SPECIALIZED); at the same rows a program the
    plans agree, the symbolic one in the general form (row mask, int64 offsets)."""
    for plugin, shapes, attrs in [("LayerNormPlugin", [[None, 197, 768], [768], [768]], {}),
                                  ("LayerNormPlugin", [[None, 7, 37], [37], [37]], {}),
                                  ("RMSNormPlugin", [[None, 4096], [4096]], {"epsilon": 1e-6}),
                                  ("RMSNormPlugin", [[None, 7, 37], [37]], {}),
                                  ("RMSNormPlugin", [[None, 20000], [20000]], {}),
                                  ("GeluPlugin", [[None, 197, 3072]], {}),
                                  ("GeluPlugin", [[None, 3, 5]], {"approximate": 1}),
                                  ("RotaryEmbeddingPlugin", [[None, 32, 512, 128], [1, 512, 64],
                                                             [1, 512, 64]], {}),
                                  ("RotaryEmbeddingPlugin", [[None, 2, 12, 16], [None, 12, 4],
                                                             [None, 12, 4]],
                                   {"interleaved": 1, "rotary_embedding_dim": 8})]:
        k = get_kernel(plugin)
        values = get_plugin(plugin).attr_values(attrs)
        b = sym("batch")
        p = k.plan([[b] + s[1:] if s[0] is None else s for s in shapes], ["float16"] * len(shapes),
                   values)
        same = {"rows_per_program": p.constexprs["ROWS"]} if "ROWS" in p.constexprs else {}
        for batch in (1, 2, 63, 64, 1000):
            q = k.plan([[batch] + s[1:] if s[0] is None else s for s in shapes],
                       ["float16"] * len(shapes), values, **same)
            env = {"batch": batch}
            assert [g.value(env) if hasattr(g, "value") else g for g in p.grid] == list(q.grid)
            assert [a.value(env) if hasattr(a, "value") else a for a in p.args] == list(q.args)
            general = {k_: v for k_, v in p.constexprs.items() if k_ not in SPECIALIZED}
            assert p.kernel is q.kernel and general == {
                k_: v for k_, v in q.constexprs.items() if k_ not in SPECIALIZED}
            if "EVEN_ROWS" in p.constexprs:
                assert p.constexprs["EVEN_ROWS"] is False and p.constexprs["I64"] is True


SPECIALIZED = ("EVEN_ROWS", "I64")


def test_static_rows_specialize_the_rows_kernels() -> None:
    """Static rows: no row mask where ROWS divides them, int32 offsets below 2^31 elements,
    and enough programs (MobileViT stage 5's 4096 rows of 240 in 1024 programs of 4)."""
    from onnxpass.plugins.kernels.layernorm import MIN_PROGRAMS

    k = get_kernel("LayerNormPlugin")
    values = get_plugin("LayerNormPlugin").attr_values({})
    p = k.plan([[256, 16, 240], [240], [240]], ["float16"] * 3, values)
    assert p.constexprs["ROWS"] == 4 and p.grid == (MIN_PROGRAMS,)
    assert p.constexprs["EVEN_ROWS"] is True and p.constexprs["I64"] is False
    p = k.plan([[3, 7, 37], [37], [37]], ["float16"] * 3, values)  # 21 rows: one a program
    assert p.constexprs["ROWS"] == 1 and p.constexprs["EVEN_ROWS"] is True
    p = k.plan([[3, 7, 37], [37], [37]], ["float16"] * 3, values, rows_per_program=4)
    assert p.constexprs["EVEN_ROWS"] is False  # 21 rows in programs of 4: the last masked
    p = k.plan([[1 << 22, 1024], [1024], [1024]], ["float16"] * 3, values)
    assert p.constexprs["I64"] is True  # 2^32 elements


def test_shape_arithmetic() -> None:
    b = sym("b")
    assert prod([2, 3, 4]) == 24 and static(prod([2, b, 4])) is None
    assert prod([2, b, 4]).value({"b": 5}) == 40 and cdiv(prod([b, 3]), 4).value({"b": 3}) == 3
    assert cdiv(10, 4) == 3 and prod([]) == 1


def test_hidden_scratch_params_are_dropped_only_when_unused() -> None:
    ptx = (".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u32 k_param_1,\n"
           "\t.param .u64 k_param_2,\n\t.param .u64 k_param_3\n)\n{\n\tld.param.u64 %rd1, "
           "[k_param_0];\n}\n")
    out = _drop_hidden_params(ptx, "k", 2)
    assert "k_param_1" in out and "k_param_2" not in out and "k_param_3" not in out
    with pytest.raises(ValueError, match="k_param_0 is used"):
        _drop_hidden_params(ptx, "k", 0)


def test_tensorrt_glue_without_tensorrt() -> None:
    ln, gelu = get_plugin("LayerNormPlugin"), get_plugin("GeluPlugin")
    assert trt.signature(ln) == [("x", "tensor"), ("gamma", "tensor"), ("beta", "tensor"),
                                 ("epsilon", "float"), ("axis", "int")]
    assert trt.type_combination(ln, get_kernel(ln.name)) == ", ".join(["FP32|FP16|BF16"] * 4)
    assert trt.type_combination(gelu, get_kernel(gelu.name)) == "FP32|FP16|BF16, FP32|FP16|BF16"
    rms = get_plugin("RMSNormPlugin")
    assert trt.signature(rms) == [("x", "tensor"), ("gamma", "tensor"), ("epsilon", "float"),
                                  ("axis", "int")]
    assert trt.type_combination(rms, get_kernel(rms.name)) == ", ".join(["FP32|FP16|BF16"] * 3)
    rope = get_plugin("RotaryEmbeddingPlugin")
    assert trt.signature(rope) == [("x", "tensor"), ("cos", "tensor"), ("sin", "tensor"),
                                   ("interleaved", "int"), ("rotary_embedding_dim", "int")]


def test_tensorrt_registration() -> None:
    if trt.missing():
        pytest.skip(f"{trt.missing()}: no machine here has TensorRT; onnxpass/plugins/trt.py is "
                    "written against the documented tensorrt.plugin API")
    ids = trt.register()
    assert {"onnxpass::LayerNormPlugin", "onnxpass::GeluPlugin"} <= set(ids)


def test_cli_lists_plugins_and_implementations(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["plugins", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    ln = rows["LayerNormPlugin"]
    assert [a["name"] for a in ln["attributes"]] == ["epsilon", "axis"]
    assert ln["implementations"]["numpy"] == "ok" and ln["implementations"]["triton"] == "ok"
    assert set(ln["implementations"]) >= {"onnx-function", "tensorrt-jit", "tensorrt-aot"}
    assert main(["plugins", "list"]) == 0
    assert "onnxpass::GeluPlugin v1  (x) -> (y)" in capsys.readouterr().out
