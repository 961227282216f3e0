"""bench/plugins.py's config sweep, without a GPU: which launches it times."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("triton", reason="the plugin kernels are written in Triton")


def test_sweep_times_each_distinct_launch_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """L2Norm's CONFIGS at MST++ b20 (rows of 16384, the rows kernel): the split and block
    keywords do not change that launch, so those configs are marked as the same launch as
    an earlier one, not timed again, and the best config is one that was timed."""
    from bench import plugins as bp
    from onnxpass.plugins import get_plugin

    timed: list[dict[str, Any]] = []

    def fake_time(c: dict[str, Any], name: str, fn: Any, make: Any, rotations: int) -> None:
        timed.append(c["config"])
        c[name + "_us"] = 10.0 - len(timed) % 3  # any order: the best is among the timed

    monkeypatch.setattr(bp, "_time", fake_time)
    values = get_plugin("L2NormPlugin").attr_values({"eps": 1e-12, "mode": 2})
    g: dict[str, Any] = {}
    bp.sweep_configs(g, "L2NormPlugin", ([[20, 1, 31, 16384]], ["float16"], values),
                     lambda i: None, 1)
    configs = bp.kernel_configs("L2NormPlugin")
    same = [c for c in g["configs"] if "same_as" in c]
    assert len(g["configs"]) == len(configs) == len(timed) + len(same)
    assert same and all(c["same_as"] in timed for c in same)
    assert {"split": 4, "block_n": 8192, "num_warps": 32} in [c["config"] for c in same]
    assert g["best_config"]["config"] in timed
    # at MST++ b1 (31 rows of 246784, the looped kernel) every split is its own launch
    timed.clear()
    g = {}
    bp.sweep_configs(g, "L2NormPlugin", ([[1, 1, 31, 246784]], ["float16"], values),
                     lambda i: None, 1)
    assert {"split": 4, "block_n": 8192, "num_warps": 32} in timed
    assert {"split": 8, "block_n": 8192, "num_warps": 32} in timed
