"""Graphs that already carry Q/DQ, made from the float exports of tests/models.py.

Two producers, as deployments meet them:

- :func:`ort_qdq`: ONNX Runtime's own static quantizer in QDQ format (weights stored as int8
  initializers -> DequantizeLinear, activations QuantizeLinear -> DequantizeLinear), per-channel,
  symmetric, calibrated on a few random batches.
- :func:`fake_quant`: what pytorch-quantization / ModelOpt export for a QAT model: the float
  weight initializer -> QuantizeLinear -> DequantizeLinear (the Q on a constant: weights are not
  pre-quantized), per-channel on the output-channel axis, zero points 0; and a Q -> DQ pair of
  its own (one per consumer, as each module has its own input quantizer) before every activation
  input of every MatMul, Gemm and Conv. ``fp8=True``: float8e4m3fn zero points at opset 19.

The activation scales come from the float model's own values on random inputs (amax / qmax),
so the Q/DQ model computes close to the float one.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxpass.verify import random_inputs, session

QDQ = ("QuantizeLinear", "DequantizeLinear")
GEMMS = ("MatMul", "Gemm", "Conv")
MOVES = ("Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Flatten")
FP8_MAX = 448.0  # float8e4m3fn's largest finite value


def calibration(model: onnx.ModelProto, batches: int = 3) -> list[dict[str, np.ndarray]]:
    return [random_inputs(model, seed=10 + k) for k in range(batches)]


# ---- ONNX Runtime's quantizer -------------------------------------------------------------------

def ort_qdq(src: Path, dst: Path, op_types: list[str] | None = ("MatMul", "Gemm", "Conv")
            ) -> Path:  # type: ignore[assignment]
    """``src`` quantized by ``onnxruntime.quantization.quantize_static`` in QDQ format
    (per-channel, symmetric int8); ``op_types=None``: the quantizer's default op types."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.load(str(src))
    batches = iter(calibration(model))

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(op_types) if op_types else None,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return dst


# ---- pytorch-quantization / ModelOpt style ------------------------------------------------------

def _amax(model: onnx.ModelProto, values: set[str]) -> dict[str, float]:
    """max |v| of each value over the calibration batches (the float model run in ORT)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=v) for v in sorted(values - have))
    sess = session(probe)
    names = [o.name for o in sess.get_outputs()]
    amax: dict[str, float] = {}
    for feeds in calibration(model):
        for name, out in zip(names, sess.run(names, feeds)):
            if name in values:
                amax[name] = max(amax.get(name, 0.0), float(np.abs(out).max()))
    return amax


def fake_quant(src: Path, dst: Path, fp8: bool = False) -> Path:
    """``src`` with QAT-export Q/DQ around every MatMul/Gemm/Conv (see the module docstring)."""
    model = onnx.load(str(src))
    if fp8:
        from onnxpass.opset import raise_model_opset

        if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 19:
            raise_model_opset(model, 19, "float8 Q/DQ")
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    qmax, zp_type = (FP8_MAX, TensorProto.FLOAT8E4M3FN) if fp8 else (127.0, TensorProto.INT8)
    targets = [(n, k) for n in g.node if n.op_type in GEMMS for k in range(min(2, len(n.input)))]
    amax = _amax(model, {n.input[k] for n, k in targets if n.input[k] not in inits})
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    used: Counter[str] = Counter()
    for node in g.node:
        if node.op_type in GEMMS:
            for k in range(min(2, len(node.input))):
                x = node.input[k]
                tag = f"{node.name or node.output[0]}_in{k}".replace("/", "_")
                used[tag] += 1
                tag += f"_{used[tag]}" if used[tag] > 1 else ""
                if x in inits:
                    w = numpy_helper.to_array(inits[x])
                    # Output channels: Conv axis 0, MatMul/Gemm (K, N) axis 1 (Gemm transB: 0).
                    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                    axis = 0 if node.op_type == "Conv" or trans_b else w.ndim - 1
                    if w.ndim < 2:
                        continue
                    red = tuple(d for d in range(w.ndim) if d != axis)
                    scale = np.maximum(np.abs(w).max(axis=red), 1e-8) / qmax
                    attrs = {"axis": axis}
                else:
                    scale = np.array(max(amax.get(x, 1.0), 1e-8) / qmax)
                    attrs = {}
                scale = scale.astype(np.float32)
                zero = helper.make_tensor(f"{tag}_zp", zp_type, scale.shape,
                                          [0] * scale.size)
                new_inits += [numpy_helper.from_array(scale, f"{tag}_scale"), zero]
                q, dq = f"{tag}_q", f"{tag}_dq"
                nodes.append(helper.make_node("QuantizeLinear", [x, f"{tag}_scale", zero.name],
                                              [q], name=f"{tag}_Q", **attrs))
                nodes.append(helper.make_node("DequantizeLinear", [q, f"{tag}_scale", zero.name],
                                              [dq], name=f"{tag}_DQ", **attrs))
                node.input[k] = dq
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


# ---- what the tests compare ---------------------------------------------------------------------

def qdq_signature(model: onnx.ModelProto) -> Counter[tuple[object, ...]]:
    """Every Q/DQ node as (op, attributes, scale and zero point bytes, the ops its value reaches):
    equal signatures mean every Q/DQ is still there with its values, feeding the same kind of op.
    The ops it reaches are found through data movement (a no-op Reshape removed between a DQ and
    its Transpose changes nothing TensorRT quantizes); Shape reads are not uses."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)

    def reaches(value: str) -> list[str]:
        kinds = []
        for u in users.get(value, []):
            if u.op_type in MOVES:
                kinds += reaches(u.output[0])
            elif u.op_type != "Shape":
                kinds.append(u.op_type)
        return kinds

    sig: Counter[tuple[object, ...]] = Counter()
    for n in model.graph.node:
        if n.op_type not in QDQ:
            continue
        attrs = tuple(sorted((a.name, helper.get_attribute_value(a)) for a in n.attribute))
        vals = tuple(consts[i].tobytes() if i in consts else None for i in n.input[1:])
        sig[(n.op_type, attrs, vals, tuple(sorted(set(reaches(n.output[0])))))] += 1
    return sig


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)
