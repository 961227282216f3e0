"""Near-misses for every pass: each attribute and constant a pattern depends on, varied.

Every graph is rewritten by the ``default`` and ``plugins`` pipelines; the output must load in ONNX
Runtime with optimizations off. A near-miss (``refuse``) must leave every output bit for bit as
the original computes it (NaN at the same places, zeros with the same sign) on three seeds, and
the fused op must not appear. A positive control (the exact variant) must be fused and match
within 1e-5, so the suite fails both ways. Ops: "Op" must appear, "-Op" must be gone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxpass

F, D, I64, B = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL
N = helper.make_node
SEEDS = (0, 1, 2)
INT64_MAX = np.iinfo(np.int64).max


def model(nodes: list[onnx.NodeProto], inputs: list[tuple[str, int, list[Any]]],
          outputs: list[tuple[str, int]], inits: dict[str, Any] | None = None,
          opset: int = 17) -> onnx.ModelProto:
    """A model from nodes; inputs as (name, dtype, shape); constants as numpy arrays."""
    g = helper.make_graph(
        nodes, "near_miss", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          ir_version=8 if opset < 21 else 10)
    return onnx.shape_inference.infer_shapes(m, data_prop=True)  # declares the outputs' shapes


def f32(v: Any, shape: tuple[int, ...] = ()) -> np.ndarray:
    return np.full(shape, v, np.float32)


def i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


def reduce(op: str, x: str, out: str, axes: list[int] | None, opset: int,
           **attrs: Any) -> tuple[onnx.NodeProto, dict[str, np.ndarray]]:
    """A reduction with axes as attribute (before the op moved them to an input) or input."""
    moved = 13 if op == "ReduceSum" else 18
    if axes is None:
        return N(op, [x], [out], **attrs), {}
    if opset >= moved:
        return N(op, [x, out + "_axes"], [out], **attrs), {out + "_axes": i64(*axes)}
    return N(op, [x], [out], axes=axes, **attrs), {}


# ---- layernorm --------------------------------------------------------------------------------

def layernorm(pow_: float = 2.0, keepdims: int = 1, axes2: tuple[int, ...] = (-1,),
              eps_shape: tuple[int, ...] = (), std_pow: float | None = None, opset: int = 17,
              mean_noop: bool = False, square: str = "pow", gamma_shape: tuple[int, ...] = (8,),
              cast_attrs: dict[str, Any] | None = None, noop_flag: dict[str, int] | None = None,
              x_shape: tuple[int, ...] = (2, 5, 8)) -> onnx.ModelProto:
    noop_flag = noop_flag or {}
    r1, c1 = (reduce("ReduceMean", "x", "mu", None, opset, noop_with_empty_axes=1) if mean_noop
              else reduce("ReduceMean", "x", "mu", [-1], opset, keepdims=1, **noop_flag))
    r2, c2 = reduce("ReduceMean", "d2", "var", list(axes2) if axes2 else None, opset,
                    keepdims=keepdims)
    nodes = [r1, N("Sub", ["x", "mu"], ["d"])]
    if cast_attrs is not None:
        nodes += [N("Cast", ["d"], ["dc"], to=F, **cast_attrs)]
    d = "dc" if cast_attrs is not None else "d"
    nodes += [N("Pow", [d, "two"], ["d2"]) if square == "pow" else N("Mul", [d, d], ["d2"]),
              r2, N("Add", ["var", "eps"], ["ve"]),
              N("Sqrt", ["ve"], ["std"]) if std_pow is None else N("Pow", ["ve", "half"], ["std"]),
              N("Div", [d, "std"], ["n"]), N("Mul", ["n", "gamma"], ["s"]),
              N("Add", ["s", "beta"], ["y"])]
    rng = np.random.default_rng(7)
    inits = {"two": f32(pow_), "eps": f32(1e-5, eps_shape), "half": f32(std_pow or 0.5),
             "gamma": rng.standard_normal(gamma_shape).astype(np.float32),
             "beta": rng.standard_normal(8).astype(np.float32), **c1, **c2}
    return model(nodes, [("x", F, list(x_shape))], [("y", F)], inits, opset)


# ---- gelu -------------------------------------------------------------------------------------

def gelu_erf(div: float | None = math.sqrt(2.0), mul: float | None = None, half: float = 0.5,
             one: float = 1.0, half_shape: tuple[int, ...] = ()) -> onnx.ModelProto:
    scaled = (N("Div", ["x", "k"], ["a"]) if mul is None else N("Mul", ["x", "k"], ["a"]))
    nodes = [scaled, N("Erf", ["a"], ["e"]), N("Add", ["e", "one"], ["o"]),
             N("Mul", ["x", "half"], ["h"]), N("Mul", ["h", "o"], ["y"])]
    inits = {"k": f32(div if mul is None else mul), "one": f32(one), "half": f32(half, half_shape)}
    return model(nodes, [("x", F, [2, 3, 8])], [("y", F)], inits)


def gelu_tanh(exponent: float = 3.0, coeff: float = 0.044715,
              s2pi: float = math.sqrt(2 / math.pi)) -> onnx.ModelProto:
    nodes = [N("Pow", ["x", "three"], ["c"]), N("Mul", ["c", "coeff"], ["m"]),
             N("Add", ["x", "m"], ["p"]), N("Mul", ["p", "s2pi"], ["t"]), N("Tanh", ["t"], ["th"]),
             N("Add", ["th", "one"], ["o"]), N("Mul", ["x", "half"], ["h"]),
             N("Mul", ["h", "o"], ["y"])]
    inits = {"three": f32(exponent), "coeff": f32(coeff), "s2pi": f32(s2pi), "one": f32(1.0),
             "half": f32(0.5)}
    return model(nodes, [("x", F, [2, 3, 8])], [("y", F)], inits)


def quick_gelu() -> onnx.ModelProto:
    nodes = [N("Mul", ["x", "k"], ["a"]), N("Sigmoid", ["a"], ["s"]), N("Mul", ["x", "s"], ["y"])]
    return model(nodes, [("x", F, [2, 3, 8])], [("y", F)], {"k": f32(1.702)})


# ---- attention --------------------------------------------------------------------------------

def attention(axis: int | None = -1, opset: int = 17, scale_shape: tuple[int, ...] = (),
              guard: float | None = None, fill: float | None = None,
              k_layout: str = "bhld") -> onnx.ModelProto:
    q = [1, 2, 4, 8]
    if k_layout == "bhld":
        k_shape, perm = [1, 2, 4, 8], [0, 1, 3, 2]
    else:  # (B, L, H, d), as TorchScript keeps K before one Transpose
        k_shape, perm = [1, 4, 2, 8], [0, 2, 3, 1]
    nodes = [N("Transpose", ["k"], ["kt"], perm=perm), N("MatMul", ["q", "kt"], ["s"]),
             N("Mul", ["s", "scale"], ["sc"])]
    inputs = [("q", F, q), ("k", F, k_shape), ("v", F, [1, 2, 4, 8])]
    scores = "sc"
    if fill is not None:
        nodes.append(N("Where", ["cond", "sc", "fill"], ["w"]))
        inputs.append(("cond", B, [1, 1, 4, 4]))
        scores = "w"
    nodes.append(N("Softmax", [scores], ["p"]) if axis is None
                 else N("Softmax", [scores], ["p"], axis=axis))
    p = "p"
    if guard is not None:
        nodes += [N("IsNaN", ["p"], ["nan"]), N("Where", ["nan", "g", "p"], ["pg"])]
        p = "pg"
    nodes.append(N("MatMul", [p, "v"], ["y"]))
    inits = {"scale": f32(1 / math.sqrt(8), scale_shape), "g": f32(guard or 0.0),
             "fill": f32(fill or 0.0)}
    return model(nodes, inputs, [("y", F)], inits, opset)


def attention_gqa(axis: int = 2, kv_heads: tuple[int, int] = (2, 2),
                  length: tuple[int, int] = (4, 4)) -> onnx.ModelProto:
    """4 query heads over K and V repeated as HF's repeat_kv does (Unsqueeze at ``axis``,
    Expand, Reshape to 4 heads); K/V have ``kv_heads`` heads and ``length`` keys each (1: the
    Expand broadcasts the keys too)."""
    nodes, inputs, inits = [], [("q", F, [1, 4, 4, 8])], {}
    for x, g, n in zip("kv", kv_heads, length):
        inputs.append((x, F, [1, g, n, 8]))
        wide = [1, g, 4 // g, 4, 8] if axis == 2 else [1, 4 // g, g, 4, 8]
        inits |= {f"{x}_axis": i64(axis), f"{x}_wide": i64(*wide), f"{x}_heads": i64(1, 4, 4, 8)}
        nodes += [N("Unsqueeze", [x, f"{x}_axis"], [f"{x}1"]),
                  N("Expand", [f"{x}1", f"{x}_wide"], [f"{x}w"]),
                  N("Reshape", [f"{x}w", f"{x}_heads"], [f"{x}r"])]
    nodes += [N("Transpose", ["kr"], ["kt"], perm=[0, 1, 3, 2]), N("MatMul", ["q", "kt"], ["s"]),
              N("Mul", ["s", "scale"], ["sc"]), N("Softmax", ["sc"], ["p"], axis=-1),
              N("MatMul", ["p", "vr"], ["y"])]
    return model(nodes, inputs, [("y", F)], {**inits, "scale": f32(1 / math.sqrt(8))})


# ---- masked_softmax ---------------------------------------------------------------------------

def masked_softmax(form: str = "select", axis: int = -1, one: float = 1.0,
                   fill_shape: tuple[int, ...] = (), cast_attrs: dict[str, Any] | None = None,
                   opset: int = 17) -> onnx.ModelProto:
    nodes = [N("Expand", ["mask", "full"], ["me"])]
    if form == "select":
        nodes.append(N("Where", ["me", "x", "fill"], ["z"]))
    else:  # x + (1 - float(m)) * fill
        nodes += [N("Cast", ["me"], ["mf"], to=F, **(cast_attrs or {})),
                  N("Sub", ["one", "mf"], ["om"]), N("Mul", ["om", "fill"], ["a"]),
                  N("Add", ["x", "a"], ["z"])]
    nodes.append(N("Softmax", ["z"], ["y"], axis=axis))
    inits = {"full": i64(2, 2, 4, 4), "fill": f32(-1e4, fill_shape), "one": f32(one)}
    return model(nodes, [("x", F, [2, 2, 4, 4]), ("mask", B, [2, 1, 1, 4])], [("y", F)], inits,
                 opset)


# ---- l2norm -----------------------------------------------------------------------------------

def l2norm(pow_: float = 2.0, keepdims: int = 1, root: float | None = None, noop: bool = False,
           eps_shape: tuple[int, ...] = (), clip_max: bool = False) -> onnx.ModelProto:
    x_shape = [8, 8] if keepdims == 0 else [4, 8]
    r, c = (reduce("ReduceSum", "sq", "ss", None, 17, noop_with_empty_axes=1) if noop
            else reduce("ReduceSum", "sq", "ss", [-1], 17, keepdims=keepdims))
    nodes = [N("Pow", ["x", "two"], ["sq"]), r,
             N("Sqrt", ["ss"], ["n"]) if root is None else N("Pow", ["ss", "root"], ["n"])]
    if clip_max:
        nodes.append(N("Clip", ["n", "eps", "cmax"], ["mx"]))
    else:
        nodes.append(N("Max", ["n", "eps"], ["mx"]))
    nodes.append(N("Div", ["x", "mx"], ["y"]))
    inits = {"two": f32(pow_), "root": f32(root or 0.5), "eps": f32(1e-12, eps_shape),
             "cmax": f32(1e4), **c}
    return model(nodes, [("x", F, x_shape)], [("y", F)], inits)


# ---- mask2pos ---------------------------------------------------------------------------------

def mask2pos(exclusive: int = 0, reverse: int = 0, starts: int = -1, ends: int = INT64_MAX,
             scale_shape: tuple[int, ...] = (), offset_shape: tuple[int, ...] = (),
             eps_shape: tuple[int, ...] = (), to: int = F) -> onnx.ModelProto:
    npt = helper.tensor_dtype_to_np_dtype(to)
    nodes = [N("Not", ["mask"], ["nm"]), N("Cast", ["nm"], ["f"], to=to),
             N("CumSum", ["f", "axis"], ["c"], exclusive=exclusive, reverse=reverse),
             N("Slice", ["c", "starts", "ends", "axes"], ["last"]),
             N("Sub", ["c", "offset"], ["so"]), N("Add", ["last", "eps"], ["ae"]),
             N("Div", ["so", "ae"], ["d"]), N("Mul", ["d", "scale"], ["y"])]
    inits = {"axis": np.array(1, np.int64), "starts": i64(starts), "ends": i64(ends),
             "axes": i64(1), "offset": np.full(offset_shape, 0.5, npt),
             "eps": np.full(eps_shape, 1e-6, npt),
             "scale": np.full(scale_shape, 2 * math.pi, npt)}
    return model(nodes, [("mask", B, [2, 4, 6])], [("y", to)], inits)


# ---- add_bias_transpose, matmul2d ------------------------------------------------------------

def bias_transpose(perm: tuple[int, ...] = (0, 2, 1, 3), target: tuple[int, ...] = (2, 4, 2, 8),
                   bias_shape: tuple[int, ...] = (16,)) -> onnx.ModelProto:
    nodes = [N("Add", ["x", "bias"], ["a"]), N("Reshape", ["a", "shape"], ["r"]),
             N("Transpose", ["r"], ["y"], perm=list(perm))]
    bias = np.random.default_rng(3).standard_normal(bias_shape).astype(np.float32)
    return model(nodes, [("x", F, [2, 4, 16])], [("y", F)], {"bias": bias, "shape": i64(*target)})


def matmul(x_shape: tuple[int, ...] = (2, 3, 8), w_shape: tuple[int, ...] = (8, 4),
           b_shape: tuple[int, ...] = (4,)) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    nodes = [N("MatMul", ["x", "w"], ["mm"]), N("Add", ["mm", "b"], ["y"])]
    inits = {"w": rng.standard_normal(w_shape).astype(np.float32),
             "b": rng.standard_normal(b_shape).astype(np.float32)}
    return model(nodes, [("x", F, list(x_shape))], [("y", F)], inits)


# ---- tile, fold, const_slice, shape_of, noop, cse --------------------------------------------

def tile(x_shape: list[Any], reps: tuple[int, ...], y_shape: list[Any]) -> onnx.ModelProto:
    nodes = [N("Tile", ["x", "reps"], ["t"]), N("Add", ["t", "y"], ["z"])]
    return model(nodes, [("x", F, x_shape), ("y", F, y_shape)], [("z", F)], {"reps": i64(*reps)})


def expand(x_shape: list[int], to: tuple[int, ...]) -> onnx.ModelProto:
    nodes = [N("Expand", ["x", "to"], ["e"]), N("Relu", ["e"], ["y"])]
    return model(nodes, [("x", F, x_shape)], [("y", F)], {"to": i64(*to)})


def expand_by_shape(y_shape: list[Any], start: int) -> onnx.ModelProto:
    """x expanded to (dim 0 of Shape(y, start), 1, 8) and added to y."""
    nodes = [N("Shape", ["y"], ["s"], start=start), N("Gather", ["s", "i0"], ["g"]),
             N("Unsqueeze", ["g", "ax0"], ["u"]),
             N("Concat", ["u", "one", "eight"], ["cat"], axis=0),
             N("Expand", ["x", "cat"], ["e"]), N("Add", ["e", "y"], ["z"])]
    inits = {"i0": np.array(0, np.int64), "ax0": i64(0), "one": i64(1), "eight": i64(8)}
    return model(nodes, [("x", F, [1, 1, 8]), ("y", F, y_shape)], [("z", F)], inits)


def shape_scaled(shape_attrs: dict[str, int], index: int | None = None,
                 slice_: tuple[int, int] | None = None,
                 x_shape: list[Any] = [2, 3, 5]) -> onnx.ModelProto:  # noqa: B006
    """x * float(a dim picked out of Shape(x, start, end))."""
    nodes = [N("Shape", ["x"], ["s"], **shape_attrs)]
    if index is not None:
        nodes.append(N("Gather", ["s", "i"], ["d"]))
    else:
        nodes += [N("Slice", ["s", "st", "en"], ["sl"]), N("ReduceProd", ["sl"], ["d"], keepdims=0)]
    nodes += [N("Cast", ["d"], ["df"], to=F), N("Mul", ["x", "df"], ["y"])]
    inits = {"i": np.array(index or 0, np.int64), "st": i64((slice_ or (0, 1))[0]),
             "en": i64((slice_ or (0, 1))[1])}
    return model(nodes, [("x", F, x_shape)], [("y", F)], inits)


def cast_elision() -> onnx.ModelProto:
    """int(float(N) * 0.5): GraphSurgeon's cast elision makes it N * int(0.5) = 0."""
    nodes = [N("Shape", ["x"], ["s"]), N("Gather", ["s", "i"], ["n"]),
             N("Cast", ["n"], ["nf"], to=F), N("Mul", ["nf", "half"], ["h"]),
             N("Cast", ["h"], ["y"], to=I64)]
    return model(nodes, [("x", F, ["N", 6])], [("y", I64)],
                 {"i": np.array(0, np.int64), "half": f32(0.5)})


