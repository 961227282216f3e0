"""The CLI as a user meets it: the main job, its outputs, and one-line errors on bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnxpass.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "vit_tiny.onnx"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    p = tmp_path / "vit.onnx"
    shutil.copy(EXAMPLE, p)
    return p


def _fused(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node
            if n.op_type in ("LayerNormalization", "Gelu", "LayerNormPlugin", "GeluPlugin")]


def test_run_fuses_verifies_and_leaves_the_input_alone(model: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    before = model.read_bytes()
    assert main(["run", "--passes", "layernorm,gelu", str(model), "--verify", "-q"]) == 0
    out = model.with_name("vit.onnxpass.onnx")  # default output: beside the input, new name
    assert model.read_bytes() == before
    assert _fused(out).count("LayerNormalization") == 5 and _fused(out).count("Gelu") == 2
    onnx.checker.check_model(str(out))
    text = capsys.readouterr().out
    assert "layernorm=std" in text and "verify last_hidden_state" in text and text.count("ok")


def test_run_plugin_form_json_summary(model: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "o" / "p.onnx"
    assert main(["run", "--passes", "layernorm=plugin,gelu=plugin", str(model), "-o", str(out),
                 "--json", "--verify"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # the runner ran the canonical pass before the first pattern pass
    assert [p["name"] for p in summary["passes"]] == ["canonical", "layernorm=plugin",
                                                      "gelu=plugin"]
    assert [p["matches"] for p in summary["passes"]][1:] == [5, 2]
    assert all(line.endswith("ok") for line in summary["verify"])
    assert sorted(set(_fused(out))) == ["GeluPlugin", "LayerNormPlugin"]


def test_dump_dir_has_the_graph_after_each_pass(model: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    assert main(["run", "--passes", "layernorm,gelu", str(model), "-o", str(tmp_path / "o.onnx"),
                 "--dump-dir", str(dump), "-q"]) == 0
    assert sorted(p.name for p in dump.iterdir()) == ["01_layernorm.onnx", "02_gelu.onnx"]


def test_list_and_match_explain(model: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "layernorm" in listing and "std*" in listing and "pipeline default:" in listing
    assert main(["match", "--passes", "layernorm", str(model), "--explain", "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # one line per LayerNorm (not one per root inside it), its 9 ops
    assert sum("layernorm: 9 ops ending at Add" in ln for ln in lines) == 5
    misses = [ln for ln in lines if "stopped after" in ln]
    assert len(misses) == 3 and all("expected" in ln for ln in misses)
    depth = [int(ln.split("stopped after ")[1].split("/")[0]) for ln in misses]
    assert depth == sorted(depth, reverse=True)  # furthest first
    assert any(ln.startswith("layernorm=std/layernorm: 5 match(es), ") and "furthest miss" in ln
               for ln in lines)
    assert main(["match", "--passes", "layernorm", str(model), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["matches"]) == 5 and len(report["matches"][0]["nodes"]) == 9
    assert any(n.endswith("ReduceMean") for n in report["matches"][0]["nodes"])


def _bad(args: list[str], capsys) -> str:  # type: ignore[no-untyped-def]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("onnxpass: error:")
    return err


def test_bad_inputs_get_one_line_and_exit_2(tmp_path: Path, model: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "never.onnx"
    assert "no such file" in _bad(["run", str(tmp_path / "missing.onnx"), "-o", str(out)], capsys)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    assert "notes.onnx" in _bad(["run", str(text), "-o", str(out)], capsys)
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(model.read_bytes()[:5000])
    assert "cut.onnx" in _bad(["run", str(truncated), "-o", str(out)], capsys)
    invalid = tmp_path / "invalid.onnx"
    m = onnx.load(str(model))
    m.graph.node[3].input[0] = "no_such_value"
    onnx.save(m, str(invalid))
    assert "invalid ONNX graph" in _bad(["run", str(invalid), "-o", str(out)], capsys)
    assert "did you mean 'layernorm'" in _bad(["run", "--passes", "layernrom", str(model)], capsys)
    assert "no form 'fast'" in _bad(["run", "--passes", "gelu=fast", str(model)], capsys)
    assert "overwrite the input" in _bad(["run", str(model), "-o", str(model)], capsys)
    assert "is a directory" in _bad(["run", str(model), "-o", str(tmp_path)], capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot write" in _bad(["run", str(model), "-o", str(blocker / "x.onnx")], capsys)
    assert not out.exists() and not model.with_name("vit.onnxpass.onnx").exists()


def test_missing_external_data(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    m = onnx.load(str(EXAMPLE))
    p = tmp_path / "ext.onnx"
    onnx.save(m, str(p), save_as_external_data=True, location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    assert "external data file 'ext.data'" in _bad(["run", str(p)], capsys)


def test_console_script_runs(model: Path, tmp_path: Path) -> None:
    exe = shutil.which("onnxpass")
    cmd = [exe] if exe else [sys.executable, "-m", "onnxpass.cli"]
    r = subprocess.run([*cmd, "run", "--passes", "nope", str(model)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
