"""int8 and fp8: QuantizeLinear/DequantizeLinear where TensorRT runs a layer in low precision.

TensorRT 11 has no calibrator and no INT8/FP8 builder flag: a layer runs in int8 or fp8 only where
the graph says so with Q/DQ nodes ("explicit quantization"), and TensorRT fuses each
DQ -> layer -> (next) Q into a quantized kernel. This pass writes that graph, from calibration
statistics (:mod:`onnxpass.calibration`: ONNX Runtime's max, entropy or percentile calibrators over
the data the user gives). What it places, and why (TensorRT's placement recommendations and
NVIDIA ModelOpt's ONNX quantizer agree on these):

- **The layers**: Conv, ConvTranspose, Gemm, and MatMul with a constant weight get Q/DQ on their
  activation input and a DQ on their weight; MatMul of two activations (attention's Q K^T and
  P V) gets Q/DQ on both (option ``bmm=0`` leaves those float). Nothing else: an op TensorRT fuses
  into the layer before or after it (BatchNormalization, bias Add, ReLU, GELU, pooling) must not
  have a Q/DQ between them, and a Q/DQ only ever sits on a layer's *input*, so none does.
- **Residual Add**: where an Add sums a Conv branch (Conv, then any of BatchNormalization, bias
  Add, constant Mul, ReLU/Clip/Sigmoid/SiLU) with another tensor, the *other* input (the skip
  connection) gets Q/DQ: TensorRT then fuses the Add into the Conv's int8 epilogue. When both
  inputs come from Conv branches, the branch nearer the graph inputs is the skip (equally
  deep: neither is, and the Add stays float). Transformer residual Adds (no Conv) stay float.
- **Stays float** (float32, or float16/bfloat16 when the fp16/bf16 pass ran before this one and
  made islands of them): normalizations, Softmax, every op not listed above, plugin nodes (no
  onnxpass plugin declares int8 I/O), and pinned nodes (``pins`` file, ``keep_nodes``,
  ``keep_ops``; the format ``onnxpass debug precision --dtype int8`` writes).
- **Refused layers**, as TensorRT has no fast kernel for them: int8 Convs with fewer than 16
  input or output channels unless (ungrouped) a channel count is a multiple of 8, the kernel is
  square and the Conv reads a graph input or has >= 16 channels on the other side (grouped: output
  channels a multiple of 8 and kernels >= 3); fp8 Convs with fewer than 16 channels or a kernel
  of 32 or more; weights that are not constants; a weighted MatMul/Gemm with one output channel.
- **Scales**: symmetric, zero point 0. Activations per tensor: one Q -> DQ pair per tensor,
  shared by every quantized reader (non-quantized readers keep the float tensor). Weights per
  output channel: Conv axis 0, ConvTranspose axis 1, Gemm axis 0 with ``transB`` else 1, MatMul
  the last axis (a constant first operand: its rows). Weights are stored quantized (int8 or
  float8e4m3fn initializers) behind a DequantizeLinear, as TensorRT folds them.
  int8: scale = amax / 127, values rounded half to even and clipped to [-127, 127] (TensorRT's
  narrow range). fp8: E4M3 (float8e4m3fn), scale = amax / 448.
- **Opset**: int8 needs 13 (per-channel DequantizeLinear), fp8 19 (float8 types), float16 or
  bfloat16 scales 19: the pass raises the model's opset to that and says so. Scales are in the
  quantized tensor's float type, so run ``fp16`` *before* this pass (``default,fp16,int8``):
  after it, at opset < 19, the fp16 pass cannot make a DequantizeLinear float16 and leaves Cast
  pairs between each layer and its epilogue. bfloat16 graphs cannot be calibrated here (ONNX
  Runtime's CPU provider lacks bfloat16 arithmetic): quantize the float32 model.

A model that already has Q/DQ (or QLinear*/Integer ops) is quantized already: a QAT export or
another quantizer's output. The pass refuses it with one line; the other passes keep its Q/DQ.
The nodes it writes carry metadata ``onnxpass.quantize=int8`` (or fp8), so that its own run
again in a later round of the pipeline is a no-op, not a refusal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxpass.errors import OnnxpassError
from onnxpass.graph import QDQ_OPS, Graph, Node, convert_opset
from onnxpass.passes.base import Pass, PassContext, register
from onnxpass.passes.pins import PINS_ENV, NodePins, read_pins

F, H, BF = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16
I8, E4M3 = TensorProto.INT8, TensorProto.FLOAT8E4M3FN
FLOATS = (F, H, BF)
# What makes a model quantized already: Q/DQ, or ONNX Runtime's older integer-op format.
QUANTIZED_OPS = QDQ_OPS | {"DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                           "ConvInteger", "MatMulInteger"}
LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops TensorRT fuses into a Conv's epilogue: a path of them from a Conv is that Conv's branch.
_CONV_EPILOGUE = frozenset({"BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid",
                            "HardSigmoid", "HardSwish", "Add", "Mul"})
MARK = "onnxpass.quantize"
METHODS = ("max", "entropy", "percentile")


@dataclass(frozen=True)
class Target:
    """One quantized type: its ONNX type, largest magnitude, numpy type, opset."""

    name: str
    elem_type: int
    qmax: float
    dtype: type
    opset: int


INT8 = Target("int8", I8, 127.0, np.int8, 13)
FP8 = Target("fp8", E4M3, 448.0, ml_dtypes.float8_e4m3fn, 19)


@dataclass
class Site:
    """One input of one layer to quantize: ``axis`` None for a per-tensor activation, the
    output-channel axis of a weight."""

    node: Node
    index: int
    weight: bool
    axis: int | None = None


@dataclass
class Plan:
    """Where the Q/DQ go: the sites, and the activation tensors they read (to calibrate)."""

    sites: list[Site] = field(default_factory=list)

    @property
    def activations(self) -> list[str]:
        seen: dict[str, None] = {}
        for s in self.sites:
            if not s.weight:
                seen.setdefault(s.node.inputs[s.index])
        return list(seen)

    @property
    def layers(self) -> list[Node]:
        return list({id(s.node): s.node for s in self.sites}.values())


def quantized_ops(model: onnx.ModelProto | Graph) -> dict[str, int]:
    """Op type -> count of the quantization ops a model (or graph) has."""
    nodes: Iterable[object] = model.nodes if isinstance(model, Graph) else model.graph.node
    out: dict[str, int] = {}
    for n in nodes:
        op = n.op_type  # type: ignore[attr-defined]
        if op in QUANTIZED_OPS:
            out[op] = out.get(op, 0) + 1
    return out


class Quantize(Pass):
    """float model -> Q/DQ model for TensorRT's explicit quantization; see the module doc.

    Registered twice, as ``int8`` and ``fp8``: the subclasses name the target. Options
    (``int8:calibration=DIR``, or the command line's ``--calibration``, ``--calibration-method``,
    ``--pins``): ``calibration`` (a folder of images, an .npz of feeds, ``random`` or
    ``random:K``), ``method`` (max, entropy, percentile), ``pins``, ``bmm`` (0: leave MatMuls of
    two activations float), ``batch_size`` (images per calibration batch), ``mean``/``std``
    (image normalization, comma-separated)."""

    target: ClassVar[Target]
    options: ClassVar[tuple[str, ...]] = ("calibration", "method", "pins", "bmm", "batch_size",
                                          "mean", "std")

    def __init__(self, form: str | None = None, *, calibration: str | None = None,
                 method: str = "max", ranges: dict[str, float] | None = None,
                 keep_nodes: Iterable[str] = (), keep_ops: Iterable[str] = (),
                 pins: str | None = None, bmm: bool = True, batch_size: int = 8,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        super().__init__(form)
        self.calibration = calibration
        self.method = _method(method)
        self.ranges = ranges
        self.keep_nodes = set(keep_nodes)
        self.keep_ops = set(keep_ops)
        self.bmm = bmm
        self.batch_size = batch_size
        self.mean, self.std = mean, std
        self.progress = progress
        self._wrote = False
        pins = pins or os.environ.get(PINS_ENV)
        if pins:
            self.add_pins(pins)

    def set_option(self, name: str, value: str) -> None:
        """A pass-spec option (``int8:calibration=DIR``, ``--calibration DIR``)."""
        if name == "calibration":
            self.calibration = value
        elif name == "method":
            self.method = _method(value)
        elif name == "pins":
            self.add_pins(value)
        elif name == "bmm":
            self.bmm = _flag(f"{self.name}:bmm", value)
        elif name == "batch_size":
            if not value.isdigit() or int(value) < 1:
                raise OnnxpassError(f"{self.name}:batch_size={value}: expected a count >= 1")
            self.batch_size = int(value)
        elif name in ("mean", "std"):
            setattr(self, name, _floats(f"{self.name}:{name}", value))
        else:
            raise OnnxpassError(f"pass {self.name} has no option {name!r}; options: "
                                f"{', '.join(self.options)}")

    def add_pins(self, path: str | os.PathLike[str]) -> None:
        """Leave float what a pin-list file names (op types and nodes; patterns are fp16's)."""
        ops, nodes, patterns = read_pins(path)
        if patterns:
            raise OnnxpassError(f"{path}: pattern: pins are for the fp16/bf16 passes; "
                                f"{self.name} takes node: and op: pins")
        self.keep_ops |= ops
        self.keep_nodes |= nodes

    # ---- the pass --------------------------------------------------------------------------
    def run(self, ctx: PassContext) -> int:
        g = ctx.graph
        found = quantized_ops(g)
        if found:
            if self._wrote and all(n.metadata.get(MARK) == self.target.name
                                   for n in g.nodes if n.op_type in QUANTIZED_OPS):
                return 0  # this instance's own Q/DQ, from an earlier round of the pipeline
            raise self.quantized_already(found)
        plan = self.plan(g)
        if not plan.sites:
            return 0
        reduced = any(g.dtype(s.node.inputs[s.index]) != F for s in plan.sites)
        need = max(self.target.opset, 19 if reduced else 0)
        if g.opset() < need:
            old = g.opset()
            ctx.graph = g = convert_opset(g, need, self.label)
            why = "float16/bfloat16 scales need 19" if reduced and self.target.opset < 19 \
                else f"Q/DQ of {self.target.name} needs {need}"
            ctx.notes.append(f"{self.label}: raised the model's opset {old} -> {need} ({why})")
            plan = self.plan(g)
        amax = self.ranges if self.ranges is not None else self._calibrate(ctx, plan)
        missing = [t for t in plan.activations if t not in amax]
        if missing:
            raise OnnxpassError(f"{self.name}: no calibration range for {missing[0]!r} "
                                f"({len(missing)} tensors lack one)")
        self.apply(g, plan, amax)
        self._wrote = True
        return len(plan.layers)

    def quantized_already(self, found: dict[str, int]) -> OnnxpassError:
        """The one-line refusal of a model that has Q/DQ (``found``: :func:`quantized_ops`)."""
        ops = ", ".join(f"{k} {op}" for op, k in sorted(found.items()))
        return OnnxpassError(f"{self.name}: the model is quantized already ({ops}: a QAT "
                             f"export or another quantizer's output); run the other passes "
                             f"without {self.name}, they keep its Q/DQ")

    def no_calibration(self) -> OnnxpassError:
        """The one-line refusal to run without calibration data (or ``ranges``)."""
        return OnnxpassError(f"{self.name} needs calibration data: --calibration DIR_OR_NPZ (a "
                             f"folder of images or an .npz of feeds), or --calibration random "
                             f"for made-up scales")

    def plan(self, g: Graph) -> Plan:
        """Where this pass puts Q/DQ in ``g`` (module doc), pins left out."""
        nodes = g.toposort()
        plan = Plan()
        pinned = NodePins(self.keep_ops, self.keep_nodes)

        quantized: set[int] = set()
        for n in nodes:
            if n.domain or n.op_type not in LAYERS or pinned(n):
                continue
            sites = self._layer_sites(g, n)
            if sites:
                plan.sites.extend(sites)
                quantized.add(id(n))
        depth = _depths(nodes)
        for n in nodes:
            if n.op_type == "Add" and not n.domain and not pinned(n):
                k = _skip_input(g, n, quantized, depth)
                if k is not None:
                    plan.sites.append(Site(n, k, False))
        return plan

    def _layer_sites(self, g: Graph, n: Node) -> list[Site]:
        ins = n.inputs
        if len(ins) < 2 or any(not _float(g, v) for v in ins[:2]):
            return []
        const = [g.is_const(v) for v in ins[:2]]
        if n.op_type in ("Conv", "ConvTranspose"):
            if const[0] or not const[1] or not self._conv_ok(g, n):
                return []
            return [Site(n, 0, False), Site(n, 1, True, 0 if n.op_type == "Conv" else 1)]
        if n.op_type == "Gemm":
            if const[0] or not const[1]:
                return []
            axis = 0 if n.attr("transB", 0) else 1
            if _channels(g, ins[1], axis) == 1:
                return []
            return [Site(n, 0, False), Site(n, 1, True, axis)]
        # MatMul
        if const[0] and const[1]:
            return []
        if not const[0] and not const[1]:
            return [Site(n, 0, False), Site(n, 1, False)] if self.bmm else []
        w = 1 if const[1] else 0
        rank = g.rank(ins[w])
        if rank is None:
            return []
        axis = None if rank < 2 else (rank - 1 if w == 1 else rank - 2)
        if axis is not None and _channels(g, ins[w], axis) == 1:
            return []
        return [Site(n, 1 - w, False), Site(n, w, True, axis)]

    def _conv_ok(self, g: Graph, n: Node) -> bool:
        """TensorRT has an int8/fp8 kernel for this Conv (the channel rules, module doc)."""
        shape = g.shape(n.inputs[1])
        if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape):
            return False
        group = int(n.attr("group", 1) or 1)
        kernel = [int(d) for d in shape[2:]]  # type: ignore[arg-type]
        if n.op_type == "Conv":
            out_c, in_c = int(shape[0]), int(shape[1]) * group  # type: ignore[arg-type]
        else:
            in_c, out_c = int(shape[0]), int(shape[1]) * group  # type: ignore[arg-type]
        if self.target is FP8:
            return min(in_c, out_c) >= 16 and max(kernel) < 32
        if min(in_c, out_c) >= 16:
            return True
        if group == 1:
            return ((out_c % 8 == 0 or in_c % 8 == 0) and len(set(kernel)) == 1
                    and (g.is_input(n.inputs[0]) or max(in_c, out_c) >= 16))
        return out_c % 8 == 0 and min(kernel) >= 3

    def _calibrate(self, ctx: PassContext, plan: Plan) -> dict[str, float]:
        from onnxpass.calibration import calibrate, calibration_data

        if not self.calibration:
            raise self.no_calibration()
        g = ctx.graph
        if any(g.dtype(v) == BF for v in plan.activations):
            raise OnnxpassError(f"{self.name}: cannot calibrate bfloat16 tensors (ONNX Runtime's "
                                f"CPU provider has no bfloat16 arithmetic); quantize the float32 "
                                f"model, or run fp16 before {self.name} instead of bf16")
        model = g.to_model()  # weights left in the input file stay there (base_dir)
        data = calibration_data(self.calibration, model, batch_size=self.batch_size,
                                mean=self.mean, std=self.std)
        progress = self.progress or ctx.progress
        amax = calibrate(model, plan.activations, data, self.method, progress=progress,
                         base_dir=g.base_dir)
        ctx.notes.append(f"{self.label}: calibrated {len(plan.activations)} tensors with "
                         f"{self.method} on {data.describe()}")
        g.model.metadata_props.add(key=f"onnxpass.{self.name}.calibration",
                                   value=f"{self.method} on {data.describe()}")
        return amax

    def apply(self, g: Graph, plan: Plan, amax: dict[str, float]) -> None:
        """Write the Q/DQ of ``plan`` into ``g``, activation scales from ``amax``."""
        t = self.target
        mark = {MARK: t.name}
        dq_of: dict[tuple[str, int | None], str] = {}

        def zero(shape: tuple[int, ...], hint: str) -> str:
            return g.add_initializer(np.zeros(shape, t.dtype), hint)

        def activation(v: str, near: Node) -> str:
            if (v, None) in dq_of:
                return dq_of[v, None]
            ftype = g.dtype(v) or F
            fdt = helper.tensor_dtype_to_np_dtype(ftype)
            a = float(amax[v])
            scale = g.add_initializer(_positive(np.asarray(a / t.qmax if a > 0 else 1.0), fdt),
                                      f"{v}_scale")
            zp = zero((), f"{v}_zero_point")
            q, dq = g.fresh_name(f"{v}_quantized"), g.fresh_name(f"{v}_dequantized")
            g.set_type(q, t.elem_type, g.shape(v))
            g.set_type(dq, ftype, g.shape(v))
            g.insert([Node("QuantizeLinear", [v, scale, zp], [q], metadata=mark,
                           name=g.fresh_node_name(near, "QuantizeLinear")),
                      Node("DequantizeLinear", [q, scale, zp], [dq], metadata=mark,
                           name=g.fresh_node_name(near, "DequantizeLinear"))])
            dq_of[v, None] = dq
            return dq

        def weight(v: str, axis: int | None, near: Node) -> str:
            if (v, axis) in dq_of:
                return dq_of[v, axis]
            w = g.const_value(v)
            assert w is not None
            ftype = g.dtype(v) or F
            q, s = quantize_weight(w, axis, t, helper.tensor_dtype_to_np_dtype(ftype))
            qname = g.add_initializer(q, f"{v}_quantized")
            scale = g.add_initializer(s, f"{v}_scale")
            zp = zero(s.shape, f"{v}_zero_point")
            dq = g.fresh_name(f"{v}_dequantized")
            g.set_type(dq, ftype, g.shape(v))
            attrs = {"axis": helper.make_attribute("axis", axis)} if s.ndim else {}
            g.insert([Node("DequantizeLinear", [qname, scale, zp], [dq], attrs, metadata=mark,
                           name=g.fresh_node_name(near, "DequantizeLinear"))])
            dq_of[v, axis] = dq
            return dq

        by_node: dict[int, list[Site]] = {}
        for s in plan.sites:
            by_node.setdefault(id(s.node), []).append(s)
        for sites in by_node.values():
            n = sites[0].node
            ins = list(n.inputs)
            for s in sites:
                v = ins[s.index]
                ins[s.index] = weight(v, s.axis, n) if s.weight else activation(v, n)
            g.replace([n], n.outputs, [Node(n.op_type, ins, n.outputs, n.attrs, domain=n.domain,
                                            name=n.name, metadata=n.metadata,
                                            doc_string=n.doc_string)], n.outputs)


