"""Plugin kernels on the edge cases models produce: fully masked rows (finfo.min, -inf, -10000
masks), a length-1 reduced or softmax dim, all-zero vectors, constant rows, infinities and NaN.

Each case runs three ways: the NumPy reference (float64 math, the op's definition), the plugin's
ONNX function in ONNX Runtime, and the Triton kernel in Triton's interpreter (CPU). Both of the
latter must equal the reference within the tolerances of tests/test_plugin_reference.py and
tests/test_plugin_kernels.py, NaN positions included.

Triton picks interpreter or compiler once, when imported, so the kernels run in one
subprocess: ``TRITON_INTERPRET=1 python -m tests.test_kernel_edge_cases`` (one JSON line per
case and dtype; ``--device cuda`` runs them compiled on a GPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
F32_MIN = float(np.finfo(np.float32).min)
Make = Callable[[np.dtype, np.random.Generator], list[np.ndarray]]


@dataclass(frozen=True)
class Edge:
    """One edge case: ``make(dtype, rng)`` returns the plugin's inputs for a float dtype."""

    plugin: str
    name: str
    make: Make
    attrs: dict[str, Any] = field(default_factory=dict)
    dtypes: tuple[str, ...] = ("float32", "float16")
    onnx_atol: float = 0.0  # the ONNX function's own float32 rounding error, where it has one
    kernel_atol: float = 0.0  # the kernel's, where it rounds as the function does


def _normal(*shapes: tuple[int, ...], scale: float = 1.0) -> Make:
    return lambda t, rng: [(scale * rng.standard_normal(s)).astype(t) for s in shapes]


# -- AttentionPlugin: q (B, H, S, d), k (B, H, L, d), v (B, H, L, dv), additive mask ---------

def _attention(mask: Callable[[np.dtype], np.ndarray], s: int = 5, l: int = 6, d: int = 16,
               dv: int = 16, q_scale: float = 1.0) -> Make:
    def make(t: np.dtype, rng: np.random.Generator) -> list[np.ndarray]:
        q = (q_scale * rng.standard_normal((2, 2, s, d))).astype(t)
        k, v = rng.standard_normal((2, 2, l, d)).astype(t), rng.standard_normal((2, 2, l, dv))
        return [q, k, v.astype(t), mask(t).astype(t)]
    return make


def _key_padding(fill: float | None, l: int = 6) -> Callable[[np.dtype], np.ndarray]:
    """(B, 1, 1, L): batch 0 has its last 2 keys masked, batch 1 every key (a fully masked
    row); ``fill`` None means the dtype's lowest value (finfo.min, as T5 and BERT write it)."""
    def mask(t: np.dtype) -> np.ndarray:
        f = np.finfo(t).min if fill is None else fill
        m = np.zeros((2, 1, 1, l))
        m[0, ..., -2:] = f
        m[1] = f
        return m
    return mask


def _row_mask(fill: float, s: int = 5, l: int = 6) -> Callable[[np.dtype], np.ndarray]:
    """(B, 1, S, L), Where(mask, scores, fill) written as an additive mask: batch 1's query
    row 2 fully masked, its row 3 half masked."""
    def mask(t: np.dtype) -> np.ndarray:
        m = np.zeros((2, 1, s, l))
        m[1, 0, 2] = fill
        m[1, 0, 3, ::2] = fill
        return m
    return mask


def _mixed_mask(t: np.dtype) -> np.ndarray:
    """One row of -inf and finfo.min keys: the finfo.min keys share the weight."""
    m = np.zeros((2, 1, 5, 6))
    m[0, 0, 1] = [-np.inf, np.finfo(t).min, -np.inf, np.finfo(t).min, -np.inf, -np.inf]
    m[1, 0, 4, :3] = np.finfo(t).min
    return m


def _plus_inf_mask(t: np.dtype) -> np.ndarray:
    """One +inf: that row's softmax is NaN, which the function's guard makes 0."""
    m = np.zeros((2, 1, 5, 6))
    m[0, 0, 1, 3] = np.inf
    return m