def const_data(op: str) -> onnx.ModelProto:
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    if op == "gather":
        nodes, x = [N("Gather", ["data", "idx"], ["c"], axis=1)], [2, 1]
    else:
        nodes, x = [N("Split", ["data", "split"], ["c0", "c"], axis=1)], [2, 3]
    nodes.append(N("Add", ["x", "c"], ["y"]))
    return model(nodes, [("x", F, x)], [("y", F)],
                 {"data": data, "idx": i64(2), "split": i64(1, 3)})


def transpose_pair(inner: list[int], outer: list[int]) -> onnx.ModelProto:
    nodes = [N("Transpose", ["x"], ["t"], perm=inner), N("Transpose", ["t"], ["u"], perm=outer),
             N("Relu", ["u"], ["y"])]
    return model(nodes, [("x", F, [2, 3, 4])], [("y", F)])


def reshape_pair() -> onnx.ModelProto:
    nodes = [N("Reshape", ["x", "a"], ["r"]), N("Reshape", ["r", "b"], ["y"])]
    return model(nodes, [("x", F, [2, 3, 4])], [("y", F)], {"a": i64(6, 4), "b": i64(2, 12)})


def shape_of(shape_attrs: dict[str, int], m_shape: list[int]) -> onnx.ModelProto:
    nodes = [N("MatMul", ["q", "kt"], ["s"]), N("Shape", ["s"], ["sh"], **shape_attrs),
             N("Expand", ["m", "sh"], ["e"]), N("Add", ["s", "e"], ["y"])]
    return model(nodes, [("q", F, ["B", 2, 5, 4]), ("kt", F, ["B", 2, 4, 7]), ("m", F, m_shape)],
                 [("y", F)])


