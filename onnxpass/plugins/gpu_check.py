"""Run a model in plugin form with the Triton kernels standing in for its plugin nodes, and
compare it with ONNX Runtime on the original model.

How: the graph (topologically sorted) is cut at its plugin nodes. Each maximal run of other
nodes becomes a sub-model (its inputs: the values it reads from before it; its outputs: the
values read after it) run by an ONNX Runtime CPU session; each plugin node with a Triton kernel
runs through ``kernels.run`` on torch tensors on ``device`` (Triton's JIT on "cuda", Triton's
interpreter on "cpu", which CI runs on tiny models). A plugin node without a kernel, or whose
launch plan refuses its shapes, runs its ONNX function in ONNX Runtime: the report says which
node ran where. Values cross between the two as NumPy arrays (a copy to and from the GPU per
plugin node): this checks results, it does not time anything.

The reference is ONNX Runtime on ``original`` (the model before the rewrite), or on the plugin
model itself (its local functions) when none is given. Subgraphs (If, Loop) reading outer
values are not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import onnx
from onnx import helper

from onnxpass.errors import OnnxpassError
from onnxpass.plugins.base import DOMAIN, all_plugins
from onnxpass.verify import ErrorStats, error_stats, random_inputs, run, session


@dataclass
class CheckReport:
    outputs: list[ErrorStats]
    ran: list[tuple[str, str, str]] = field(default_factory=list)  # (node, op, "triton"|why)
    segments: int = 0

    @property
    def ok(self) -> bool:
        return all(s.within for s in self.outputs)

    def lines(self) -> list[str]:
        out = [f"{len(self.ran)} plugin nodes, {self.segments} ONNX Runtime segments"]
        for op in sorted({op for _, op, _ in self.ran}):
            how: dict[str, int] = {}
            for _, o, h in self.ran:
                if o == op:
                    how[h] = how.get(h, 0) + 1
            out.append(f"  {op}: " + ", ".join(f"{n} on {h}" for h, n in how.items()))
        return out + [s.line() for s in self.outputs]


def _sub_model(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], inputs: list[str],
               outputs: list[str], feeds: dict[str, np.ndarray],
               types: dict[str, onnx.TypeProto]) -> onnx.ModelProto:
    inits = [t for t in model.graph.initializer if t.name in set(inputs)]
    names = {t.name for t in inits}
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(feeds[n].dtype),
                                         feeds[n].shape) for n in inputs if n not in names]
    outs = []
    for n in outputs:
        vi = onnx.ValueInfoProto(name=n)
        if n in types:
            vi.type.CopyFrom(types[n])
            vi.type.tensor_type.ClearField("shape")
        outs.append(vi)
    graph = helper.make_graph(list(nodes), "segment", ins, outs, inits)
    return helper.make_model(graph, opset_imports=list(model.opset_import),
                             functions=list(model.functions), ir_version=model.ir_version)


def run_plugin_form(model: onnx.ModelProto, feeds: dict[str, np.ndarray], device: str = "cuda"
                    ) -> tuple[dict[str, np.ndarray], list[tuple[str, str, str]], int]:
    """Outputs of ``model`` with plugin nodes on Triton (see the module docstring), which
    implementation ran each plugin node, and the number of ONNX Runtime segments."""
    import torch

    from onnxpass.plugins.kernels import get_kernel, run as run_kernel

    plugins = {s.name: s for s in all_plugins()}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    nodes = list(model.graph.node)
    is_plugin = [n.domain == DOMAIN and n.op_type in plugins for n in nodes]
    values = dict(feeds)
    for t in model.graph.initializer:
        values.setdefault(t.name, onnx.numpy_helper.to_array(t))
    # where each value is last read (graph outputs: never dropped)
    last: dict[str, int] = {o.name: len(nodes) for o in model.graph.output}
    for i, n in enumerate(nodes):
        for name in n.input:
            last[name] = max(last.get(name, -1), i)
    ran: list[tuple[str, str, str]] = []
    segments, i = 0, 0
    while i < len(nodes):
        if is_plugin[i]:
            n = nodes[i]
            spec = plugins[n.op_type]
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute
                     if a.name in {x.name for x in spec.attributes}}
            args = [values[x] for x in n.input]
            how = "triton"
            k = get_kernel(n.op_type)
            try:
                if k is None or k.plan is None:
                    raise NotImplementedError("no Triton kernel")
                outs = run_kernel(n.op_type, *(torch.from_numpy(np.array(a, copy=True))
                                               .to(device) for a in args), **attrs)
                got = [o.cpu().numpy() for o in outs]
            except (NotImplementedError, ValueError, TypeError) as e:
                how = f"onnx-function ({str(e).splitlines()[0][:80]})"
                sub = _sub_model(model, [n], list(n.input), list(n.output), values, types)
                got = [session(sub).run(None, {x: values[x] for x in n.input
                                               if x not in {t.name for t in sub.graph.initializer}
                                               })[j] for j in range(len(n.output))]
            values.update(zip(n.output, got))
            ran.append((n.name, n.op_type, how))
            i += 1
            continue
        j = i
        while j < len(nodes) and not is_plugin[j]:
            j += 1
        seg = nodes[i:j]
        made = {o for n in seg for o in n.output}
        inputs = list(dict.fromkeys(x for n in seg for x in n.input if x and x not in made))
        outputs = [o for o in dict.fromkeys(o for n in seg for o in n.output)
                   if o and last.get(o, -1) >= j]
        sub = _sub_model(model, seg, inputs, outputs, values, types)
        inits = {t.name for t in sub.graph.initializer}
        got = session(sub).run(outputs, {x: values[x] for x in inputs if x not in inits})
        values.update(zip(outputs, cast(list[np.ndarray], got)))  # dense outputs: arrays
        segments += 1
        i = j
    return {o.name: values[o.name] for o in model.graph.output}, ran, segments


def check(model: onnx.ModelProto, original: onnx.ModelProto | None = None,
          feeds: dict[str, np.ndarray] | None = None, device: str = "cuda",
          rtol: float | None = None, atol: float | None = None) -> CheckReport:
    """``model`` in plugin form, plugin nodes on Triton, against ONNX Runtime on ``original``
    (default: ``model`` itself). Tolerance: 1e-5 relative (float32); pass rtol/atol for
    float16 models. Both models are in memory with their external data loaded (the CLI
    checks their inputs agree and sets up ``device`` first)."""
    feeds = feeds if feeds is not None else random_inputs(original or model)
    want = run(original or model, feeds)
    got, ran, segments = run_plugin_form(model, feeds, device)
    missing = [k for k in want if k not in got]
    if missing:
        raise OnnxpassError(f"the plugin model lacks outputs {missing} of the original")
    stats = [error_stats(k, want[k], got[k], rtol if rtol is not None else 1e-5,
                         atol if atol is not None else 1e-6) for k in want]
    return CheckReport(stats, ran, segments)
