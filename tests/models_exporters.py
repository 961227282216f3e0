"""Transformer blocks as two exporters other than torch write them (issue 11, item 7), built node
by node with ``onnx.helper`` and seeded NumPy weights.

- :func:`paddle_encoder`: a Paddle2ONNX export (opset 12) of a two-layer post-norm
  ``paddle.nn.TransformerEncoder`` with a final LayerNorm: 5 LayerNorms, 2 attentions, 2 GELUs.
- :func:`tf2onnx_block`: a tf2onnx export (opset 15) of a pre-norm block whose LayerNorms are
  written as jax2tf writes Flax's, and whose attention as tf2onnx writes Keras'
  MultiHeadAttention: 2 LayerNorms, 1 attention, 1 GELU.

Each returns an :class:`Export`: the model, the construction counts (what the exporter's source
model holds, never read off the graph) and realistic feeds (batch and sequence sizes the
symbolic dims do not name, and a second feed with other sizes).

What the Paddle2ONNX builder relies on (its mappers, paddle2onnx/mapper/): weights are Constant
nodes, not initializers (DESIGN.md section 3); every constant a mapper makes is a Constant node
of shape [1] (``helper->Constant({1}, ...)``); ``shape`` is Shape then Cast to int32 (Paddle's
shape op returns int32); ``slice`` at opset >= 10 is Slice with starts, ends, axes and steps as
Constant inputs; ``reshape2`` with a list of shape tensors casts each to int64 and Concats them
on axis -1 (here every Reshape's shape is computed so, as the issue's export does: Shape -> Cast
-> Slice -> Cast -> Concat); ``layer_norm`` (opset < 17) is ReduceMean(axes attribute) - Sub -
Pow(2) - ReduceMean - Add(eps) - Sqrt - Div, with gamma and beta each Reshaped to
``Slice(Shape(x))`` of the normalized dims; ``matmul_v2`` with ``transpose_y`` Transposes its
second operand (perm swaps the last two axes) before MatMul; ``scale`` is Mul(scale) then
Add(bias) even for bias 0; ``gelu`` is Div(sqrt 2) - Erf - Add(1) - Mul(x) - Mul(0.5);
``softmax`` before opset 13 is Softmax on the last axis given as a non-negative number; dropout
in inference (upscale_in_train) is Identity; ``save_inference_model`` appends scale(1.0) to the
output, an Identity. paddle.nn.MultiHeadAttention scales q by head_dim ** -0.5 before
``matmul(q, k, transpose_y=True)``. A real export made here (Paddle 3.3.1, Paddle2ONNX 2.1.0, in a
separate environment: it needs onnx 1.17) agrees on the LayerNorm, GELU, scale, transpose_y and
Softmax forms and the ``DynamicDimension.<n>`` input dims; that version writes weights as
initializers, ReduceMean axes as [-1], and paddle.shape as int64 (Shape -> Slice -> Squeeze ->
Unsqueeze -> Concat on axis 0), where the older exports the issue measured cast through int32.

What the tf2onnx builder relies on: tf2onnx writes constants as initializers, names dynamic dims
``unk__<n>`` and defaults to opset 15 (ReduceSum's axes an input since 13, ReduceMean's still an
attribute); rsqrt becomes Reciprocal(Sqrt); BroadcastTo becomes Expand; ``tf.shape(x)[:k]`` is
Shape -> Slice. Flax's LayerNorm computes mean and E[x^2] and var = max(0, E[x^2] - mean^2),
then (x - mean) * (rsqrt(var + eps) * scale) + bias; with polymorphic shapes jax2tf writes
jnp.mean as ReduceSum * (1/N) and broadcasts the scalar eps to the variance's run-time shape
(both as the issue's export measured). The second LayerNorm uses the squared-difference variance
(tf.nn.moments). Keras' MultiHeadAttention (EinsumDense projections, einsums turned into
MatMul/Transpose/Reshape by tf2onnx, which reshape with run-time shapes) multiplies the query by
1/sqrt(key_dim) before the score MatMul, transposes the key with one Transpose(0, 2, 3, 1), and
takes Softmax over axis -1. Keras' exact GELU is 0.5 * x * (1 + erf(x / sqrt 2)). A real Keras 3
export by tf2onnx 1.17 differs (tests/test_exporters.py runs one where tensorflow is installed):
its LayerNorm mean is GlobalAveragePool and its attention einsums become 5-D
Unsqueeze/Transpose/Gemm chains; exact GELU's Erfc does not convert at all.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

KINDS = {
    "layernorm": ("LayerNormalization", "LayerNormPlugin"),
    "attention": ("Attention", "AttentionPlugin"),
    "gelu": ("Gelu", "GeluPlugin"),
}


@dataclass
class Export:
    model: onnx.ModelProto
    counts: dict[str, int]
    feeds: list[dict[str, np.ndarray]]


class _Net:
    """Nodes, constants and fresh names for one exported graph."""

    def __init__(self, seed: int, *, const_nodes: bool, prefix: str) -> None:
        self.rng = np.random.default_rng(seed)
        self.const_nodes = const_nodes  # Paddle2ONNX: Constant nodes; tf2onnx: initializers
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._k = itertools.count()

    def name(self, op: str) -> str:
        return f"{self.prefix}{op}.{next(self._k)}"

    def op(self, op_type: str, *inputs: str, **attrs: int | list[int]) -> str:
        out = self.name(op_type)
        node = helper.make_node(op_type, list(inputs), [out], name=out)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        self.nodes.append(node)
        return out

    def const(self, value: npt.ArrayLike, dtype: type = np.float32, name: str = "") -> str:
        array = np.asarray(value, dtype=dtype)
        out = name or self.name("constant")
        if self.const_nodes:
            self.nodes.append(helper.make_node("Constant", [], [out], name=out,
                                               value=numpy_helper.from_array(array, out)))
        else:
            self.inits.append(numpy_helper.from_array(array, out))
        return out

    def weight(self, shape: tuple[int, ...], name: str) -> str:
        fan_in = shape[0] if len(shape) > 1 else 1
        w = self.rng.standard_normal(shape) / math.sqrt(fan_in)
        return self.const(w, name=name)

    def param(self, size: int, name: str, center: float) -> str:
        """gamma near 1 and beta near 0, but not exactly: a pass that drops or misplaces them
        changes the output."""
        return self.const(center + 0.2 * self.rng.standard_normal(size), name=name)

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              opset: int, ir_version: int, producer: tuple[str, str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "model", inputs, outputs, initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name=producer[0], producer_version=producer[1])
        m.ir_version = ir_version
        onnx.checker.check_model(m)
        return m


def _feeds(name: str, hidden: int, sizes: list[tuple[int, int]], seed: int
           ) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal((b, s, hidden)).astype(np.float32)} for b, s in sizes]


# ---- Paddle2ONNX --------------------------------------------------------------------------------

class _Paddle(_Net):
    def linear(self, x: str, d_in: int, d_out: int, layer: str) -> str:
        y = self.op("MatMul", x, self.weight((d_in, d_out), f"{layer}.w_0"))
        return self.op("Add", y, self.const(0.1 * self.rng.standard_normal(d_out),
                                            name=f"{layer}.b_0"))

    def shape_i32(self, x: str) -> str:
        """paddle.shape(x): int32."""
        return self.op("Cast", self.op("Shape", x), to=TensorProto.INT32)

    def slice(self, data: str, start: int, end: int) -> str:
        return self.op("Slice", data, self.const([start], np.int64), self.const([end], np.int64),
                       self.const([0], np.int64), self.const([1], np.int64))

    def reshape(self, x: str, pieces: list[str | int]) -> str:
        """reshape2 with a ShapeTensor list: each piece (an int32 [1] tensor, or a Python int
        that Paddle turned into a fill_constant) cast to int64, then Concat on axis -1."""
        dims = []
        for p in pieces:
            src = self.const([p], np.int32) if isinstance(p, int) else p
            dims.append(self.op("Cast", src, to=TensorProto.INT64))
        return self.op("Reshape", x, self.op("Concat", *dims, axis=-1))

    def layer_norm(self, x: str, hidden: int, layer: str, eps: float = 1e-5) -> str:
        mean = self.op("ReduceMean", x, axes=[2])
        centered = self.op("Sub", x, mean)
        var = self.op("ReduceMean", self.op("Pow", centered, self.const([2.0])), axes=[2])
        std = self.op("Sqrt", self.op("Add", var, self.const([eps])))
        dims = self.slice(self.op("Shape", x), 2, 3)
        gamma = self.op("Reshape", self.param(hidden, f"{layer}.w_0", 1.0), dims)
        beta = self.op("Reshape", self.param(hidden, f"{layer}.b_0", 0.0), dims)
        return self.op("Add", self.op("Mul", self.op("Div", centered, std), gamma), beta)

    def attention(self, x: str, hidden: int, heads: int, layer: str) -> str:
        head_dim = hidden // heads
        shape = self.shape_i32(x)
        batch, seq = self.slice(shape, 0, 1), self.slice(shape, 1, 2)
        qkv = []
        for k, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            y = self.linear(x, hidden, hidden, f"{layer}.{proj}")
            y = self.reshape(y, [batch, seq, heads, head_dim])
            qkv.append(self.op("Transpose", y, perm=[0, 2, 1, 3]))
            if k == 0:  # q * head_dim ** -0.5: Paddle's scale op
                scaled = self.op("Mul", qkv[0], self.const([head_dim ** -0.5]))
                qkv[0] = self.op("Add", scaled, self.const([0.0]))
        q, k_, v = qkv
        scores = self.op("MatMul", q, self.op("Transpose", k_, perm=[0, 1, 3, 2]))
        probs = self.op("Identity", self.op("Softmax", scores, axis=3))  # dropout: Identity
        out = self.op("Transpose", self.op("MatMul", probs, v), perm=[0, 2, 1, 3])
        out = self.reshape(out, [batch, seq, hidden])
        return self.linear(out, hidden, hidden, f"{layer}.out_proj")

    def gelu(self, x: str) -> str:
        erf = self.op("Erf", self.op("Div", x, self.const([1.4142135623730951])))
        return self.op("Mul", self.op("Mul", x, self.op("Add", erf, self.const([1.0]))),
                       self.const([0.5]))


def paddle_encoder(seed: int = 0, hidden: int = 32, heads: int = 4, ffn: int = 64,
                   layers: int = 2) -> Export:
    """paddle.nn.TransformerEncoder(TransformerEncoderLayer(hidden, heads, ffn,
    activation="gelu", normalize_before=False), layers, norm=LayerNorm(hidden)) exported by
    Paddle2ONNX at opset 12; input ``x`` of shape (batch, seq, hidden), both dims dynamic."""
    net = _Paddle(seed, const_nodes=True, prefix="p2o.")
    x = "x"
    for i in range(layers):
        x = net.layer_norm(net.op("Add", x, net.op("Identity", net.attention(
            x, hidden, heads, f"encoder.layers.{i}.self_attn"))),
            hidden, f"encoder.layers.{i}.norm1")
        h = net.gelu(net.linear(x, hidden, ffn, f"encoder.layers.{i}.linear1"))
        h = net.linear(net.op("Identity", h), ffn, hidden, f"encoder.layers.{i}.linear2")
        x = net.layer_norm(net.op("Add", x, net.op("Identity", h)), hidden,
                           f"encoder.layers.{i}.norm2")
    x = net.layer_norm(x, hidden, "encoder.norm")
    out = "save_infer_model/scale_0.tmp_0"
    net.nodes.append(helper.make_node("Identity", [x], [out], name="p2o.scale.out"))
    dims: list[str | int | None] = ["DynamicDimension.0", "DynamicDimension.1", hidden]
    model = net.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                      [helper.make_tensor_value_info(out, TensorProto.FLOAT, dims)],
                      opset=12, ir_version=7, producer=("PaddlePaddle", ""))
    counts = {"layernorm": 2 * layers + 1, "attention": layers, "gelu": layers}
    return Export(model, counts, _feeds("x", hidden, [(2, 7), (3, 5)], seed + 1))


# ---- tf2onnx ------------------------------------------------------------------------------------

class _Tf2onnx(_Net):
    def dense(self, x: str, d_in: int, d_out: int, layer: str) -> str:
        y = self.op("MatMul", x, self.weight((d_in, d_out), f"{layer}/kernel"))
        return self.op("Add", y, self.const(0.1 * self.rng.standard_normal(d_out),
                                            name=f"{layer}/bias"))

    def leading(self, x: str, k: int) -> str:
        """tf.shape(x)[:k] -> Shape, Slice (int64 throughout)."""
        return self.op("Slice", self.op("Shape", x), self.const([0], np.int64),
                       self.const([k], np.int64), self.const([0], np.int64))

    def mean(self, v: str, hidden: int) -> str:
        """jnp.mean over the last axis as jax2tf writes it: ReduceSum * (1/N)."""
        s = self.op("ReduceSum", v, self.const([-1], np.int64), keepdims=1)
        return self.op("Mul", s, self.const(np.float32(1.0 / hidden)))

    def eps(self, x: str, eps: float) -> str:
        """The scalar eps broadcast to the variance's run-time shape (batch, seq, 1)."""
        shape = self.op("Concat", self.leading(x, 2), self.const([1], np.int64), axis=0)
        return self.op("Expand", self.const(np.float32(eps)), shape)

    def flax_layer_norm(self, x: str, hidden: int, layer: str, eps: float = 1e-6) -> str:
        mean = self.mean(x, hidden)
        mean2 = self.mean(self.op("Mul", x, x), hidden)
        var = self.op("Max", self.op("Sub", mean2, self.op("Mul", mean, mean)),
                      self.const(np.float32(0.0)))
        inv = self.op("Reciprocal", self.op("Sqrt", self.op("Add", var, self.eps(x, eps))))
        mul = self.op("Mul", inv, self.param(hidden, f"{layer}/scale", 1.0))
        y = self.op("Mul", self.op("Sub", x, mean), mul)
        return self.op("Add", y, self.param(hidden, f"{layer}/bias", 0.0))

    def moments_layer_norm(self, x: str, hidden: int, layer: str, eps: float = 1e-6) -> str:
        mean = self.mean(x, hidden)
        centered = self.op("Sub", x, mean)
        var = self.mean(self.op("Mul", centered, centered), hidden)
        inv = self.op("Reciprocal", self.op("Sqrt", self.op("Add", var, self.eps(x, eps))))
        y = self.op("Mul", self.op("Mul", centered, inv),
                    self.param(hidden, f"{layer}/gamma", 1.0))
        return self.op("Add", y, self.param(hidden, f"{layer}/beta", 0.0))

    def attention(self, x: str, hidden: int, heads: int, layer: str) -> str:
        key_dim = hidden // heads
        split = self.op("Concat", self.leading(x, 2), self.const([heads, key_dim], np.int64),
                        axis=0)
        projected = []
        for proj in ("query", "key", "value"):
            y = self.op("MatMul", x, self.weight((hidden, hidden), f"{layer}/{proj}/kernel"))
            y = self.op("Reshape", y, split)
            projected.append(self.op("Add", y, self.const(
                0.1 * self.rng.standard_normal((heads, key_dim)), name=f"{layer}/{proj}/bias")))
        q, k, v = projected
        q = self.op("Mul", q, self.const(np.float32(1.0 / math.sqrt(key_dim))))
        scores = self.op("MatMul", self.op("Transpose", q, perm=[0, 2, 1, 3]),
                         self.op("Transpose", k, perm=[0, 2, 3, 1]))
        probs = self.op("Softmax", scores, axis=-1)
        out = self.op("MatMul", probs, self.op("Transpose", v, perm=[0, 2, 1, 3]))
        out = self.op("Transpose", out, perm=[0, 2, 1, 3])
        merge = self.op("Concat", self.leading(out, 2), self.const([hidden], np.int64), axis=0)
        return self.dense(self.op("Reshape", out, merge), hidden, hidden, f"{layer}/output")

    def gelu(self, x: str) -> str:
        erf = self.op("Erf", self.op("Div", x, self.const(np.float32(1.4142135623730951))))
        half = self.op("Mul", self.const(np.float32(0.5)), x)
        return self.op("Mul", half, self.op("Add", self.const(np.float32(1.0)), erf))


