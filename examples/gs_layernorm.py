"""A 2022-hackathon-style onnx-graphsurgeon rewrite, run as an onnxpass pass.

The MobileViT, CLIP and LeViT teams each wrote a loop like this one: find the decomposed
LayerNorm an exporter writes (ReduceMean -> Sub -> Pow -> ReduceMean -> Add(eps) -> Sqrt -> Div
-> Mul(gamma) -> Add(beta)) by walking ``node.o()``, put one plugin node in its place, and let
``cleanup()`` drop the rest. Registered with :func:`graphsurgeon_pass`, it runs in onnxpass
pipelines with their checks, ``--verify`` and provenance::

    onnxpass run --load examples/gs_layernorm.py --passes gs_layernorm examples/vit_tiny.onnx \\
        -o vit_tiny.gs.onnx --verify

The plugin node is onnxpass's LayerNormPlugin (tests/test_graphsurgeon_pass.py and
tests/goldens/graphsurgeon check it against the built-in ``layernorm=plugin`` pass).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxpass.passes.graphsurgeon import graphsurgeon_pass, plugin_attrs


def _const(t: Any) -> np.ndarray | None:
    """The value of a gs tensor that is a constant: an initializer, a Constant node's output, or
    an Identity of one (TorchScript shares equal weights that way)."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    if t.inputs and t.inputs[0].op == "Identity":
        return _const(t.inputs[0].inputs[0])
    if t.inputs and t.inputs[0].op == "Constant":
        v = t.inputs[0].attrs["value"]
        return np.asarray(v.values if isinstance(v, gs.Constant) else v)
    return None


def _only(t: Any, op: str) -> Any:
    """The one consumer of ``t`` if it is an ``op`` node, else None."""
    return t.outputs[0] if len(t.outputs) == 1 and t.outputs[0].op == op else None


@graphsurgeon_pass("gs_layernorm", "decomposed LayerNorm -> LayerNormPlugin, the GraphSurgeon way")
def gs_layernorm(graph: gs.Graph) -> gs.Graph:
    """Replace each ReduceMean-Sub-Pow-ReduceMean-Add-Sqrt-Div-Mul-Add chain over the last axis
    by a LayerNormPlugin node."""
    for mean in [n for n in graph.nodes if n.op == "ReduceMean"]:
        if list(mean.attrs.get("axes", [])) != [-1]:
            continue
        x = mean.inputs[0]
        sub = _only(mean.outputs[0], "Sub")
        if sub is None or sub.inputs[0] is not x:
            continue
        pow_ = next((c for c in sub.outputs[0].outputs if c.op == "Pow"), None)
        div = next((c for c in sub.outputs[0].outputs if c.op == "Div"), None)
        if pow_ is None or div is None or len(sub.outputs[0].outputs) != 2:
            continue
        two = _const(pow_.inputs[1])
        var = _only(pow_.outputs[0], "ReduceMean")
        add_eps = var and _only(var.outputs[0], "Add")
        sqrt = add_eps and _only(add_eps.outputs[0], "Sqrt")
        if two is None or float(two) != 2.0 or sqrt is None or div.inputs[1] is not sqrt.outputs[0]:
            continue
        eps = _const(add_eps.inputs[1])
        mul = _only(div.outputs[0], "Mul")
        add = mul and _only(mul.outputs[0], "Add")
        if eps is None or add is None:
            continue
        gamma, beta = mul.inputs[1], add.inputs[1]
        if _const(gamma) is None or _const(beta) is None:
            continue
        y = add.outputs[0]
        add.outputs = []  # the old chain is left dangling: cleanup() removes it
        graph.nodes.append(gs.Node(
            op="LayerNormPlugin", domain="onnxpass", name=f"{mean.name or y.name}/LayerNormPlugin",
            inputs=[x, gamma, beta], outputs=[y],
            attrs=plugin_attrs("LayerNormPlugin", epsilon=float(eps), axis=-1)))
    return graph