ATTENTION = [
    *(Edge("AttentionPlugin", f"key_pad_{n}", _attention(_key_padding(f)), {"scale": 0.25})
      for n, f in (("finfo_min", None), ("ninf", -np.inf), ("m10000", -10000.0))),
    *(Edge("AttentionPlugin", f"row_{n}", _attention(_row_mask(f)), {"scale": 0.25})
      for n, f in (("ninf", -np.inf), ("m10000", -10000.0))),
    Edge("AttentionPlugin", "row_finfo_min", _attention(_row_mask(F32_MIN)), {"scale": 0.25},
         dtypes=("float32",)),
    Edge("AttentionPlugin", "row_finfo_min_long", _attention(_row_mask(F32_MIN, 5, 70), l=70),
         {"scale": 0.25}, dtypes=("float32",)),  # several key tiles
    Edge("AttentionPlugin", "ninf_and_finfo_min", _attention(_mixed_mask), {"scale": 0.25}),
    Edge("AttentionPlugin", "plus_inf_mask", _attention(_plus_inf_mask), {"scale": 0.25}),
    Edge("AttentionPlugin", "scalar_finfo_min", _attention(lambda t: np.array(np.finfo(t).min))),
    Edge("AttentionPlugin", "seq_1", _attention(lambda t: np.zeros(()), 1, 1)),
    # a scalar 0 mask with has_mask 1 (the default): natural units, the same inf/NaN rules
    Edge("AttentionPlugin", "no_mask_huge_scores", _attention(lambda t: np.zeros(()),
                                                              q_scale=1e15)),
    Edge("AttentionPlugin", "no_mask_even_keys", _attention(lambda t: np.zeros(()), l=128)),
    Edge("AttentionPlugin", "seq_1_finfo_min", _attention(_key_padding(None, 1), 1, 1)),
    Edge("AttentionPlugin", "head_dims_24_40", _attention(_key_padding(-10000.0), d=24, dv=40),
         {"scale": 24 ** -0.5}),
    Edge("AttentionPlugin", "head_dim_5", _attention(lambda t: np.zeros(()), d=5, dv=3)),
    Edge("AttentionPlugin", "large_scores", _attention(_key_padding(-np.inf), q_scale=100.0)),
    Edge("AttentionPlugin", "huge_scores", _attention(_key_padding(-np.inf), q_scale=1e15),
         dtypes=("float32",)),
    # has_mask 0 (a model without a mask): the mask input is ignored, -inf rows included, and
    # the kernel folds scale and log2(e) into one FMA on raw scores, over whole key tiles or not
    *(Edge("AttentionPlugin", f"has_mask_0_{n}", _attention(m, l=l, q_scale=qs),
           {"scale": sc, "has_mask": 0})
      for n, m, l, qs, sc in (("ignores_row_mask", _row_mask(-np.inf), 6, 1.0, 0.25),
                              ("ignores_scalar_ninf", lambda t: np.array(-np.inf), 6, 1.0, 0.25),
                              ("even_keys", lambda t: np.zeros(()), 128, 1.0, 0.25),
                              ("keys_70", lambda t: np.zeros(()), 70, 1.0, 0.125),
                              ("large_scores", lambda t: np.zeros(()), 6, 100.0, 0.25),
                              ("huge_scores", lambda t: np.zeros(()), 6, 1e15, 0.25),
                              ("negative_scale", _row_mask(-np.inf, 5, 70), 70, 1.0, -0.25))),
]


# -- MaskedSoftmaxPlugin: scores x, a compact mask -------------------------------------------

def _softmax_full_rows(x_shape: tuple[int, ...], mask_dtype: str = "bool") -> Make:
    """First row fully masked, second fully kept, the rest random (for invert = 0)."""
    def make(t: np.dtype, rng: np.random.Generator) -> list[np.ndarray]:
        m = rng.random(x_shape) < 0.5
        m.reshape(-1, x_shape[-1])[:2] = [[False], [True]]
        return [rng.standard_normal(x_shape).astype(t), m.astype(mask_dtype)]
    return make


def _softmax_inf_scores(t: np.dtype, rng: np.random.Generator) -> list[np.ndarray]:
    """-inf scores (an upstream -inf mask): one entry, a whole row, a row with one +inf."""
    x = rng.standard_normal((2, 3, 7)).astype(t)
    x[0, 0, 3] = -np.inf
    x[0, 1] = -np.inf
    x[1, 2, 4] = np.inf
    return [x, (rng.random((2, 1, 7)) < 0.7)]