def quantize_weight(w: np.ndarray, axis: int | None, t: Target,
                    scale_dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``w`` symmetric-quantized to ``t``: the quantized array and its scale (per ``axis``, or a
    scalar) in ``scale_dtype``, the type the DequantizeLinear computes in; a channel of zeros
    gets scale 1. ``w`` is divided by the scale *as stored* (a float16 scale is rounded, or
    raised from 0 to float16's smallest subnormal), so that DequantizeLinear gives ``w`` back."""
    w64 = np.asarray(w, np.float64)
    if axis is None:
        amax = np.asarray(np.max(np.abs(w64)) if w64.size else 0.0)
    else:
        others = tuple(k for k in range(w64.ndim) if k != axis)
        amax = np.max(np.abs(w64), axis=others) if others else np.abs(w64)
    scale = _positive(np.where(amax > 0, amax / t.qmax, 1.0), scale_dtype)
    stored = scale.astype(np.float64)
    if axis is not None:
        stored = stored.reshape([-1 if k == axis else 1 for k in range(w64.ndim)])
    scaled = w64 / stored
    if t.elem_type == I8:
        q = np.clip(np.rint(scaled), -t.qmax, t.qmax).astype(np.int8)
    else:
        q = np.clip(scaled, -t.qmax, t.qmax).astype(t.dtype)
    return q, scale


@register
class Int8(Quantize):
    name = "int8"
    summary = "Q/DQ for TensorRT int8 (calibrated; Conv/MatMul/Gemm inputs, residual Adds)"
    target = INT8


@register
class Fp8(Quantize):
    name = "fp8"
    summary = "Q/DQ for TensorRT fp8 E4M3 (calibrated; opset >= 19)"
    target = FP8


def _positive(scale: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """``scale`` in ``dtype``, never 0 there: a value that would round to 0 (a float16 scale of a
    range below 4e-6) becomes the type's smallest subnormal (QuantizeLinear divides by it)."""
    tiny = float(ml_dtypes.finfo(dtype).smallest_subnormal)
    return np.maximum(np.asarray(scale, np.float64), tiny).astype(dtype)


def _float(g: Graph, v: str) -> bool:
    return bool(v) and g.dtype(v) in FLOATS


def _channels(g: Graph, v: str, axis: int) -> int | None:
    shape = g.shape(v)
    if shape is None or axis >= len(shape) or not isinstance(shape[axis], int):
        return None
    return int(shape[axis])  # type: ignore[arg-type]


def _depths(nodes: Sequence[Node]) -> dict[str, int]:
    """Each value's longest distance (in nodes) from the graph's inputs; ``nodes`` sorted."""
    depth: dict[str, int] = {}
    for n in nodes:
        d = 1 + max((depth.get(v, 0) for v in n.inputs if v), default=0)
        for o in n.outputs:
            depth[o] = d
    return depth


def _conv_branch(g: Graph, v: str) -> Node | None:
    """The Conv whose fused epilogue (BatchNormalization, bias Add, constant Mul, activations)
    computes ``v``, if any."""
    for _ in range(8):
        p = g.producer.get(v)
        if p is None or p.domain:
            return None
        if p.op_type in ("Conv", "ConvTranspose"):
            return p
        if p.op_type not in _CONV_EPILOGUE:
            return None
        data = [i for i in p.inputs[:2] if i and not g.is_const(i)]
        if p.op_type in ("Add", "Mul") and len(data) != 1:
            # SiLU: Mul(x, Sigmoid(x)) is one branch; any other two-input Add/Mul is not
            if not (p.op_type == "Mul" and len(data) == 2 and any(
                    (q := g.producer.get(d)) is not None and q.op_type == "Sigmoid"
                    and q.inputs[0] in data for d in data)):
                return None
            data = [d for d in data if (q := g.producer.get(d)) is None
                    or q.op_type != "Sigmoid"]
        if not data:
            return None
        v = data[0]
    return None


def _skip_input(g: Graph, n: Node, quantized: set[int], depth: dict[str, int]) -> int | None:
    """The skip-connection input of a residual Add whose other input is a quantized Conv's
    branch (module doc), or None."""
    if len(n.inputs) != 2 or any(not _float(g, v) or g.is_const(v) for v in n.inputs):
        return None
    if g.shape(n.inputs[0]) != g.shape(n.inputs[1]) or g.shape(n.inputs[0]) is None:
        return None
    convs = [_conv_branch(g, v) for v in n.inputs]
    fused = [k for k, c in enumerate(convs) if c is not None and id(c) in quantized]
    if len(fused) == 1:
        return 1 - fused[0]
    if len(fused) == 2:
        d0, d1 = (depth.get(v, 0) for v in n.inputs)
        if d0 != d1:
            return 0 if d0 < d1 else 1
    return None


def _method(value: str) -> str:
    if value not in METHODS:
        raise OnnxpassError(f"calibration method {value!r}: expected one of {', '.join(METHODS)}")
    return value


def _flag(where: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise OnnxpassError(f"{where}: expected 0 or 1 (got {value!r})")


def _floats(where: str, value: str) -> list[float]:
    try:
        return [float(x) for x in value.split(",")]
    except ValueError:
        raise OnnxpassError(f"{where}={value}: expected comma-separated numbers") from None