def noop(op: str, value: float, const_shape: tuple[int, ...] = (),
         x_shape: list[int] = [3, 4]) -> onnx.ModelProto:  # noqa: B006
    nodes = [N(op, ["x", "c"], ["a"]), N("Relu", ["a"], ["r"]), N("Neg", ["a"], ["y"])]
    return model(nodes, [("x", F, x_shape)], [("y", F), ("r", F)], {"c": f32(value, const_shape)})


def unary(op: str, shape: list[int] = [3, 4], opset: int = 17,  # noqa: B006
          **attrs: Any) -> onnx.ModelProto:
    extra = ["target"] if op == "Reshape" else []
    nodes = [N(op, ["x", *extra], ["a"], **attrs), N("Neg", ["a"], ["y"])]
    return model(nodes, [("x", F, shape)], [("y", F)], {"target": i64(*shape)} if extra else {},
                 opset)


def cse(perm2: list[int]) -> onnx.ModelProto:
    nodes = [N("Transpose", ["x"], ["a"], perm=[1, 0]), N("Transpose", ["x"], ["b"], perm=perm2),
             N("Sub", ["a", "b"], ["y"])]
    return model(nodes, [("x", F, [4, 4])], [("y", F)])


# ---- the cases --------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    build: Callable[[], onnx.ModelProto]
    default: str | None        # what the default pipeline must show ("Op" present, "-Op" gone)
    plugins: str | None
    refuse: bool               # True: bit for bit, and neither op shown
    dims: dict[str, int] = field(default_factory=dict)  # symbolic input dims at run time
    scale: float = 3.0         # inputs are scale * standard normal
    negative_zeros: bool = False  # put -0.0 into float inputs