MASKED_SOFTMAX = [
    *(Edge("MaskedSoftmaxPlugin", f"full_rows_mode{mode}_{n}", _softmax_full_rows((2, 3, 11)),
           {"mode": mode, "fill": f})
      for mode in (0, 1, 2) for n, f in (("ninf", -np.inf), ("finfo_min", F32_MIN),
                                         ("m10000", -10000.0))),
    Edge("MaskedSoftmaxPlugin", "full_rows_looped", _softmax_full_rows((2, 16385)),
         {"mode": 1, "fill": F32_MIN}),
    Edge("MaskedSoftmaxPlugin", "length_1", _softmax_full_rows((2, 3, 1)), {"mode": 1}),
    Edge("MaskedSoftmaxPlugin", "length_1_finite", _softmax_full_rows((4, 1), "int64"),
         {"mode": 0, "fill": -10000.0}),
    *(Edge("MaskedSoftmaxPlugin", f"inf_scores_mode{mode}", _softmax_inf_scores,
           {"mode": mode, "fill": F32_MIN}) for mode in (0, 1, 2)),
]


# -- L2NormPlugin ----------------------------------------------------------------------------

def _zero_vectors(shape: tuple[int, ...], axis: int) -> Make:
    """Random x with every other vector along ``axis`` all zero."""
    def make(t: np.dtype, rng: np.random.Generator) -> list[np.ndarray]:
        x = np.moveaxis(rng.standard_normal(shape), axis, -1).copy()
        x.reshape(-1, x.shape[-1])[::2] = 0.0
        return [np.moveaxis(x, -1, axis).astype(t)]
    return make


L2NORM = [
    *(Edge("L2NormPlugin", f"zero_{layout}_mode{mode}_eps{eps:g}", _zero_vectors(shape, axis),
           {"axis": axis, "mode": mode, "eps": eps}, dtypes=("float32",))
      for layout, shape, axis in (("rows", (3, 4, 9), -1), ("nchw", (2, 5, 3, 4), 1),
                                  ("looped", (2, 16400), -1))
      for mode, eps in ((0, 0.0), (0, 1e-12), (1, 1e-12), (2, 1e-12), (2, 0.0))),
    *(Edge("L2NormPlugin", f"length_1_{layout}_mode{mode}", _zero_vectors(shape, axis),
           {"axis": axis, "mode": mode, "eps": 1e-12}, dtypes=("float32",))
      for layout, shape, axis in (("rows", (3, 4, 1), -1), ("nchw", (2, 1, 3, 4), 1))
      for mode in (0, 1, 2)),
]


# -- LayerNormPlugin ---------------------------------------------------------------------------

def _constant_rows(shape: tuple[int, ...], n: int, value: float) -> Make:
    """Every other row constant (variance 0), the rest random; gamma, beta random."""
    def make(t: np.dtype, rng: np.random.Generator) -> list[np.ndarray]:
        x = rng.standard_normal(shape)
        x.reshape(-1, n)[::2] = value
        return [x.astype(t), *(rng.standard_normal(shape[-1:]).astype(t) for _ in "gb")]
    return make


def _mean_rounding(n: int, value: float, eps: float) -> float:
    """A bound on the function's output error on a constant row: its float32 mean of n copies
    of ``value`` is off by up to n ulps, multiplied by 1/sqrt(eps) (and gamma, below 4)."""
    return 4 * n * 2.0 ** -23 * abs(value) / eps ** 0.5


LAYERNORM = [
    Edge("LayerNormPlugin", "length_1", _normal((3, 4, 1), (1,), (1,)), {"epsilon": 1e-5}),
    Edge("LayerNormPlugin", "length_1_eps0", _normal((3, 4, 1), (1,), (1,)), {"epsilon": 0.0}),
    # the rows kernel takes the plain float32 mean, as the function does (layernorm.py says
    # why): the same bound; the looped kernel shifts by the row's first value, exactly beta
    *(Edge("LayerNormPlugin", f"constant_rows_{v:g}", _constant_rows((4, 3, 37), 37, v),
           {"epsilon": 1e-5}, onnx_atol=_mean_rounding(37, v, 1e-5),
           kernel_atol=_mean_rounding(37, v, 1e-5))
      for v in (0.0, 1.0, 0.1, -3.7, 1000.3)),
    Edge("LayerNormPlugin", "constant_rows_looped", _constant_rows((2, 16400), 16400, 0.3),
         {"epsilon": 1e-5}, onnx_atol=_mean_rounding(16400, 0.3, 1e-5)),
]


# -- RMSNormPlugin -----------------------------------------------------------------------------

