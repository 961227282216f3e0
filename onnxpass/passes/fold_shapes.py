"""Constant folding for the ``fold`` pass: shape values folded exactly, the rest by GraphSurgeon.

onnx-graphsurgeon 0.6.1's ``fold_constants(fold_shapes=True)`` mishandles, in its shortcuts:
- ``fold_shape``, ``fold_shape_gather``, ``fold_shape_slice``: read Shape's input dims and ignore
  Shape's ``start``/``end`` (opset 15), so ``Gather(Shape(x, start=1), 1)`` becomes x's dim 1
  instead of dim 2, and ``Shape(x, start=1)`` all of x's dims;
- ``run_cast_elision``: turns Cast(int -> float) -> Add/Sub/Mul/Div/Max/Min/comparison/Concat ->
  Cast(-> int) into the op on the integers, casting its float constants to int (Mul by 0.5
  becomes Mul by 0, Div by 2.5 a Div by 2) and dropping the rounding of large int64 values;
- Pass 3 folds nodes with no inputs, random ones included (RandomNormal: one fixed sample).
So GraphSurgeon runs with ``fold_shapes=False`` and random ops excluded, and
:func:`fold_shape_values` folds shape values first: Shape (with start/end) and the data movement
over it (Gather, Slice, Concat, Squeeze, Unsqueeze, Reshape, Identity), evaluated by ONNX's
reference implementation on the shape with a distinct sentinel for every unknown dim; a value
without sentinels is a constant.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from typing import Any, cast

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxpass.graph import Node, shape_range
from onnxpass.passes.fold import MOVES, NOT_FOLDED, SENTINEL  # the same facts as the new folder

MAX_PASSES = 10
_SMALL = 1024


def fold_shape_values(model: onnx.ModelProto) -> int:
    """Replace every shape value of the main graph that is fully known by an initializer (in
    place). Returns how many nodes were removed."""
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    dims = {vi.name: vi.type.tensor_type.shape for vi in itertools.chain(g.input, g.value_info,
                                                                         g.output)
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}
    inputs = {i.name for i in g.input}
    consts: dict[str, np.ndarray] = {}
    for t in g.initializer:  # indices and shape pieces are small: weights are never decoded
        if t.name not in inputs and t.data_location != onnx.TensorProto.EXTERNAL and int(
                np.prod(t.dims)) <= _SMALL:
            consts[t.name] = numpy_helper.to_array(t)
    known: dict[str, np.ndarray] = {}
    unknown = itertools.count()
    for node in g.node:
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name in (
                "value", "value_int", "value_ints"):
            consts[node.output[0]] = _constant(node)
        elif node.op_type == "Shape" and node.input[0] in dims:
            shape = [d.dim_value if d.HasField("dim_value") else SENTINEL - next(unknown)
                     for d in dims[node.input[0]].dim]
            known[node.output[0]] = _evaluate(node, {node.input[0]: np.zeros(0)}, opset,
                                              shape=shape)
        elif node.op_type in MOVES and _moves_shape(node, known, consts):
            feeds = {i: known[i] if i in known else consts[i] for i in node.input if i}
            try:
                known[node.output[0]] = _evaluate(node, feeds, opset)
            except Exception:  # an invalid index or shape: leave it to the runtime
                continue
    outputs = {o.name for o in g.output}
    done = {v for v, a in known.items() if v not in outputs and not np.any(a <= SENTINEL // 2)}
    if not done:
        return 0
    kept = [n for n in g.node if not (len(n.output) == 1 and n.output[0] in done)]
    removed = len(g.node) - len(kept)
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(numpy_helper.from_array(known[v], v) for v in sorted(done))
    return removed


def _moves_shape(node: onnx.NodeProto, known: dict[str, np.ndarray],
                 consts: dict[str, np.ndarray]) -> bool:
    """The node moves shape values: its data is a shape value (every input of a Concat an int64
    shape value or constant), its other inputs constant."""
    if node.op_type == "Concat":
        return any(i in known for i in node.input) and all(
            i in known or (i in consts and consts[i].dtype == np.int64) for i in node.input)
    return bool(node.input) and node.input[0] in known and all(
        not i or i in known or i in consts for i in node.input[1:])


def _constant(node: onnx.NodeProto) -> np.ndarray:
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    return np.array(helper.get_attribute_value(a), dtype=np.int64)


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int,
              shape: list[int] | None = None) -> np.ndarray:
    """``node`` run alone by the reference implementation; a Shape node on ``shape``."""
    if shape is not None:  # Shape(x, start, end): the dims sliced as ONNX clamps them
        return np.array([shape[k] for k in shape_range(Node.from_proto(node), len(shape))],
                        dtype=np.int64)
    graph = helper.make_graph(
        [node], "fold_shape",
        [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for i, v in feeds.items()],
        [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    outputs = cast(list[Any], ReferenceEvaluator(model).run(None, feeds))  # all outputs: a list
    return np.asarray(outputs[0])


def fold_with_graphsurgeon(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """Fold shape values and constants to a fixpoint (at most MAX_PASSES rounds); None when
    GraphSurgeon or shape inference fails on the model."""
    import onnx_graphsurgeon as gs
    from polygraphy.backend.onnx import (  # a lazily exported name pyright cannot see
        infer_shapes,  # pyright: ignore[reportAttributeAccessIssue]
    )
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # folding edits in place; a failure must leave the caller's model as is
    model = copy
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    cwd = os.getcwd()
    try:
        with tempfile.TemporaryDirectory(prefix="onnxpass-fold-") as scratch:
            # ONNX Runtime's symbolic shape inference (which lets folding see through dynamic
            # shapes) writes temp files into the cwd: give it a scratch folder. External data is
            # found relative to the cwd by GraphSurgeon, so those models fold without it.
            if not external:
                os.chdir(scratch)
            count = len(model.graph.node) + 1
            for _ in range(MAX_PASSES):
                if len(model.graph.node) >= count:
                    break
                count = len(model.graph.node)
                model = infer_shapes(model, error_ok=True, allow_onnxruntime=not external)
                fold_shape_values(model)
                graph = gs.import_onnx(model)
                graph.fold_constants(fold_shapes=False, error_ok=True, size_threshold=16 << 20,
                                     should_exclude_node=lambda n: n.op in NOT_FOLDED)
                model = gs.export_onnx(graph.cleanup(), do_type_check=False)
    except Exception:  # folding is an optimization: a model it cannot handle stays as it is
        return None
    finally:
        os.chdir(cwd)
    return model