LN, LNP = "LayerNormalization", "LayerNormPlugin"
GELU, GELUP = "Gelu", "GeluPlugin"
ATT, ATTP = "Attention", "AttentionPlugin"
MSM = "MaskedSoftmaxPlugin"

CASES = [
    # layernorm
    Case("ln_exact", lambda: layernorm(), LN, LNP, False),
    Case("ln_mul_square", lambda: layernorm(square="mul"), LN, LNP, False),
    Case("ln_axes_input_opset18", lambda: layernorm(opset=18), LN, LNP, False),
    Case("ln_cast_inside", lambda: layernorm(cast_attrs={}), LN, LNP, False),
    Case("ln_pow_2.0001", lambda: layernorm(pow_=2.0001), LN, LNP, True),
    Case("ln_pow_1.9999999", lambda: layernorm(pow_=1.9999999), LN, LNP, True),
    Case("ln_keepdims0", lambda: layernorm(keepdims=0, x_shape=(8, 8, 8)), LN, LNP, True),
    Case("ln_noop_with_empty_axes", lambda: layernorm(opset=18, mean_noop=True), LN, LNP, True),
    Case("ln_noop_with_empty_axes_both", lambda: layernorm(opset=18, mean_noop=True, axes2=()),
         LN, LNP, True),
    Case("ln_noop_flag_with_axes", lambda: layernorm(opset=18, noop_flag={
        "noop_with_empty_axes": 1}), LN, LNP, False),
    Case("ln_eps_1111", lambda: layernorm(eps_shape=(1, 1, 1, 1)), LN, LNP, True),
    Case("ln_sqrt_as_pow_0.50001", lambda: layernorm(std_pow=0.50001), LN, LNP, True),
    Case("ln_sqrt_as_pow_0.5", lambda: layernorm(std_pow=0.5), LN, LNP, False),
    Case("ln_axes_differ", lambda: layernorm(axes2=(-2,), x_shape=(2, 8, 8)), LN, LNP, True),
    # gamma varies along the batch: only the normalization is fused, gamma and beta stay
    Case("ln_gamma_varies_along_batch", lambda: layernorm(gamma_shape=(2, 1, 8)), LN, LNP, False),
    # gelu
    Case("gelu_erf_div_sqrt2", lambda: gelu_erf(), GELU, GELUP, False),
    Case("gelu_erf_mul_0.70710677", lambda: gelu_erf(mul=0.70710677), GELU, GELUP, False),
    Case("gelu_erf_mul_0.7071067690849304", lambda: gelu_erf(mul=0.7071067690849304), GELU,
         GELUP, False),
    Case("gelu_erf_mul_0.7071", lambda: gelu_erf(mul=0.7071), GELU, GELUP, True),
    Case("gelu_half_0.50004", lambda: gelu_erf(half=0.50004), GELU, GELUP, True),
    Case("gelu_one_1.0001", lambda: gelu_erf(one=1.0001), GELU, GELUP, True),
    Case("gelu_div_1.4143", lambda: gelu_erf(div=1.4143), GELU, GELUP, True),
    Case("gelu_half_1111", lambda: gelu_erf(half_shape=(1, 1, 1, 1)), GELU, GELUP, True),
    Case("gelu_tanh_pow3", lambda: gelu_tanh(), GELU, GELUP, False),
    Case("gelu_tanh_0.7978845608", lambda: gelu_tanh(s2pi=0.7978845608), GELU, GELUP, False),
    Case("gelu_tanh_pow_3.0002", lambda: gelu_tanh(exponent=3.0002), GELU, GELUP, True),
    Case("gelu_tanh_coeff_0.0447", lambda: gelu_tanh(coeff=0.0447), GELU, GELUP, True),
    Case("gelu_tanh_sqrt_2_pi_0.798", lambda: gelu_tanh(s2pi=0.798), GELU, GELUP, True),
    Case("gelu_quick_1.702", quick_gelu, GELU, GELUP, True),
    # attention
    Case("att_exact", lambda: attention(), ATT, ATTP, False),
    Case("att_k_bshd_perm", lambda: attention(k_layout="bshd"), ATT, ATTP, False),
    Case("att_softmax_axis2", lambda: attention(axis=2), ATT, ATTP, True),
    Case("att_softmax_opset11_default_axis", lambda: attention(axis=None, opset=11), ATT, ATTP,
         True),
    Case("att_scale_11111", lambda: attention(scale_shape=(1, 1, 1, 1, 1)), ATT, ATTP, True),
    Case("att_guard_not_zero", lambda: attention(guard=1e-30), ATT, ATTP, True),
    Case("att_where_finite_fill", lambda: attention(fill=-1e4), ATT, ATTP, True),
    # grouped-query attention: the repeat goes where it repeats each KV head in a row; where it
    # does anything else it stays (the attention over its result is fused)
    Case("att_gqa_repeat_kv", attention_gqa, "-Expand", "-Expand", False),
    Case("att_gqa_head_major", lambda: attention_gqa(axis=1), "Expand", "Expand", False),
    Case("att_gqa_k_v_repeats_differ", lambda: attention_gqa(kv_heads=(2, 1)), "Expand",
         "Expand", False),
    Case("att_gqa_expand_widens_keys", lambda: attention_gqa(length=(1, 1)), "Expand", "Expand",
         False),
    # masked_softmax
    Case("msm_select", lambda: masked_softmax(), "-Expand", MSM, False),
    Case("msm_scaled", lambda: masked_softmax("scaled"), "-Expand", MSM, False),
    Case("msm_softmax_axis2", lambda: masked_softmax(axis=2), "-Expand", MSM, True),
    Case("msm_one_1.0001", lambda: masked_softmax("scaled", one=1.0001), "-Expand", MSM, True),
    Case("msm_fill_11111", lambda: masked_softmax(fill_shape=(1, 1, 1, 1, 1)), "-Expand", MSM,
         True),
    # l2norm (plugins only)
    Case("l2_exact", lambda: l2norm(), None, "L2NormPlugin", False),
    Case("l2_pow_2.0001", lambda: l2norm(pow_=2.0001), None, "L2NormPlugin", True),
    Case("l2_keepdims0", lambda: l2norm(keepdims=0), None, "L2NormPlugin", True),
    Case("l2_root_0.5001", lambda: l2norm(root=0.5001), None, "L2NormPlugin", True),
    Case("l2_noop_with_empty_axes", lambda: l2norm(noop=True), None, "L2NormPlugin", True),
    Case("l2_eps_111", lambda: l2norm(eps_shape=(1, 1, 1)), None, "L2NormPlugin", True),
    Case("l2_clip_with_max", lambda: l2norm(clip_max=True), None, "L2NormPlugin", True),
    # mask2pos (plugins only)
    Case("m2p_exact", lambda: mask2pos(), None, "Mask2PosPlugin", False),
    Case("m2p_exclusive", lambda: mask2pos(exclusive=1), None, "Mask2PosPlugin", True),
    Case("m2p_reverse", lambda: mask2pos(reverse=1), None, "Mask2PosPlugin", True),
    Case("m2p_slice_not_last", lambda: mask2pos(starts=-2, ends=-1), None, "Mask2PosPlugin", True),
    # the widening Mul by scale stays outside the plugin (it is optional in the pattern)
    Case("m2p_scale_1111", lambda: mask2pos(scale_shape=(1, 1, 1, 1)), None, "Mask2PosPlugin",
         False),
    Case("m2p_offset_1111", lambda: mask2pos(offset_shape=(1, 1, 1, 1)), None, "Mask2PosPlugin",
         True),
    Case("m2p_eps_1111", lambda: mask2pos(eps_shape=(1, 1, 1, 1)), None, "Mask2PosPlugin", True),
    Case("m2p_cast_to_double", lambda: mask2pos(to=D), None, "Mask2PosPlugin", True),
    # add_bias_transpose (plugins; the std form needs a MatMul)
    Case("abt_0213", lambda: bias_transpose(), None, "AddBiasTransposePlugin", False),
    Case("abt_0231", lambda: bias_transpose(perm=(0, 2, 3, 1)), None, "AddBiasTransposePlugin",
         False),
    Case("abt_perm_0312", lambda: bias_transpose(perm=(0, 3, 1, 2)), None,
         "AddBiasTransposePlugin", True),
    Case("abt_reshape_swaps_b_s", lambda: bias_transpose(target=(4, 2, 2, 8)), None,
         "AddBiasTransposePlugin", True),
    Case("abt_bias_per_position", lambda: bias_transpose(bias_shape=(4, 16)), None,
         "AddBiasTransposePlugin", True),
    Case("abt_bias_1111", lambda: bias_transpose(bias_shape=(1, 1, 1, 16)), None,
         "AddBiasTransposePlugin", True),
    # matmul2d
    Case("mm_exact", lambda: matmul(), "Gemm", "Gemm", False),
    Case("mm_batched_weight", lambda: matmul(w_shape=(2, 8, 4)), "Gemm", "Gemm", True),
    Case("mm_rank2", lambda: matmul(x_shape=(3, 8)), "Gemm", "Gemm", True),
    # the widening bias stays an Add after the Gemm
    Case("mm_bias_1111", lambda: matmul(b_shape=(1, 1, 1, 4)), "Gemm", "Gemm", False),
    # tile
    Case("tile_broadcast", lambda: tile([1, 4, 8], (2, 1, 1), [2, 4, 8]), "-Tile", "-Tile", False),
    Case("tile_real_tiling", lambda: tile([2, 4, 8], (2, 1, 1), [4, 4, 8]), "-Tile", "-Tile",
         True),
    Case("expand_noop", lambda: expand([2, 4], (1, 4)), "-Expand", "-Expand", False),
    Case("expand_widens", lambda: expand([2, 1], (2, 4)), "-Expand", "-Expand", True),
    Case("expand_shape_start1_static", lambda: expand_by_shape([1, 3, 8], 1), "-Expand",
         "-Expand", True),
    Case("expand_shape_start1_dynamic", lambda: expand_by_shape([1, "M", 8], 1), "-Expand",
         "-Expand", True, dims={"M": 3}),
    Case("expand_shape_start0_dynamic", lambda: expand_by_shape(["M", 3, 8], 0), "-Expand",
         "-Expand", False, dims={"M": 2}),
    # fold (GraphSurgeon's shape folding)
    Case("fold_gather_shape_start1", lambda: shape_scaled({"start": 1}, index=1), "-Shape",
         "-Shape", False),
    Case("fold_gather_shape_end-1", lambda: shape_scaled({"end": -1}, index=-1), "-Shape",
         "-Shape", False),
    Case("fold_gather_shape_start-2", lambda: shape_scaled({"start": -2}, index=0), "-Shape",
         "-Shape", False),
    Case("fold_slice_shape_start1", lambda: shape_scaled({"start": 1}, slice_=(1, 2)), "-Shape",
         "-Shape", False),
    Case("fold_gather_dynamic_start1", lambda: shape_scaled({"start": 1}, index=0,
                                                            x_shape=["N", 3, 5]),
         "-Shape", "-Shape", False, dims={"N": 2}),
    Case("fold_cast_elision", cast_elision, None, None, True, dims={"N": 5}),
    # const_slice
    Case("cs_fold_gather_axis1", lambda: const_data("gather"), "-Gather", "-Gather", False),
    Case("cs_fold_split", lambda: const_data("split"), "-Split", "-Split", False),
    Case("cs_transpose_inverse", lambda: transpose_pair([1, 0, 2], [1, 0, 2]), "-Transpose",
         "-Transpose", False),
    Case("cs_transpose_not_inverse", lambda: transpose_pair([1, 0, 2], [0, 2, 1]), None, None,
         True),
    Case("cs_reshape_pair", reshape_pair, None, None, True),
    # shape_of
    Case("so_exact", lambda: shape_of({}, [1, 1, 7]), None, None, True, dims={"B": 2}),
    Case("so_shape_start1", lambda: shape_of({"start": 1}, [1, 1, 7]), None, None, True,
         dims={"B": 2}),
    Case("so_shape_start-1", lambda: shape_of({"start": -1}, [7]), None, None, True,
         dims={"B": 2}),
    # noop
    Case("noop_mul_1.00009", lambda: noop("Mul", 1.00009), "-Mul", "-Mul", True, scale=2000.0),
    Case("noop_mul_1", lambda: noop("Mul", 1.0), "-Mul", "-Mul", False),
    Case("noop_mul_1_widens", lambda: noop("Mul", 1.0, (1, 1, 1)), "-Mul", "-Mul", True),
    Case("noop_div_1.0000001", lambda: noop("Div", 1.0000001), "-Div", "-Div", True, scale=1e6),
    # x + 0.0 is x up to the sign of a zero (accepted, see NoOp); x + 1e-45 is not x
    Case("noop_add_zero", lambda: noop("Add", 0.0), "-Add", "-Add", False, negative_zeros=True),
    Case("noop_sub_zero", lambda: noop("Sub", 0.0), "-Sub", "-Sub", False),
    Case("noop_add_denormal", lambda: noop("Add", 1e-45), "-Add", "-Add", True, scale=1e-38),
    Case("noop_cast_same_type", lambda: unary("Cast", to=F), "-Cast", "-Cast", False),
    Case("noop_reshape_allowzero", lambda: unary("Reshape", allowzero=1), "-Reshape", "-Reshape",
         False),
    Case("noop_transpose_square", lambda: unary("Transpose", [4, 4], perm=[1, 0]), "-Transpose",
         "-Transpose", True),
    # cse
    Case("cse_same_perm", lambda: cse([1, 0]), None, None, False),
    Case("cse_other_perm", lambda: cse([0, 1]), None, None, True),
]


