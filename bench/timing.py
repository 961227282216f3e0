"""GPU time of one call, without launch overhead or L2 reuse: a CUDA graph over rotating buffers.

``time_graph(fn, make_args, rotations)`` makes ``rotations`` independent argument sets with
``make_args(i)`` (inputs and, where ``fn`` writes into them, outputs), calls ``fn`` once on each
(outside any capture: Triton and Inductor compile and autotune there), captures ONE graph that
calls ``fn`` on every set in turn, replays it a few times to warm up, then times replays with CUDA
events. The result is the median replay time divided by ``rotations``, in microseconds.

Why: launched one by one from Python (triton.testing.do_bench), kernels under ~20 us measure the
launch path, not the GPU; and a buffer used again right away is read from L2 (60 MB on the H200).
Inside one graph the launches cost nothing on the host, and with the sets together over twice L2
(``rotations_for``: 256 MB, at least 4 sets) each call finds its data in HBM, as in a model.
Outputs that ``fn`` returns (torch eager and torch.compile'd functions allocate their own) are
kept alive until the graph is released, so every call writes fresh memory as well.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

TARGET_BYTES = 256 << 20  # all rotating sets together: over 4x the H200's 60 MB L2
MIN_ROTATIONS = 4
MAX_ROTATIONS = 256  # tiny kernels stay L2-resident: a graph of 256 calls is enough to time


def l2_bytes() -> int:
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 60 << 20) or 60 << 20)


def rotations_for(nbytes: int, target: int | None = None) -> int:
    """Argument sets whose bytes together reach ``target`` (default: 256 MB or 4x L2)."""
    target = target or max(TARGET_BYTES, 4 * l2_bytes())
    return max(MIN_ROTATIONS, min(MAX_ROTATIONS, math.ceil(target / max(1, nbytes))))


def graph_stats(fn: Callable[..., Any], make_args: Callable[[int], Sequence[Any]],
                rotations: int, *, target_ms: float = 40.0, min_replays: int = 10,
                max_replays: int = 200, warmup: int = 3) -> dict[str, float]:
    """time_graph's measurement with its spread: us (median per call), min_us, max_us, replays,
    rotations."""
    import torch

    args = [tuple(make_args(i)) for i in range(rotations)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile, autotune, lazy init: never inside the capture
        for a in args:
            fn(*a)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    keep: list[Any] = []
    try:
        with torch.cuda.graph(graph):
            for a in args:
                keep.append(fn(*a))
        for _ in range(warmup):
            graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        once = max(start.elapsed_time(end), 1e-3)
        n = max(min_replays, min(max_replays, int(target_ms / once)))
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(n)]
        for s, e in events:
            s.record()
            graph.replay()
            e.record()
        torch.cuda.synchronize()
        ms = [s.elapsed_time(e) for s, e in events]
    finally:
        keep.clear()
        graph.reset()
        del args
    per_call = 1000.0 / rotations
    return {"us": statistics.median(ms) * per_call, "min_us": min(ms) * per_call,
            "max_us": max(ms) * per_call, "replays": n, "rotations": rotations}


def time_graph(fn: Callable[..., Any], make_args: Callable[[int], Sequence[Any]],
               rotations: int, **kw: Any) -> float:
    """Median GPU time of one ``fn(*make_args(i))`` call in microseconds (module docstring)."""
    return graph_stats(fn, make_args, rotations, **kw)["us"]