def tf2onnx_block(seed: int = 0, hidden: int = 48, heads: int = 4, ffn: int = 96) -> Export:
    """A pre-norm transformer block exported by tf2onnx at opset 15: LayerNorm (Flax form),
    self-attention (Keras MultiHeadAttention), residual, LayerNorm (tf.nn.moments form), MLP
    with exact GELU, residual. Input ``input_1`` of shape (unk__0, unk__1, hidden)."""
    net = _Tf2onnx(seed, const_nodes=False, prefix="StatefulPartitionedCall/model/")
    x = inp = "input_1"
    h = net.flax_layer_norm(x, hidden, "block/ln_1")
    x = net.op("Add", x, net.attention(h, hidden, heads, "block/attention"))
    h = net.moments_layer_norm(x, hidden, "block/ln_2")
    h = net.dense(net.gelu(net.dense(h, hidden, ffn, "block/mlp/fc_1")), ffn, hidden,
                  "block/mlp/fc_2")
    out = net.op("Add", x, h)
    dims: list[str | int | None] = ["unk__0", "unk__1", hidden]
    net.nodes.append(helper.make_node("Identity", [out], ["output_1"], name="Identity"))
    model = net.model([helper.make_tensor_value_info(inp, TensorProto.FLOAT, dims)],
                      [helper.make_tensor_value_info("output_1", TensorProto.FLOAT, dims)],
                      opset=15, ir_version=8, producer=("tf2onnx", "1.17.0"))
    counts = {"layernorm": 2, "attention": 1, "gelu": 1}
    return Export(model, counts, _feeds(inp, hidden, [(2, 6), (1, 9)], seed + 1))


BUILDERS = {"paddle": paddle_encoder, "tf2onnx": tf2onnx_block}