def _zero_rows(shape: tuple[int, ...], n: int, scale: float = 1.0) -> Make:
    """Every other row all zero (its mean of squares is 0), the rest N(0, scale^2); gamma
    random."""
    def make(t: np.dtype, rng: np.random.Generator) -> list[np.ndarray]:
        x = scale * rng.standard_normal(shape)
        x.reshape(-1, n)[::2] = 0.0
        return [x.astype(t), rng.standard_normal(shape[-1:]).astype(t)]
    return make


RMSNORM = [
    Edge("RMSNormPlugin", "length_1", _normal((3, 4, 1), (1,)), {"epsilon": 1e-6}),
    Edge("RMSNormPlugin", "length_1_eps0", _normal((3, 4, 1), (1,)), {"epsilon": 0.0}),
    Edge("RMSNormPlugin", "zero_rows", _zero_rows((4, 3, 37), 37), {"epsilon": 1e-6}),
    # 0 / sqrt(0): NaN rows, in the reference, the function and the kernel (0 * inf) alike
    Edge("RMSNormPlugin", "zero_rows_eps0", _zero_rows((4, 3, 37), 37), {"epsilon": 0.0}),
    Edge("RMSNormPlugin", "zero_rows_looped_eps0", _zero_rows((2, 16400), 16400),
         {"epsilon": 0.0}),
    # |x| up to ~4000: x^2 overflows float16 (65504); the statistic is computed in float32
    Edge("RMSNormPlugin", "squares_beyond_float16", _zero_rows((3, 5, 64), 64, scale=1000.0),
         {"epsilon": 1e-6}, dtypes=("float32", "float16", "bfloat16")),
]


# -- GeluPlugin --------------------------------------------------------------------------------

def _gelu_specials(t: np.dtype, rng: np.random.Generator) -> list[np.ndarray]:
    big = float(ml_dtypes.finfo(t).max)
    x = [0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 9.0, -9.0, 15.0, -15.0, 40.0, -40.0, 1e3, -1e3,
         big, -big, big / 2, -big / 2, np.inf, -np.inf, np.nan]
    return [np.array(x + list(rng.standard_normal(11) * 30)).astype(t)]


GELU = [Edge("GeluPlugin", f"specials_{n}", _gelu_specials, {"approximate": a},
             dtypes=("float32", "float16", "bfloat16")) for n, a in (("erf", 0), ("tanh", 1))]


# -- AddBiasTransposePlugin, Mask2PosPlugin -------------------------------------------------------

ADD_BIAS_TRANSPOSE = [
    Edge("AddBiasTransposePlugin", f"{n}_{'kt' if kt else 'q'}", _normal(x, x[-1:]),
         {"num_heads": h, "perm": (0, 2, 3, 1) if kt else (0, 2, 1, 3)},
         dtypes=("float32", "float16", "bfloat16"))
    for n, x, h in (("b1_s1", (1, 1, 8), 2), ("head_dim_1", (2, 3, 4), 4),
                    ("one_head", (1, 5, 3), 1), ("all_ones", (1, 1, 1), 1))
    for kt in (False, True)]


def _mask2pos(shape: tuple[int, ...], axis: int) -> Make:
    """Vectors along ``axis`` alternately all ones, all zeros and random."""
    def make(t: np.dtype, rng: np.random.Generator) -> list[np.ndarray]:
        m = np.moveaxis(rng.random(shape) < 0.5, axis, -1).copy()
        flat = m.reshape(-1, m.shape[-1])
        flat[0::3], flat[1::3] = True, False
        return [np.moveaxis(m, -1, axis).copy()]
    return make


MASK2POS = [
    Edge("Mask2PosPlugin", f"{n}_invert{inv}_eps{eps:g}_off{off:g}", _mask2pos(shape, axis),
         {"axis": axis, "invert": inv, "eps": eps, "offset": off, "scale": 6.283185307179586},
         dtypes=("float32",))
    for n, shape, axis in (("rows", (2, 6, 5), 1), ("length_1", (2, 1, 5), 1),
                           ("inner_1", (3, 7, 1), 1), ("last_axis", (6, 9), 1),
                           ("all_1", (1, 1, 1), 1))
    for inv, eps, off in ((0, 1e-6, 0.0), (1, 1e-6, 0.5), (1, 0.0, 0.0), (0, 0.0, 0.5))]

EDGES = [*ATTENTION, *MASKED_SOFTMAX, *L2NORM, *LAYERNORM, *RMSNORM, *GELU, *ADD_BIAS_TRANSPOSE,
         *MASK2POS]
