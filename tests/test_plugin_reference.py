"""Each plugin's NumPy reference computes what its ONNX local function computes, run by ONNX
Runtime, at several opsets (the function body is written per opset)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxpass.plugins.base import DOMAIN, PluginSpec, all_plugins
from onnxpass.plugins.kernels import get_kernel
from onnxpass.verify import error_stats, run

OPSETS = (13, 15, 17, 18, 21)
# float16: the function computes in float16 (ORT), the reference in float64.
TOLERANCES = {"float32": (1e-5, 1e-6), "float16": (1e-2, 1e-2)}


def plugin_model(spec: PluginSpec, inputs: list[np.ndarray], attrs: dict, opset: int
                 ) -> onnx.ModelProto:
    """One plugin node and its local function; graph inputs of these arrays' dtypes and shapes,
    outputs of the dtypes and shapes the spec infers."""
    node = helper.make_node(spec.name, list(spec.inputs), list(spec.outputs), domain=DOMAIN)
    node.attribute.extend(spec.node_attributes(attrs).values())
    dtypes = [str(a.dtype) for a in inputs]
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in zip(spec.inputs, inputs)],
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(d)), s)
         for n, d, s in zip(spec.outputs, spec.output_dtypes(dtypes),
                            spec.output_shapes([a.shape for a in inputs], attrs))])
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[spec.function(opset)],
                              ir_version=max(8, helper.find_min_ir_version_for(opsets[:1])))
    onnx.checker.check_model(model)
    return model


def _params() -> list:
    out = []
    for spec in all_plugins():
        k = get_kernel(spec.name)
        if k is None:
            out.append(pytest.param(spec.name, None, None, None, marks=pytest.mark.skip(
                reason=f"{spec.name} has no NumPy reference yet"), id=spec.name))
            continue
        for case in k.cases:
            for opset in OPSETS:
                for dtype in ("float32", "float16"):
                    if opset < spec.min_opset or (dtype == "float16" and opset < 15) \
                            or dtype not in spec.dtypes:
                        continue  # before CastLike (15) the function bodies are float32-only
                    out.append(pytest.param(spec.name, case.name, opset, dtype,
                                            id=f"{spec.name}-{case.name}-opset{opset}-{dtype}"))
    return out


@pytest.mark.parametrize("plugin,case,opset,dtype", _params())
def test_reference_equals_onnx_function(plugin: str, case: str, opset: int, dtype: str) -> None:
    k = get_kernel(plugin)
    assert k is not None
    c = next(c for c in k.cases if c.name == case)
    inputs = c.inputs(dtype)
    model = plugin_model(k.spec, inputs, k.spec.attr_values(c.attrs), opset)
    got = run(model, dict(zip(k.spec.inputs, inputs)))
    want = k.reference(*inputs, **k.spec.attr_values(c.attrs))
    for name, w in zip(k.spec.outputs, want):
        s = error_stats(name, w.astype(np.float32), got[name].astype(np.float32),
                        *TOLERANCES[dtype])
        assert s.within, s.line()
        assert got[name].dtype == w.dtype and got[name].shape == w.shape
