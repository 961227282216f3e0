"""Pass registry, pipeline specs and passes published by other packages."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from onnxpass.errors import UnknownPassError
from onnxpass.passes import base, parse_passes


def test_pipeline_expands_and_a_later_form_overrides_it() -> None:
    labels = [p.label for p in parse_passes("default,gelu=plugin")]
    assert "gelu=plugin" in labels and "gelu=std" not in labels
    assert labels.index("layernorm=std") < labels.index("gelu=plugin") < labels.index("dce")


def test_unknown_pass_suggests_the_nearest_name() -> None:
    with pytest.raises(UnknownPassError, match="did you mean 'layernorm'"):
        parse_passes("layernorn")


def test_entry_point_passes_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ext_swish_passes.py").write_text(textwrap.dedent('''
        from onnxpass.passes import PatternPass
        from onnxpass.patterns import Rule

        class SwishPass(PatternPass):
            name = "swish"
            summary = "x * Sigmoid(x) -> Swish"

            def rules(self):
                return [Rule(name="swish", pattern=lambda op, x: op.Mul(x, op.Sigmoid(x)),
                             rewrite=lambda op, m: op.HardSwish(m["x"]))]
    '''))
    dist = tmp_path / "ext_swish_passes-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ext-swish-passes\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[onnxpass.passes]\nswish = ext_swish_passes:SwishPass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(base, "_loaded_entry_points", False)
    try:
        assert [p.name for p in parse_passes("swish")] == ["swish"]
    finally:
        base._PASSES.pop("swish", None)
        sys.modules.pop("ext_swish_passes", None)
