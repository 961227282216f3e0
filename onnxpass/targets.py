"""TensorRT targets: what each TensorRT version's ONNX parser imports, in one place.

``--target trt-X.Y`` (``run``, ``build``; ``target=`` in the Python API) names the TensorRT the
output must import. It decides each pass's default form (a standard op where that version imports
it natively, TensorRT's attention form or a plugin where not) and the highest opset a pass may
raise the model to. Asking for a form the target cannot import is an error.

Sources (the onnx-tensorrt repository, which is TensorRT's ONNX parser):
- ``docs/operators.md`` at the tags release/8.6-GA and release/10.0-GA: the operator support
  tables (OPS_8_6, OPS_10_0 are their "Y" rows) and "supports operators up to opset 17" (8.4,
  8.5, 8.6), "opset 9 to opset 20" (10.0, 10.1); at 8.2 "up to opset 13"; 9.2 "up to opset 19".
- ``docs/operators.md`` on main at TensorRT 10.15: "opset 9 to opset 24" and its table (OPS_10_15).
- ``CHANGELOG.md``: LayerNormalization added in 8.6 EA; Attention in 10.14 GA; RMSNormalization
  and RotaryEmbedding in 10.15 GA; opset-21 GroupNormalization in 10.9 (hence opset 21 there);
  DeformConv in 10.1.
Versions between two entries take the older entry's facts (what is known to import); a version
newer than the newest entry (TensorRT 11.x) takes the newest entry's, with a note saying so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from onnxpass.errors import OnnxpassError

OPS_8_6 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather
GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization HardSigmoid HardSwish Identity If ImageScaler InstanceNormalization
IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or PRelu Pad ParametricSoftplus Pow QuantizeLinear RNN
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare
Relu Reshape Resize ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
Unsqueeze Upsample Where Xor
""".split())
OPS_10_0 = OPS_8_6 | {"CastLike", "Gelu", "Hardmax", "Mish"}
OPS_10_15 = OPS_10_0 | {"Attention", "BlackmanWindow", "DeformConv", "HammingWindow", "HannWindow",
                        "RMSNormalization", "RotaryEmbedding", "STFT", "TensorScatter"}


@dataclass(frozen=True)
class Target:
    """One TensorRT version's ONNX import: the highest opset, and the standard ops it imports
    (None where no table is known here: then only the natively-imported ops onnxpass emits,
    NATIVE_SINCE, are checked)."""

    version: tuple[int, int]
    max_opset: int
    ops: frozenset[str] | None = field(repr=False)
    note: str = ""

    @property
    def name(self) -> str:
        return f"trt-{self.version[0]}.{self.version[1]}"

    def imports(self, op_type: str) -> bool:
        """Whether this TensorRT's parser imports the standard ONNX op ``op_type``."""
        since = NATIVE_SINCE.get(op_type)
        if since is not None:
            return self.version >= since
        return self.ops is None or op_type in self.ops


# (version, highest opset, op table): each entry's facts hold for the versions up to the next
_ENTRIES: list[tuple[tuple[int, int], int, frozenset[str] | None]] = [
    ((8, 2), 13, None),
    ((8, 4), 17, None),
    ((8, 6), 17, OPS_8_6),
    ((9, 2), 19, None),
    ((10, 0), 20, OPS_10_0),
    ((10, 9), 21, OPS_10_0),
    ((10, 14), 23, OPS_10_0 | {"Attention"}),
    ((10, 15), 24, OPS_10_15),
]

# The standard ops onnxpass's passes emit that TensorRT imports natively only since a version.
NATIVE_SINCE: dict[str, tuple[int, int]] = {
    "LayerNormalization": (8, 6),
    "Gelu": (10, 0),
    "CastLike": (10, 0),
    "Attention": (10, 14),
    "RMSNormalization": (10, 15),
    "RotaryEmbedding": (10, 15),
}

DEFAULT_TARGET = "trt-10.15"


def parse_target(spec: str | None) -> Target:
    """``trt-X.Y`` (or ``X.Y``) -> Target; None -> DEFAULT_TARGET."""
    text = (spec or DEFAULT_TARGET).strip()
    m = re.fullmatch(r"(?:trt-?|tensorrt-?)?(\d+)\.(\d+)(?:\.\d+)*", text, re.IGNORECASE)
    if not m:
        raise OnnxpassError(f"--target {text}: expected trt-MAJOR.MINOR, e.g. trt-8.6 or trt-10.15")
    version = (int(m.group(1)), int(m.group(2)))
    known = [e for e in _ENTRIES if e[0] <= version]
    if not known:
        raise OnnxpassError(f"--target {text}: TensorRT before {_name(_ENTRIES[0][0])} is not "
                            f"supported (no import table for it here)")
    v, opset, ops = known[-1]
    note = ""
    if version > _ENTRIES[-1][0]:
        note = (f"TensorRT {_name(version)[4:]} is newer than the newest import table here "
                f"({_name(v)}): taken to import what {_name(v)} does")
    return Target(version, opset, ops, note)


def _name(v: tuple[int, int]) -> str:
    return f"trt-{v[0]}.{v[1]}"


def unsupported_ops(op_types: set[str], target: Target) -> list[str]:
    """Those of the standard ``op_types`` that ``target`` does not import."""
    return sorted(op for op in op_types if not target.imports(op))


def table() -> list[tuple[str, int, str]]:
    """(target, highest opset, natively imported ops onnxpass emits) per entry, for
    ``onnxpass list``."""
    rows = []
    for v, opset, _ in _ENTRIES:
        native = [op for op, since in NATIVE_SINCE.items() if since <= v and op != "CastLike"]
        rows.append((_name(v), opset, ", ".join(native) or "-"))
    return rows


# The pass whose standard form emits each natively-imported op (the form's required opset is
# the pass's ``required_opset["std"]``).
STD_OPS = {"layernorm": "LayerNormalization", "gelu": "Gelu", "attention": "Attention",
           "rmsnorm": "RMSNormalization", "rotary": "RotaryEmbedding"}


def form_for(name: str, forms: tuple[str, ...], form: str | None, std_opset: int,
             target: Target, explicit: bool) -> str | None:
    """The form pass ``name`` runs in at ``target``: ``form`` itself unless it is the standard
    form and the target cannot import its op (or its opset); then TensorRT's attention form or
    the plugin form, or an error when the user asked for ``name=std`` by name."""
    op = STD_OPS.get(name)
    if form != "std" or op is None:
        return form
    if target.imports(op) and std_opset <= target.max_opset:
        return form
    if explicit:
        since = NATIVE_SINCE.get(op)
        why = (f"which TensorRT {target.name[4:]} does not import (it does since "
               f"{since[0]}.{since[1]})" if since and target.version < since else
               f"at opset {std_opset}, over TensorRT {target.name[4:]}'s {target.max_opset}")
        alt = "trt" if "trt" in forms else "plugin"
        raise OnnxpassError(f"{name}=std emits ONNX {op}, {why}: use {name}={alt} or a newer "
                            f"--target")
    return "trt" if "trt" in forms else "plugin"