def _inputs(m: onnx.ModelProto, case: Case, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in m.graph.input:
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else case.dims[d.dim_param]
                 for d in t.shape.dim]
        if t.elem_type == B:
            feeds[vi.name] = rng.random(shape) < 0.6
        else:
            x = (rng.standard_normal(shape) * case.scale).astype(
                helper.tensor_dtype_to_np_dtype(t.elem_type))
            if case.negative_zeros:
                x.reshape(-1)[::3] = -0.0
            feeds[vi.name] = x
    return feeds


def _session(m: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    return bool(np.array_equal(a, b, equal_nan=True)
                and np.array_equal(np.signbit(a[~np.isnan(a)]), np.signbit(b[~np.isnan(b)])))


def _shows(op: str, ops: set[str]) -> bool:
    return op[1:] not in ops if op.startswith("-") else op in ops


@pytest.mark.parametrize("pipeline", ["default", "plugins"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_near_miss(case: Case, pipeline: str) -> None:
    original = case.build()
    onnx.checker.check_model(original)
    rewritten, _ = onnxpass.rewrite(onnx.ModelProto.FromString(original.SerializeToString()),
                                    pipeline)
    ops = {n.op_type for n in rewritten.graph.node}
    expect = case.default if pipeline == "default" else case.plugins
    want, got = _session(original), _session(rewritten)  # the rewritten model must load
    fused = expect is not None and not case.refuse
    if expect is not None:
        assert _shows(expect, ops) == fused, (
            f"{pipeline}: expected {expect!r} to be {'shown' if fused else 'absent'}; ops {ops}")
    for seed in SEEDS:
        feeds = _inputs(original, case, seed)
        names = [o.name for o in original.graph.output]
        for name, a, b in zip(names, want.run(names, feeds), got.run(names, feeds)):
            if fused:
                assert a.shape == b.shape, f"{name}: shape {a.shape} -> {b.shape}"
                np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=name)
            else:
                assert _same_bits(a, b), (
                    f"{pipeline}, seed {seed}: {name} differs: shape {a.shape} -> {b.shape}, max "
                    f"abs {np.nanmax(np.abs(a - b)) if a.shape == b.shape else 'n/a'}")


def test_suite_is_big_enough() -> None:
    passes = {c.name.split("_")[0] for c in CASES}
    assert len(CASES) >= 60 and len(passes) >= 12, (len(CASES), passes)
