"""``onnxpass bench ENGINE_OR_MODEL``: latency (median, p90, p99) and throughput after warm-up.

A TensorRT engine (.plan/.engine) is timed with CUDA events around ``execute_async_v3``, once
plainly and once replayed from a CUDA graph (``--no-cuda-graph`` skips that), with a per-layer
profile on ``--profile``; it needs TensorRT and a CUDA build of torch (device buffers, streams).
An .onnx model is timed in ONNX Runtime on the CPU, and the output says so.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxpass.errors import OnnxpassError
from onnxpass.trt_build import import_tensorrt
from onnxpass.trt_build.build import parse_shapes
from onnxpass.trt_build.engine import Engine


@dataclass
class Timing:
    runner: str
    iterations: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # inferences (batch items) per second
    layers: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.runner}: median {self.median_ms:.3f} ms  p90 {self.p90_ms:.3f}  "
                f"p99 {self.p99_ms:.3f}  min {self.min_ms:.3f}  ({self.iterations} runs, "
                f"{self.throughput:.1f} inferences/s)")


def latency_stats(runner: str, times_ms: Sequence[float], batch: int = 1) -> Timing:
    """Per-run latencies (ms) -> Timing. Throughput is batch items per second at the mean."""
    if not times_ms:
        raise OnnxpassError("no timed runs")
    t = np.asarray(times_ms, dtype=np.float64)
    q = np.percentile(t, [50, 90, 99])
    return Timing(runner, len(t), float(q[0]), float(q[1]), float(q[2]), float(t.mean()),
                  float(t.min()), batch * 1000.0 / float(t.mean()))


def layer_table(layer_ms: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Per-layer times (ms per run, over runs) -> rows by total time, with their share."""
    total = sum(float(np.median(v)) for v in layer_ms.values()) or 1.0
    rows = [{"layer": name, "median_ms": float(np.median(v)),
             "percent": 100.0 * float(np.median(v)) / total} for name, v in layer_ms.items()]
    return sorted(rows, key=lambda r: -r["median_ms"])


def _timed(run: Callable[[], object], warmup_s: float, iterations: int,
           clock: Callable[[], float]) -> list[float]:
    """Warm up for ``warmup_s`` (at least once), then time ``iterations`` runs with ``clock``."""
    end = time.perf_counter() + warmup_s
    run()
    while time.perf_counter() < end:
        run()
    out = []
    for _ in range(iterations):
        t0 = clock()
        run()
        out.append(clock() - t0)
    return out


def bench_onnx(path: str, shapes: Sequence[str], warmup_s: float, iterations: int,
               seed: int = 0) -> list[Timing]:
    from onnxpass.graph import load_model
    from onnxpass.verify import random_inputs, session

    model = load_model(path)
    feeds = random_inputs(model, seed)
    rng = np.random.default_rng(seed)
    for name, _, opt, _ in parse_shapes(shapes):
        if name not in feeds:
            raise OnnxpassError(f"--shapes: model has no input {name!r}")
        dtype = feeds[name].dtype
        feeds[name] = (rng.standard_normal(opt) if np.issubdtype(dtype, np.floating)
                       else rng.integers(0, 2, opt)).astype(dtype)
    sess = session(path)

    def ms() -> float:
        return time.perf_counter() * 1000.0

    times = _timed(lambda: sess.run(None, feeds), warmup_s, iterations, ms)
    batch = max((v.shape[0] for v in feeds.values() if v.ndim), default=1)
    return [latency_stats("onnxruntime CPUExecutionProvider", times, batch)]


class _Engine(Engine):
    """An engine with timing and a per-layer profile."""

    def time(self, warmup_s: float, iterations: int, graph: bool) -> list[float]:
        torch = self.torch
        step = self.run
        if graph:
            self.run()  # the first enqueue after a shape change may not be captured
            self.stream.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.stream(self.stream), torch.cuda.graph(g, stream=self.stream):
                self.run()
            step = g.replay
        times: list[float] = []
        with torch.cuda.stream(self.stream):
            end = time.perf_counter() + warmup_s
            step()
            while time.perf_counter() < end:
                step()
            self.stream.synchronize()
            for _ in range(iterations):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record(self.stream)
                step()
                b.record(self.stream)
                b.synchronize()
                times.append(a.elapsed_time(b))
        return times

    def profile(self, iterations: int) -> list[dict[str, Any]]:
        layer_ms: dict[str, list[float]] = {}
        trt = self.trt

        class Profiler(trt.IProfiler):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                layer_ms.setdefault(layer_name, []).append(ms)

        self.context.profiler = Profiler()
        for _ in range(iterations):
            self.run()
            self.stream.synchronize()
        return layer_table(layer_ms)


def bench_engine(path: str, shapes: Sequence[str], warmup_s: float, iterations: int,
                 cuda_graph: bool = True, profile: bool = False) -> list[Timing]:
    trt = import_tensorrt()
    e = _Engine(path, shapes)
    out = [latency_stats(f"TensorRT {trt.__version__}", e.time(warmup_s, iterations, False),
                         e.batch)]
    if cuda_graph:
        out.append(latency_stats(f"TensorRT {trt.__version__} + CUDA graph",
                                 e.time(warmup_s, iterations, True), e.batch))
    if profile:
        out[0].layers = e.profile(min(iterations, 20))
    return out


def main_bench(args: Any) -> int:
    """``onnxpass bench`` (argparse namespace from onnxpass.cli)."""
    path = Path(args.model)
    if not path.is_file():
        raise OnnxpassError(f"{path}: no such file")
    if args.iterations < 1 or args.warmup < 0:
        raise OnnxpassError("--iterations must be >= 1 and --warmup >= 0")
    if path.suffix == ".onnx":
        if args.profile:
            raise OnnxpassError("--profile is for TensorRT engines; build one with onnxpass build")
        print("timing ONNX Runtime on the CPU (an .onnx model; build an engine with "
              "`onnxpass build` to time TensorRT)", file=sys.stderr)
        timings = bench_onnx(str(path), args.shapes, args.warmup, args.iterations, args.seed)
    else:
        timings = bench_engine(str(path), args.shapes, args.warmup, args.iterations,
                               not args.no_cuda_graph, args.profile)
    if args.json:
        print(json.dumps([asdict(t) for t in timings], indent=2))
        return 0
    for t in timings:
        print(t.line())
        for row in t.layers:
            print(f"  {row['median_ms']:9.4f} ms {row['percent']:5.1f}%  {row['layer']}")
    return 0


def add_arguments(p: Any) -> None:
    p.add_argument("model", help="TensorRT engine (.plan, .engine) or .onnx (ONNX Runtime, CPU)")
    p.add_argument("--shapes", action="append", default=[], metavar="NAME:SHAPE",
                   help="input shape, dims joined by x (default: static dims, else the "
                        "engine profile's opt shape)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (default 1)")
    p.add_argument("--iterations", type=int, default=200, help="timed runs (default 200)")
    p.add_argument("--no-cuda-graph", action="store_true", help="skip the CUDA-graph timing")
    p.add_argument("--profile", action="store_true", help="per-layer times (engines only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
