"""How matching time grows with graph size: N stacked LayerNorm+GELU blocks, each separated by a
MatMul, run through `layernorm,gelu` (std form). Anchored, root-indexed matching should make
time per node flat as N grows.

    python bench/bench_matcher.py [--sizes 10,50,200,800]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxpass.graph import Graph
from onnxpass.passes import parse_passes
from onnxpass.passes.manager import PassManager

D = 16


def stacked(n: int) -> onnx.ModelProto:
    nodes, inits = [], [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in
                        {"eps": 1e-5, "two": 2.0, "half": 0.5, "one": 1.0, "r2": 2 ** -0.5}.items()]
    inits.append(numpy_helper.from_array(np.eye(D, dtype=np.float32), "w"))
    x = "x"
    for i in range(n):
        p = f"b{i}_"
        nodes += [
            helper.make_node("ReduceMean", [x], [p + "mean"], axes=[-1]),
            helper.make_node("Sub", [x, p + "mean"], [p + "d"]),
            helper.make_node("Pow", [p + "d", "two"], [p + "sq"]),
            helper.make_node("ReduceMean", [p + "sq"], [p + "var"], axes=[-1]),
            helper.make_node("Add", [p + "var", "eps"], [p + "ve"]),
            helper.make_node("Sqrt", [p + "ve"], [p + "std"]),
            helper.make_node("Div", [p + "d", p + "std"], [p + "n"]),
            helper.make_node("Mul", [p + "n", "r2"], [p + "s"]),
            helper.make_node("Erf", [p + "s"], [p + "e"]),
            helper.make_node("Add", [p + "e", "one"], [p + "e1"]),
            helper.make_node("Mul", [p + "n", "half"], [p + "h"]),
            helper.make_node("Mul", [p + "h", p + "e1"], [p + "g"]),
            helper.make_node("MatMul", [p + "g", "w"], [p + "out"]),
        ]
        x = p + "out"
    graph = helper.make_graph(nodes, "stacked",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, D])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [4, D])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,50,200,800")
    sizes = [int(s) for s in ap.parse_args().sizes.split(",")]
    print(f"{'blocks':>7} {'nodes':>7} {'fused':>6} {'passes s':>9} {'us/node':>8}")
    for n in sizes:
        model = stacked(n)
        nodes = len(model.graph.node)
        graph = Graph(model)
        t0 = time.perf_counter()
        result = PassManager(parse_passes("layernorm,gelu"), check=False).run(graph)
        dt = time.perf_counter() - t0
        fused = sum(s.matches for s in result.stats)
        print(f"{n:>7} {nodes:>7} {fused:>6} {dt:>9.3f} {1e6 * dt / nodes:>8.1f}")


if __name__ == "__main__":
    main()
