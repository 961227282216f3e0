"""fp16 and bf16, one pass with a target type: run a float32 model in float16 (or bfloat16),
keeping chosen ops in float32.

Every float32 tensor a node computes becomes float16, except in float32 *islands*: nodes that are
pinned, by default

- the normalizations: LayerNormalization, Group/Instance/RMSNormalization, and every decomposed
  LayerNorm the ``layernorm`` pattern finds (its ReduceMean/Pow/Sqrt/Div chain, eps 1e-12 included);
- Softmax and LogSoftmax (the sum of exponentials overflows float16);
- an attention mask built from a constant beyond float16's range (float32's min): the elementwise
  chain from that constant to the scores it is added to. In float32, score + min saturates to min,
  so a fully masked row stays uniform as in torch; float16's -65504 would not absorb the score
  (a fused ``Attention`` or attention/masked-softmax plugin node reading such a mask stays float32
  whole: its Softmax is inside);
- plugin nodes whose spec lacks float16 (or at opset < 15, where reference bodies are float32-only),
  and ops whose schema does not allow float16 (an input the
  schema fixes to float32, like Resize's scales, stays float32 on its own), unknown custom ops,
  nodes with subgraphs or with a value of unknown type;
- Q/DQ a graph already carries (a QAT export) and the op each DequantizeLinear feeds (through
  Reshape/Transpose/...): the scales stay the float32 values they were, and no Cast comes
  between a DQ and its layer (TensorRT runs that layer in int8/fp8 from the DQ's input anyway).

More pins: ``keep_ops`` (op types), ``keep_nodes`` (node names, or first output for unnamed nodes;
``*``, ``?`` and ``[...]`` match as in shell globs: ``/model/layers.*/attention/*``),
``keep_patterns`` (registered pattern passes: every node of every match of ``gelu``'s rules, say,
stays float32), a pin-list file (the ``pins`` option, ``--pins`` on the command line, or the
``ONNXPASS_FP16_PINS`` environment variable; format in :mod:`onnxpass.passes.pins`) as
``onnxpass debug precision`` writes it.

Forms: ``mixed`` (default) pins the above; ``all`` pins only what cannot be float16 plus explicit
pins.

Casts: one Cast per value and direction, only where a float32 island meets float16 (shared by all
consumers). Float32 constants used by float16 nodes become float16 initializers (clipped to
+-65504, infinities kept, nonzero values below 2^-24 raised to it so that an eps stays nonzero);
a pinned node keeps reading the float32 original. ``Cast(to=float)``
in a float16 region casts to float16 instead. Graph inputs and outputs stay float32 (a Cast at
each): callers feed and read what they did before, and ``keep_io_types=False`` makes them float16.
Boundary Casts carry metadata ``onnxpass.fp16=boundary`` so a second run leaves them alone.

``bf16`` is the same pass (:class:`LowPrecision`) with bfloat16 as the target; what differs follows
from bfloat16's float32-like exponent range (8 mantissa bits to float16's 11):

- constants are clipped to +-3.3895e38 (bfloat16's max) and raised to 2^-133 (its smallest
  subnormal), not 65504 and 2^-24; an additive mask stays float32 only when its constant is beyond
  3.3895e38: float32's min (torch's finfo.min, -3.4028e38) rounds to -inf in bfloat16, while a
  -1e30 or -10000 mask runs in bfloat16;
- the schema (``tensor(bfloat16)``, which many ops allow only from later opsets, Conv from 22) and
  plugin specs (``"bfloat16"`` in ``dtypes``) decide which ops can run in bfloat16;
- initializers are rounded to nearest even, as a float32 -> bfloat16 Cast does.

Pin lists, keep_ops/keep_nodes, forms and the boundary metadata are shared. One pass runs on a
float32 model: fp16 on a graph bf16 converted (its boundary Casts to bfloat16), or the other way
round, is a one-line error, not a graph with both types.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxpass.errors import OnnxpassError
from onnxpass.graph import QDQ_OPS, Graph, Node, subgraph_captures
from onnxpass.passes.base import Pass, PassContext, PatternPass, register, registry
from onnxpass.passes.layernorm import layernorm_pattern
from onnxpass.passes.pins import PINS_ENV, NodePins, read_pins
from onnxpass.patterns import Rule
from onnxpass.patterns.matcher import Tracer
from onnxpass.plugins.base import DOMAIN, get_plugin

F, H, BF = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16
# Per target type: its name in schemas and plugin specs, largest finite, smallest positive.
TARGETS: dict[int, tuple[str, float, float]] = {
    H: ("float16", 65504.0, 2.0 ** -24), BF: ("bfloat16", 3.3895313892515355e38, 2.0 ** -133)}
DEFAULT_KEEP_OPS = frozenset({"LayerNormalization", "GroupNormalization", "InstanceNormalization",
                              "RMSNormalization", "Softmax", "LogSoftmax"})
BOUNDARY = {"onnxpass.fp16": "boundary"}
_MASK_OPS = frozenset({"Add", "Sub", "Mul", "Where", "Min", "Max", "Neg", "Cast", "Expand",
                       "Reshape", "Unsqueeze", "Squeeze", "Slice", "Concat", "Tile", "Transpose",
                       # comparisons against the mask's constant (attention's std form guards
                       # all-lowest rows with Equal): float16 would compare -inf to -65504
                       "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "IsInf"})
# Fused ops that add a mask to scores and take the softmax inside (ONNX Attention, plugins).
_MASK_CONSUMERS = frozenset({"Attention", "AttentionPlugin", "MaskedSoftmaxPlugin"})
_LAYERNORM = Rule(name="fp16-layernorm", pattern=layernorm_pattern, rewrite=lambda op, m: m["x"])


def _pattern_rules(name: str) -> list[Rule]:
    """The rules of the registered pattern pass ``name`` (its default form)."""
    cls = registry().get(name)
    if cls is None or not issubclass(cls, PatternPass):
        known = sorted(k for k, c in registry().items() if issubclass(c, PatternPass))
        raise OnnxpassError(f"pattern:{name}: not a pattern pass; pattern passes: "
                            f"{', '.join(known)}")
    return cls().rules()


class LowPrecision(Pass):
    """float32 -> ``target`` (float16 or bfloat16) with float32 islands; see the module doc.

    Registered twice, as ``fp16`` and ``bf16``: the subclasses below only name the target.
    """

    forms = ("mixed", "all")
    default_form = "mixed"
    target: ClassVar[int]
    options: ClassVar[tuple[str, ...]] = ("pins",)

    def __init__(self, form: str | None = None, *,
                 keep_ops: set[str] | frozenset[str] = frozenset(),
                 keep_nodes: set[str] | frozenset[str] = frozenset(),
                 keep_patterns: set[str] | frozenset[str] = frozenset(), pins: str | None = None,
                 keep_io_types: bool = True) -> None:
        if helper.tensor_dtype_to_np_dtype(self.target).name != TARGETS[self.target][0]:
            raise OnnxpassError(f"{self.name} needs onnx >= 1.19 ({TARGETS[self.target][0]} "
                                f"arrays via ml_dtypes); this is onnx {onnx.__version__}")
        super().__init__(form)
        self.keep_ops = set(keep_ops) | (set(DEFAULT_KEEP_OPS) if self.form == "mixed" else set())
        self.keep_nodes = set(keep_nodes)
        self.keep_patterns = set(keep_patterns)
        for name in self.keep_patterns:
            _pattern_rules(name)  # an unknown name fails here, before any model is read
        pins = pins or os.environ.get(PINS_ENV)
        if pins:
            self.add_pins(pins)
        self.keep_io_types = keep_io_types

    def set_option(self, name: str, value: str) -> None:
        """A pass-spec option (``fp16:pins=FILE``, ``--pins FILE``)."""
        if name != "pins":
            raise OnnxpassError(f"pass {self.name} has no option {name!r}; options: pins")
        self.add_pins(value)

    def add_pins(self, path: str | os.PathLike[str]) -> None:
        """Pin what a pin-list file names, on top of the pins so far."""
        ops, nodes, patterns = read_pins(path)
        for name in patterns:
            _pattern_rules(name)
        self.keep_ops |= ops
        self.keep_nodes |= nodes
        self.keep_patterns |= patterns

    def run(self, ctx: PassContext) -> int:
        g, low = ctx.graph, self.target
        nodes = list(g.toposort())
        other = {n.attrs["to"].i for n in nodes if n.op_type == "Cast" and _boundary(n)} - {F, low}
        if other:
            raise OnnxpassError(f"{self.name}: the graph already has {TARGETS[other.pop()][0]} "
                                f"from the other precision pass; run {self.name} on the "
                                f"float32 model")
        pinned = self._pinned(g, nodes)
        half = {id(n): outs for n in nodes if id(n) not in pinned
                and (outs := converted_outputs(g, n, low)) is not None}
        if not any(half.values()):
            return 0
        new_dtype = {o: low for n in nodes if id(n) in half for o in half[id(n)]}
        # A converted graph output is computed under a fresh name and cast back to its own name.
        renamed = {o: g.fresh_name(o) for o in new_dtype if g.is_output(o) and self.keep_io_types}
        if not self.keep_io_types:
            io = [*g.inputs, *(o for o in g.outputs if o in new_dtype)]
            for v in io:
                if g.dtype(v) == F and not g.is_const(v):
                    g.set_type(v, low)
                    new_dtype[v] = low
        casts: dict[tuple[str, int], str] = {}

        def value(v: str, want: int | None) -> str:
            """``v`` as the consumer wants it: the target (low), float32 (F) or as it is (None)."""
            v = renamed.get(v, v)
            have = new_dtype.get(v, g.dtype(v))
            if want is None or not v or have == want:
                return v
            if (v, want) not in casts:
                if want == low and g.is_const(v) and not g.is_output(v):
                    casts[v, want] = g.add_initializer(_narrow(g.const_value(v), low), v)
                else:
                    out = g.fresh_name(v)
                    g.set_type(out, want, g.shape(v))
                    g.insert([_cast(v, out, want, g.fresh_name(f"{v}/Cast"))])
                    casts[v, want] = out
            return casts[v, want]

        for n in nodes:
            outs = half.get(id(n))
            ins, attrs = list(n.inputs), dict(n.attrs)
            extra: list[Node] = []
            if outs is None:  # float32 island: every converted input is cast back
                ins = [i if i in renamed else value(i, F if new_dtype.get(i) == low else None)
                       for i in ins]
            else:
                ins = [value(i, low if k in _half_inputs(g, n, low) else None)
                       for k, i in enumerate(ins)]
                # A boundary Cast back to float32 (an earlier round's) keeps its target.
                if n.op_type == "Cast" and n.attrs["to"].i == F and not _boundary(n):
                    attrs["to"] = helper.make_attribute("to", low)
                for o in n.outputs:
                    if o in renamed:
                        g.set_type(renamed[o], low, g.shape(o))
                        extra.append(_cast(renamed[o], o, F, g.fresh_name(f"{o}/Cast")))
                    elif o in outs:
                        g.set_type(o, low)
            if ins == n.inputs and attrs == n.attrs and not extra and not outs:
                continue
            outputs = [renamed.get(o, o) for o in n.outputs]
            g.replace([n], n.outputs, [Node(n.op_type, ins, outputs, attrs, domain=n.domain,
                                            name=n.name, metadata=n.metadata,
                                            doc_string=n.doc_string), *extra], n.outputs)
        return sum(1 for outs in half.values() if outs)

    def _pinned(self, g: Graph, nodes: list[Node]) -> set[int]:
        pins = NodePins(self.keep_ops, self.keep_nodes)
        pinned = {id(n) for n in nodes if pins(n)}
        rules = [_LAYERNORM] if self.form == "mixed" else []
        rules += [r for name in sorted(self.keep_patterns) for r in _pattern_rules(name)]
        # Every structural match is pinned, including ones the pass itself would refuse to
        # rewrite (not self-contained): those nodes overflow float16 all the same.
        for rule in rules:
            for n in nodes:
                if rule.roots is None or n.op_type in rule.roots:
                    for m in rule.matches_at(g, n, Tracer()):
                        pinned.update(id(x) for x in m.nodes)
        tainted = {v for n in nodes for v in n.inputs if _beyond(g, v, self.target)}
        for n in nodes:  # an additive mask with float32's min stays float32 up to its Softmax
            if n.op_type in _MASK_OPS and tainted.intersection(n.inputs):
                pinned.add(id(n))
                tainted.update(n.outputs)
            elif n.op_type in _MASK_CONSUMERS and tainted.intersection(n.inputs):
                pinned.add(id(n))  # the Softmax is inside: the whole op stays float32
        pinned.update(id(n) for n in _quantized_layers(g, nodes))
        for n in nodes:  # a value a subgraph reads from outside stays float32
            for v in subgraph_captures(n) if n.attrs else ():
                if v in g.producer:
                    pinned.add(id(g.producer[v]))
        return pinned


_MOVES = frozenset({"Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Flatten"})


def _quantized_layers(g: Graph, nodes: list[Node]) -> list[Node]:
    """Q/DQ nodes, and what each DQ feeds up to its first computing op (module docstring)."""
    found = [n for n in nodes if n.op_type in QDQ_OPS and n.domain in ("", "ai.onnx")]
    stack = [o for n in found if n.op_type == "DequantizeLinear" for o in n.outputs]
    while stack:
        for u in g.users(stack.pop()):
            found.append(u)
            if u.op_type in _MOVES:
                stack.extend(u.outputs)
    return found


@register
class Float16(LowPrecision):
    name = "fp16"
    summary = "float32 -> float16 with float32 islands (normalizations, Softmax, pins)"
    target = H


@register
class BFloat16(LowPrecision):
    name = "bf16"
    summary = "float32 -> bfloat16 with float32 islands (normalizations, Softmax, pins)"
    target = BF


def _cast(src: str, out: str, to: int, name: str) -> Node:
    """A boundary Cast (marked, so that a second run leaves it alone)."""
    return Node("Cast", [src], [out], {"to": helper.make_attribute("to", to)}, name=name,
                metadata=BOUNDARY)


def _boundary(n: Node) -> bool:
    return n.metadata.get("onnxpass.fp16") == "boundary"


def _beyond(g: Graph, v: str, target: int) -> bool:
    """A float32 constant with a finite value beyond the target type's range."""
    if not v or g.dtype(v) != F or not g.is_const(v):
        return False
    a = g.const_value(v)
    return a is not None and bool(np.any(np.abs(a[np.isfinite(a)]) > TARGETS[target][1]))


