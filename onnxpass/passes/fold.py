"""Constant folding that costs what it folds: the ``fold`` pass.

The folder before this one (``fold_graphsurgeon``, onnxpass/passes/fold_shapes.py) exported the
whole model to onnx-graphsurgeon, inferred shapes on it with polygraphy and exported it back, up
to ten times a run: every weight decoded and copied each time, whether or not anything near it
folded (18 s of a 20 s run on a 333 MB CLIP). This one works on the :class:`Graph` in place:

1. **Constants** are initializers and Constant nodes; Constant nodes become initializers of the
   same name (as GraphSurgeon's export wrote them).
2. **Shape values** (:func:`shape_values`): Shape of a value whose rank is known, and the data
   movement over it (Gather, Slice, Concat, Squeeze, Unsqueeze, Reshape, Identity), evaluated by
   ONNX's reference implementation on the shape with a distinct sentinel for each unknown dim; a
   result with no sentinel left is a constant (``Gather(Shape(x), 1)`` of a [batch, 50, 768]
   value is 50 whatever the batch).
3. **Computations on constants** (:func:`constant_nodes`): every deterministic standard node
   whose inputs are all constant, in one extracted subgraph that ONNX Runtime evaluates
   (optimizations off: the kernels alone), with the constants it reads as feeds. Only those
   constants are decoded: a weight stays in its file unless a node that folds reads it (a
   position-embedding Gather reads its table). A result over ``MAX_BYTES`` (GraphSurgeon's
   ``size_threshold``, 16 MiB) stays computed, and so do its inputs as needed.

Steps 2 and 3 repeat, with shape inference between, while they fold something. A node whose
evaluation failed is remembered and not tried again by later rounds of the same graph; nodes that
do not fold cost one look at their inputs. Not folded: random ops (a fixed sample), nodes with
subgraphs, other domains, graph outputs, and QuantizeLinear/DequantizeLinear (``QDQ_OPS``):
TensorRT needs the Q/DQ of a constant weight; folding them bakes the rounding into a float weight.

``fold:evaluator=reference`` evaluates step 3 with ONNX's reference implementation instead
(bench/bench_fold.py measures both, and GraphSurgeon, and onnxscript's folder).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, cast

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

from onnxpass.errors import OnnxpassError
from onnxpass.graph import QDQ_OPS, RANDOM_OPS, Graph, Node, shape_range, subgraph_captures
from onnxpass.passes.base import Pass, PassContext, register

MAX_BYTES = 16 << 20
MAX_STEPS = 10
RANDOM = RANDOM_OPS | {"Dropout"}  # Dropout: random in training mode
NOT_FOLDED = RANDOM | QDQ_OPS  # Q/DQ: a QAT graph's weights stay quantized (module docstring)
MOVES = frozenset({"Gather", "Slice", "Concat", "Squeeze", "Unsqueeze", "Reshape", "Identity"})
SENTINEL = -(2**62)  # unknown dims are SENTINEL - k: no real shape value comes near
_SUBGRAPH = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
EVALUATORS = ("onnxruntime", "reference")


@register
class FoldConstants(Pass):
    name = "fold"
    summary = "fold computations on constants and known shape values (ONNX Runtime evaluates)"
    options: ClassVar[tuple[str, ...]] = ("evaluator",)

    def __init__(self, form: str | None = None) -> None:
        super().__init__(form)
        self.evaluator = "onnxruntime"
        self._failed: set[Node] = set()  # nodes whose evaluation failed (held: ids get reused)

    def set_option(self, name: str, value: str) -> None:
        if name != "evaluator":
            raise OnnxpassError(f"pass fold has no option {name!r}; options: evaluator")
        if value not in EVALUATORS:
            raise OnnxpassError(f"fold:evaluator={value}: evaluators are "
                                f"{', '.join(EVALUATORS)}")
        self.evaluator = value

    def run(self, ctx: PassContext) -> int:
        g = ctx.graph
        total = constant_nodes_to_initializers(g)
        for step in range(MAX_STEPS):
            removed, typed, doubt = shape_values(g, self._failed)
            n = removed + constant_nodes(g, self.evaluator, self._failed)
            total += n
            if not n and not typed:
                # Stuck on a dim read from a shape that no symbol names: ONNX Runtime's symbolic
                # inference may prove it (once; seconds on a big model, so only now).
                if doubt and g.prove_dims():
                    continue
                break
            if step + 1 < MAX_STEPS:
                g.refresh_types()  # a folded Reshape shape makes the next Shape known
        return total


def _standard(node: Node) -> bool:
    return node.domain == "" and node.op_type not in NOT_FOLDED and not any(
        a.type in _SUBGRAPH for a in node.attrs.values())


def constant_nodes_to_initializers(g: Graph) -> int:
    """Constant nodes (not graph outputs) become initializers of the same name."""
    found = [n for n in g.nodes if n.op_type == "Constant" and n.domain == ""
             and len(n.outputs) == 1 and not g.is_output(n.outputs[0])]
    done = 0
    for n in found:
        value = g.const_value(n.outputs[0])
        if value is not None:
            g.fold([n], {n.outputs[0]: value})
            done += 1
    return done


# ---- shape values -------------------------------------------------------------------------------

def shape_values(g: Graph, failed: set[Node]) -> tuple[int, int, bool]:
    """Fold every shape value that is fully known, remove every Reshape of x to a shape computed
    to be x's own (see the module docstring), and give the other Reshapes whose target is known
    the dims it proves (``Reshape(x, [batch, -1, 32])`` of x [batch, 6, 8, 32] is [batch, 48,
    32], which ONNX's inference cannot tell). Returns how many nodes were removed, how many
    values were typed better, and whether a Gather or Slice of a Shape picked a dim no symbol
    names (then the fold asks ONNX Runtime's symbolic inference, Graph.prove_dims, and looks
    again: the old whole-model folding always ran it, at seconds per round).

    An unknown dim is a sentinel named by its symbol (values that share a ``dim_param`` share
    it) or else by its value and position, so ``Reshape(x, Concat(Gather(Shape(x), 0), 12, 50,
    64))`` of an x of shape [batch, 12, 50, 64] is seen to be x."""
    known: dict[str, np.ndarray] = {}
    producers: dict[str, Node] = {}
    sentinels: dict[tuple[str, ...], int] = {}
    reshapes: list[Node] = []
    opset = g.opset()
    from_shape: set[str] = set()  # Shape outputs
    vague: set[int] = set()  # sentinels of dims no symbol names (or only ONNX's unk__<n>)
    doubt = False  # a Gather/Slice of a Shape picked such a dim

    def symbolic(value: str) -> list[int] | None:
        dims = g.shape(value)
        if dims is None:
            return None
        return [d if isinstance(d, int) else sentinels.setdefault(
            ("p", d) if isinstance(d, str) else ("v", value, str(k)),
            SENTINEL - len(sentinels)) for k, d in enumerate(dims)]

    for node in g.toposort():
        if not _standard(node) or len(node.outputs) != 1 or not node.outputs[0]:
            continue
        out = node.outputs[0]
        if node.op_type == "Shape":
            shape = None if g.is_const(node.inputs[0]) else symbolic(node.inputs[0])
            if shape is None:
                continue  # a constant's Shape is folded with the constants
            known[out] = np.array([shape[k] for k in shape_range(node, len(shape))],
                                  dtype=np.int64)
            producers[out] = node
            from_shape.add(out)
            vague.update(v for k, v in sentinels.items()
                         if k[0] == "v" or k[1].startswith("unk__"))
            continue
        if node.op_type in ("Reshape", "Expand") and len(node.inputs) > 1 \
                and node.inputs[1] in known:
            reshapes.append(node)
        if _moves_shape(g, node, known) and node not in failed:
            feeds = {i: known[i] if i in known else g.const_value(i) for i in node.inputs if i}
            try:
                value = _reference([node], cast(dict[str, np.ndarray], feeds), [out],
                                   opset)[out]
            except Exception:  # an invalid index or shape: the runtime will say so
                failed.add(node)
                continue
            if node.op_type == "Equal" and not _decided(
                    *(np.asarray(feeds[i]) for i in node.inputs)):
                continue  # an unknown dim compared with a dim it may be
            if node.op_type in ("Gather", "Slice") and node.inputs[0] in from_shape:
                picked = {int(v) for v in np.asarray(value).reshape(-1)}
                doubt |= any(v in vague for v in picked)
            known[out] = value
            producers[out] = node
    removed = typed = 0
    captured = _captured(g)
    names = {v: k for k, v in sentinels.items()}
    for node in reshapes:  # Reshape(x, shape of x): x; else the dims of its result
        x, out = node.inputs[0], node.outputs[0]
        if node.op_type == "Expand":
            dims = _broadcast(symbolic(x), known[node.inputs[1]].tolist())
        else:
            dims = _reshaped(known[node.inputs[1]].tolist(), symbolic(x),
                             bool(node.attr("allowzero", 0)))
        if dims is not None:
            typed += _refine(g, out, [d if d >= 0 else _symbol(names.get(d)) for d in dims])
        # D: a constant's Reshape folds with the constants, named after its output as
        # GraphSurgeon named it; E: one that is a graph output becomes Identity (replace inserts
        # it), as the old pipeline ended; B: never one whose output a subgraph reads
        if node.op_type != "Reshape" or g.is_const(x) or out in captured or not _same_shape(
                known[node.inputs[1]].tolist(), symbolic(x), bool(node.attr("allowzero", 0))):
            continue
        g.replace([node], [out], [], [x])
        removed += 1
    done = {v for v, a in known.items()
            if not g.is_output(v) and not np.any(a <= SENTINEL // 2)}
    return removed + _fold_results(g, producers, done, known), typed, doubt


def _decided(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal(a, b) of shape values is known: no unknown dim (sentinel) is compared with a dim
    it may be (a dim >= 0, or another unknown dim). Against a negative entry (-1) it is False."""
    try:
        x, y = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    except ValueError:
        return False
    sx, sy = x <= SENTINEL // 2, y <= SENTINEL // 2
    doubt = (sx & ~sy & (y >= 0)) | (sy & ~sx & (x >= 0)) | (sx & sy & (x != y))
    return not bool(doubt.any())


def _broadcast(dims: list[int] | None, target: list[int]) -> list[int] | None:
    """The dims of Expand(x, ``target``) for x of ``dims`` (ints and sentinels): numpy's
    broadcast, a pair of different unknown dims (or an unknown dim and one it may be) unknown."""
    if dims is None:
        return None
    n = max(len(dims), len(target))
    a = [1] * (n - len(dims)) + list(dims)
    b = [1] * (n - len(target)) + list(target)
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif x >= 0 and y >= 0:
            return None  # not broadcastable: the runtime will say so
        else:
            out.append(SENTINEL + 1)  # unknown
    return out


def _reshaped(target: list[int], dims: list[int] | None, allowzero: bool) -> list[int] | None:
    """The dims of Reshape(x, ``target``) for x of ``dims`` (ints and sentinels): 0 copies x's
    dim (without allowzero), a -1 is x's size over the others' where the unknown dims cancel,
    else a sentinel. None when x's rank is unknown or the target is not a valid one."""
    if dims is None or target.count(-1) > 1:
        return None
    out = [dims[k] if t == 0 and not allowzero and k < len(dims) else t
           for k, t in enumerate(target)]
    if -1 not in out:
        return out
    unknown = [d for d in out if d < -1]  # sentinels among the other entries
    have = [d for d in dims if d < 0]
    rest = list(have)
    for d in unknown:
        if d not in rest:
            return [SENTINEL + 1 if d == -1 else d for d in out]  # -1 stays unknown
        rest.remove(d)
    known_out = int(np.prod([d for d in out if d >= 0], dtype=np.int64))
    known_in = int(np.prod([d for d in dims if d >= 0], dtype=np.int64))
    if rest or known_out == 0 or known_in % known_out:
        return [SENTINEL + 1 if d == -1 else d for d in out]
    return [known_in // known_out if d == -1 else d for d in out]


def _symbol(key: tuple[str, ...] | None) -> str | None:
    """The dim_param a sentinel stands for; None for a dim known by no name (or none at all)."""
    return key[1] if key is not None and key[0] == "p" and not key[1].startswith("unk__") \
        else None


def _refine(g: Graph, value: str, dims: list[int | str | None]) -> int:
    """Give ``value`` ``dims`` where its inferred shape has none (unknown, or a symbol ONNX
    made up); 1 when that told something new."""
    dtype, have = g.dtype(value), g.shape(value)
    if dtype is None or (have is not None and len(have) != len(dims)):
        return 0
    have = have or (None,) * len(dims)
    merged = []
    for h, d in zip(have, dims):
        vague = h is None or (isinstance(h, str) and h.startswith("unk__"))
        merged.append(d if vague and d is not None else h)
    if merged == list(have):
        return 0
    g.set_type(value, dtype, merged)
    return 1


def _same_shape(target: list[int], dims: list[int] | None, allowzero: bool) -> bool:
    """Reshape to ``target`` keeps a value of shape ``dims`` as it is: every dim equal, or 0
    (copy that dim, without allowzero), or the one -1 (then the only dim left to infer)."""
    if dims is None or len(target) != len(dims) or target.count(-1) > 1:
        return False
    return all(t == d or (t == 0 and not allowzero) or t == -1 for t, d in zip(target, dims))


def _moves_shape(g: Graph, node: Node, known: dict[str, np.ndarray]) -> bool:
    """The node moves shape values: its data is a shape value (every input of a Concat an int64
    shape value or constant), its other inputs constant. Where selects between shape values by
    a known condition; Equal compares a shape value (decided or not: :func:`_decided`)."""
    if node.op_type == "Where":
        cond = node.inputs[0]
        return (cond in known or g.is_const(cond)) and any(i in known for i in node.inputs[1:]) \
            and all(i in known or g.is_const(i) for i in node.inputs[1:])
    if node.op_type == "Equal":
        return any(i in known for i in node.inputs) and all(
            i in known or g.is_const(i) for i in node.inputs)
    if node.op_type not in MOVES:
        return False
    if node.op_type == "Concat":
        return any(i in known for i in node.inputs) and all(
            i in known or (g.is_const(i) and g.dtype(i) == onnx.TensorProto.INT64)
            for i in node.inputs)
    return bool(node.inputs) and node.inputs[0] in known and all(
        not i or i in known or g.is_const(i) for i in node.inputs[1:])


# ---- computations on constants ------------------------------------------------------------------

def constant_nodes(g: Graph, evaluator: str, failed: set[Node]) -> int:
    """Fold the deterministic standard nodes whose inputs are all constant (see the module
    docstring); returns how many nodes were removed."""
    plan: list[Node] = []
    computed: set[str] = set()
    for node in g.toposort():
        if not _standard(node) or node.op_type == "Constant" or node in failed:
            continue
        if any(o and g.is_output(o) for o in node.outputs):
            continue
        if not all(not i or i in computed or g.is_const(i) for i in node.inputs):
            continue
        if any(_bytes(g, o) > MAX_BYTES for o in node.outputs if o):  # known too big: not run
            continue
        plan.append(node)
        computed.update(o for o in node.outputs if o)
    if not plan:
        return 0
    # The values read outside the plan are its results; the others are intermediate.
    inside = {id(n) for n in plan}
    captured = _captured(g)  # B: a value a subgraph reads is read outside the plan
    results = [o for n in plan for o in n.outputs
               if o and (o in captured or any(id(u) not in inside for u in g.users(o)))]
    values = _evaluate(g, plan, results, evaluator, failed)
    if values is None:
        return 0
    producers = {o: n for n in plan for o in n.outputs if o}
    small = {v for v in results if v in values and values[v].nbytes <= MAX_BYTES}
    return _fold_results(g, producers, small, values)


def _bytes(g: Graph, value: str) -> int:
    """Bytes of ``value`` from its inferred type; 0 when unknown (then evaluated and checked)."""
    shape, dtype = g.shape(value), g.dtype(value)
    if shape is None or dtype is None or not all(isinstance(d, int) for d in shape):
        return 0
    try:
        size = helper.tensor_dtype_to_np_dtype(dtype).itemsize
    except Exception:
        return 0
    return int(np.prod([int(d) for d in shape if isinstance(d, int)], dtype=np.int64)) * size


def _evaluate(g: Graph, plan: list[Node], results: list[str], evaluator: str,
              failed: set[Node]) -> dict[str, np.ndarray] | None:
    """The values of ``results``: the plan run as one subgraph, or, when that fails, node by
    node (a node that fails is recorded in ``failed``, and what reads it is not run)."""
    computed = {o for n in plan for o in n.outputs if o}
    feeds: dict[str, np.ndarray] = {}
    for n in plan:
        for i in n.inputs:
            if i and i not in computed and i not in feeds:
                value = _read(g, i)
                if value is None:
                    return None
                feeds[i] = value
    run = _ort if evaluator == "onnxruntime" else _reference
    try:
        return run(plan, feeds, results, g.opset(), g.model)
    except Exception:  # an op or type the evaluator lacks: node by node, to fold the rest
        pass
    values: dict[str, np.ndarray] = dict(feeds)
    for n in plan:
        ins = [i for i in n.inputs if i]
        if any(i not in values for i in ins):
            continue
        outs = [o for o in n.outputs if o]
        try:
            values.update(run([n], {i: values[i] for i in ins}, outs, g.opset(), g.model))
        except Exception:
            failed.add(n)
    return {v: values[v] for v in results if v in values}


def _read(g: Graph, value: str) -> np.ndarray | None:
    """A constant's value; a weight is read from its file without entering the graph's cache of
    decoded constants (which holds what the passes read), so it is freed after the fold."""
    t = g._initializer(value)  # not .initializers: that copies the whole map
    if t is not None and not g.is_input(value) and t.data_location == onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(t, g.base_dir)
    return g.const_value(value)


def _fold_results(g: Graph, producers: dict[str, Node], done: set[str],
                  values: dict[str, np.ndarray]) -> int:
    """Fold ``done`` (values computed by ``producers``' nodes) into initializers, with the
    nodes only they need. A producer any value not folded still reads stays."""
    if not done:
        return 0
    # Walk back from each folded value through the nodes that computed it; a node whose other
    # outputs are read by something that stays is kept (its outputs stay computed).
    needed: dict[int, Node] = {}
    stack = [producers[v] for v in done if v in producers]
    while stack:
        n = stack.pop()
        if id(n) in needed:
            continue
        needed[id(n)] = n
        stack.extend(producers[i] for i in n.inputs if i in producers and i not in done)
    removable = _closed(g, list(needed.values()), done)
    if not removable:
        return 0
    keep_ids = {id(n) for n in removable}
    # In the order the nodes compute them (a set's order would follow PYTHONHASHSEED).
    folded = {o: values[o] for n in removable for o in n.outputs if o in done}
    # Values of removed nodes still read by a kept node must be folded too.
    for n in removable:
        for o in n.outputs:
            if o and o not in folded and any(id(u) not in keep_ids for u in g.users(o)):
                if o not in values:
                    return 0  # unreachable by construction; never fold half a computation
                folded[o] = values[o]
    g.fold(removable, folded)
    return len(removable)


def _closed(g: Graph, nodes: list[Node], done: set[str]) -> list[Node]:
    """The nodes of ``nodes`` to remove: those whose outputs are folded or read only inside the
    removed set; iterated until stable."""
    chosen = {id(n): n for n in nodes}
    captured = _captured(g)
    changed = True
    while changed:
        changed = False
        for key, n in list(chosen.items()):
            for o in n.outputs:
                if not o or o in done:
                    continue
                if g.is_output(o) or o in captured or any(id(u) not in chosen
                                                          for u in g.users(o)):
                    del chosen[key]
                    changed = True
                    break
    return list(chosen.values())


# ---- evaluators ---------------------------------------------------------------------------------

def _subgraph(plan: Sequence[Node], feeds: dict[str, np.ndarray], results: Iterable[str],
              opset: int, model: onnx.ModelProto | None) -> onnx.ModelProto:
    graph = helper.make_graph(
        [n.to_proto() for n in plan], "onnxpass_fold",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in feeds.items()],
        [onnx.ValueInfoProto(name=r) for r in results])
    opsets = list(model.opset_import) if model is not None else \
        [helper.make_opsetid("", opset)]
    m = helper.make_model(graph, opset_imports=opsets)
    if model is not None:
        m.ir_version = model.ir_version
    return m


def _ort(plan: Sequence[Node], feeds: dict[str, np.ndarray], results: Sequence[str], opset: int,
         model: onnx.ModelProto | None = None) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    m = _subgraph(plan, feeds, results, opset, model)
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(list(results), feeds)
    return {r: np.asarray(v) for r, v in zip(results, outs)  # C: a sequence is no tensor
            if isinstance(v, (np.ndarray, np.generic))}


def _reference(plan: Sequence[Node], feeds: dict[str, np.ndarray], results: Sequence[str],
               opset: int, model: onnx.ModelProto | None = None) -> dict[str, np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    m = _subgraph(plan, feeds, results, opset, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = cast(list[Any], ReferenceEvaluator(m).run(list(results), feeds))
    return {r: np.asarray(v) for r, v in zip(results, outs)  # C: a sequence is no tensor
            if isinstance(v, (np.ndarray, np.generic))}


def _captured(g: Graph) -> set[str]:
    """Outer values read inside the subgraphs of ``g``'s nodes (Graph.users does not list the
    node that holds the subgraph)."""
    return {v for n in g.nodes if any(a.type in _SUBGRAPH for a in n.attrs.values())
            for v in subgraph_captures(n)}