CASES = [(e, dt) for e in EDGES for dt in e.dtypes]
IDS = [f"{e.plugin}-{e.name}-{dt}" for e, dt in CASES]


def inputs(e: Edge, dtype: str) -> list[np.ndarray]:
    from onnxpass.plugins.kernels.base import np_dtype

    return e.make(np_dtype(dtype), np.random.default_rng(0))


# -- the kernels, in one interpreted subprocess ------------------------------------------------

def _run_kernels(device: str) -> None:
    """Print one JSON line per case and dtype: the kernel against the reference."""
    from onnxpass.plugins.kernels import get_kernel
    from onnxpass.plugins.kernels.check import check

    for e, dtype in CASES:
        k = get_kernel(e.plugin)
        assert k is not None
        try:
            stats = check(k, inputs(e, dtype), e.attrs, device, e.kernel_atol)
            row = {"within": all(s.within for s in stats),
                   "line": "; ".join(s.line() for s in stats)}
        except Exception as err:
            row = {"within": False, "line": f"{type(err).__name__}: {err}"}
        print(json.dumps({"id": f"{e.plugin}-{e.name}-{dtype}", **row}), flush=True)


@pytest.fixture(scope="module")
def kernel_rows() -> dict[str, dict[str, Any]]:
    pytest.importorskip("triton", reason="the plugin kernels are written in Triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    p = subprocess.run([sys.executable, "-m", "tests.test_kernel_edge_cases"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert rows, f"kernels failed (exit {p.returncode}):\n{p.stderr[-3000:]}"
    return {r["id"]: r for r in rows}


def test_attention_masked_rows_are_what_the_model_computes() -> None:
    """What the cases above hold the kernel and the function to: a row masked by finfo.min
    everywhere is uniform (mean(v), as T5's exports compute); by -inf, or with a +inf score, 0
    (the function's guard Where(IsNaN(p), 0, p) zeroes the NaN softmax)."""
    from onnxpass.plugins.kernels.attention import reference

    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 1, 4, 8)).astype(np.float32) for _ in "qkv")
    mask = np.zeros((1, 1, 4, 4), np.float32)
    mask[..., 0, :], mask[..., 1, :], mask[..., 2, 1] = F32_MIN, -np.inf, np.inf
    y = reference(q, k, v, mask, scale=1.0, softmax_precision=1)[0][0, 0]
    np.testing.assert_allclose(y[0], v[0, 0].mean(axis=0), rtol=1e-6)
    assert not y[1].any() and not y[2].any() and np.isfinite(y[3]).all() and y[3].any()


@pytest.mark.parametrize("edge,dtype", CASES, ids=IDS)
def test_kernel_equals_reference(kernel_rows: dict[str, dict[str, Any]], edge: Edge, dtype: str
                                 ) -> None:
    r = kernel_rows[f"{edge.plugin}-{edge.name}-{dtype}"]
    assert r["within"], r["line"]


@pytest.mark.parametrize("edge,dtype", [c for c in CASES if c[1] != "bfloat16"],
                         ids=[i for i, c in zip(IDS, CASES) if c[1] != "bfloat16"])
def test_onnx_function_equals_reference(edge: Edge, dtype: str) -> None:
    """The reference states what the ONNX function (what the original model computed)
    computes on this edge case, up to the function's own float32 rounding where that is
    amplified (``onnx_atol``: a LayerNorm of a constant row, exact in the reference and the
    looped kernel); ONNX Runtime has no bfloat16 arithmetic."""
    from onnxpass.plugins.kernels import get_kernel
    from onnxpass.verify import error_stats, run
    from tests.test_plugin_reference import TOLERANCES, plugin_model

    k = get_kernel(edge.plugin)
    assert k is not None
    x = inputs(edge, dtype)
    attrs = k.spec.attr_values(edge.attrs)
    got = run(plugin_model(k.spec, x, attrs, 18), dict(zip(k.spec.inputs, x)))
    with np.errstate(all="ignore"):
        want = k.reference(*x, **attrs)
    for name, w in zip(k.spec.outputs, want):
        rtol, atol = TOLERANCES[dtype]
        s = error_stats(name, w.astype(np.float32), got[name].astype(np.float32), rtol,
                        atol + edge.onnx_atol)
        assert s.within, s.line()


if __name__ == "__main__":  # --device cuda: the same cases compiled on a GPU
    _run_kernels(sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu")