def converted_outputs(g: Graph, n: Node, target: int = H) -> set[str] | None:
    """The float32 outputs ``n`` computes in the target type (float16 or bfloat16), or None when
    ``n`` must stay float32."""
    if _boundary(n) or n.op_type == "Constant":
        return set()
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for a in n.attrs.values()):
        return None
    if any(v and g.dtype(v) is None for v in [*n.inputs, *n.outputs]):
        return None
    f32_out = {o for o in n.outputs if o and g.dtype(o) == F}
    if n.op_type == "Cast" and n.domain == "":
        return f32_out
    half_params = _half_params(g, n, target)
    if half_params is None:
        return None
    in_params, out_params = half_params
    for o, p in zip(n.outputs, out_params):
        # An output typed by an attribute (RandomNormal's dtype) or fixed to float32 stays so.
        if o in f32_out and (p is None or p not in {q for i, q in zip(n.inputs, in_params)
                                                     if g.dtype(i) == F}):
            return None
    return f32_out



def _half_inputs(g: Graph, n: Node, target: int = H) -> set[int]:
    """Indices of the float32 inputs of a converted node that take the target type."""
    if n.op_type == "Cast" and n.domain == "":
        return set()
    params = _half_params(g, n, target)
    ins = params[0] if params else []
    return {k for k, (i, p) in enumerate(zip(n.inputs, ins)) if p is not None and i
            and g.dtype(i) == F}


def _half_params(g: Graph, n: Node, target: int = H
                 ) -> tuple[list[str | None], list[str | None]] | None:
    """For each input and output, the type parameter it shares with others if the target type
    is allowed there (None where it is fixed or not allowed); None for unknown ops."""
    want = TARGETS[target][0]
    if n.domain not in ("", "ai.onnx"):
        try:
            spec = get_plugin(n.op_type) if n.domain == DOMAIN else None
        except KeyError:
            spec = None
        if spec is None or g.opset() < 15:  # bodies are float32-only before CastLike (15)
            return None

        def plugin_param(name: str) -> str | None:
            return "T" if name not in spec.io_dtypes and want in spec.dtypes else None

        ins = [plugin_param(x) for x in spec.inputs] + [None] * len(n.inputs)
        return ins[:len(n.inputs)], [plugin_param(x) for x in spec.outputs]
    try:
        schema = onnx.defs.get_schema(n.op_type, g.opset(), "")
    except Exception:
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def param(formals: Sequence[onnx.defs.OpSchema.FormalParameter], k: int) -> str | None:
        if not formals:
            return None
        f = formals[min(k, len(formals) - 1)]
        return f.type_str if f"tensor({want})" in allowed.get(f.type_str, ()) else None

    return ([param(schema.inputs, k) for k in range(len(n.inputs))],
            [param(schema.outputs, k) for k in range(len(n.outputs))])


def _narrow(a: np.ndarray | None, target: int) -> np.ndarray:
    """``a`` in the target type, rounded to nearest even (float16: numpy; bfloat16: ml_dtypes,
    bit-exact with ONNX Runtime's Cast). Finite values clipped to the target's max (+-65504 for
    float16); a nonzero value below its smallest subnormal becomes that subnormal, with its sign:
    an eps must not turn into zero (a mean pooling's ``sum / max(count, 1e-9)`` over an
    all-padding row would be 0 / 0)."""
    assert a is not None
    _, top, tiny = TARGETS[target]
    a = np.where((a != 0) & (np.abs(a) < tiny), np.copysign(tiny, a), a)
    a = np.where(np.isinf(a), a, np.clip(a, -top, top))
    return a.astype(helper.tensor_dtype_to_np_dtype(target))
