"""Files onnxpass must not read or write: external data confined to the model's folder, the input
and every file it reads never written, outputs replaced atomically as a (model, data) pair."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpass.cli import _remove_output, main
from onnxpass.errors import ModelLoadError
from onnxpass.modelio import load_model

N = 2048  # over 1024 elements: the weight goes external
PASSES = "layernorm"  # matches nothing here: the run only loads and saves
ROOT = Path(__file__).resolve().parent.parent


def _model(w: np.ndarray) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"], name="add")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(N).astype(np.float32)


def _saved(path: Path, seed: int = 0, location: str | None = None) -> Path:
    """A model whose weight is external, in ``location`` (default ``NAME.data``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(_model(_weights(seed)), str(path), save_as_external_data=True,
              location=location or path.name + ".data", size_threshold=1024)
    return path


def _pointing_at(path: Path, location: str, offset: int | None = None,
                 length: int | None = None) -> Path:
    """A model whose weight's external data entry is written by hand (onnx.save would refuse)."""
    m = _model(_weights(0))
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    if offset is not None:
        t.external_data.add(key="offset", value=str(offset))
    if length is not None:
        t.external_data.add(key="length", value=str(length))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(m.SerializeToString())
    return path


def _snapshot(*folders: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under ``folders``: its mode and, for regular files, its bytes."""
    snap = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            st = os.lstat(p)
            snap[str(p)] = (st.st_mode, p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
    return snap


def _refused(args: list[str], capsys: pytest.CaptureFixture[str], *watched: Path) -> str:
    """Run the CLI expecting one error line and exit 2, with nothing under ``watched`` changed."""
    before = _snapshot(*watched)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("onnxpass: error:"), err
    assert "Traceback" not in err
    assert _snapshot(*watched) == before
    return err


def _run(src: Path, out: Path) -> None:
    assert main(["run", str(src), "-o", str(out), "--passes", PASSES, "-q"]) == 0


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, {"x": x})[0])


# ---- external data stays inside the model's folder ----------------------------------------------

@pytest.mark.parametrize("where", ["traversal", "absolute", "etc_passwd", "proc", "symlink_out",
                                   "symlink_in", "dir_symlink_out", "fifo", "directory"])
def test_external_data_outside_the_folder_is_refused(where: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(_weights(1).tobytes())
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    location, expect = {
        "traversal": ("../../secret.txt", "outside the model's folder"),
        "absolute": (str(secret), "absolute path"),
        "etc_passwd": ("/etc/passwd", "absolute path"),
        "proc": ("/proc/version", "absolute path"),
        "symlink_out": ("link.data", "outside the model's folder"),
        "symlink_in": ("link.data", "symbolic link"),  # onnx.load refuses these too
        "dir_symlink_out": ("sub/secret.txt", "outside the model's folder"),
        "fifo": ("pipe.data", "not a regular file"),
        "directory": ("sub", "not a regular file"),
    }[where]
    if where == "symlink_out":
        (folder / "link.data").symlink_to(secret)
    elif where == "symlink_in":
        (folder / "real.data").write_bytes(_weights(1).tobytes())
        (folder / "link.data").symlink_to("real.data")
    elif where == "dir_symlink_out":
        (folder / "sub").symlink_to(tmp_path)
    elif where == "fifo":
        os.mkfifo(folder / "pipe.data")
    elif where == "directory":
        (folder / "sub").mkdir()
    src = _pointing_at(folder / "m.onnx", location)
    out = tmp_path / "out" / "o.onnx"
    err = _refused(["run", str(src), "-o", str(out), "--passes", PASSES], capsys, tmp_path)
    assert str(src) in err and expect in err and "'w'" in err
    assert not out.parent.exists()
    err = _refused(["run", str(src), "--passes", PASSES], capsys, tmp_path)  # default -o
    assert expect in err
    with pytest.raises(ModelLoadError, match="m.onnx"):
        load_model(src)


@pytest.mark.parametrize("case", ["truncated", "offset_past_end", "length_past_end",
                                  "length_not_the_tensor_size", "negative_offset"])
def test_external_data_out_of_bounds_is_refused(case: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    raw = _weights(0).tobytes()
    data = tmp_path / "m.data"
    data.write_bytes(raw[:1000] if case == "truncated" else raw)
    offset, length, expect = {
        "truncated": (None, None, "truncated"),
        "offset_past_end": (len(raw) + 4096, None, "past the end"),
        "length_past_end": (4096, len(raw), "truncated"),
        "length_not_the_tensor_size": (0, 1024, "takes 8192 bytes"),
        "negative_offset": (-4, None, "negative"),
    }[case]
    src = _pointing_at(tmp_path / "m.onnx", "m.data", offset, length)
    out = tmp_path / "o.onnx"
    err = _refused(["run", str(src), "-o", str(out), "--passes", PASSES], capsys, tmp_path)
    assert str(src) in err and expect in err
    assert not out.exists()


def test_external_data_in_a_subfolder_and_with_offsets_loads(tmp_path: Path) -> None:
    raw = _weights(3).tobytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(b"\0" * 4096 + raw)
    src = _pointing_at(tmp_path / "m.onnx", "sub/w.bin", 4096, len(raw))
    out = tmp_path / "o.onnx"
    _run(src, out)
    x = np.ones(N, np.float32)
    np.testing.assert_array_equal(_ort(out, x), x + _weights(3))


# ---- the input and the files it reads are never written -----------------------------------------

def test_output_onto_the_input_or_its_data_is_refused(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = _saved(tmp_path / "m.onnx")
    data = tmp_path / "m.onnx.data"
    run = ["run", str(src), "--passes", PASSES, "-o"]
    assert "overwrite the input model" in _refused([*run, str(src)], capsys, tmp_path)
    err = _refused([*run, str(data)], capsys, tmp_path)
    assert "overwrite m.onnx.data, a file the input model reads" in err
    (tmp_path / "link.onnx").symlink_to(src)
    assert "overwrite the input model" in _refused([*run, str(tmp_path / "link.onnx")], capsys,
                                                   tmp_path)
    os.link(data, tmp_path / "hard.data")
    assert "a file the input model reads" in _refused([*run, str(tmp_path / "hard.data")],
                                                      capsys, tmp_path)


def test_output_whose_data_name_is_the_inputs_data_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a.onnx keeps its weights in b.onnx.data: `-o b.onnx` would write its data over them.
    src = _saved(tmp_path / "a.onnx", location="b.onnx.data")
    err = _refused(["run", str(src), "--passes", PASSES, "-o", str(tmp_path / "b.onnx")],
                   capsys, tmp_path)
    assert "data file would be b.onnx.data, a file the input model reads" in err


@pytest.mark.parametrize("kind", ["fifo", "char_device", "symlink_to_device", "directory"])
def test_output_must_be_a_regular_file_or_absent(kind: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = _saved(tmp_path / "in" / "m.onnx")
    out = tmp_path / "o.onnx"
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "char_device":
        out = Path("/dev/null")
    elif kind == "symlink_to_device":
        out.symlink_to("/dev/null")
    else:
        out.mkdir()
    err = _refused(["run", str(src), "--passes", PASSES, "-o", str(out)], capsys, tmp_path)
    assert ("is a directory" if kind == "directory" else "not a regular file") in err
    assert Path("/dev/null").is_char_device()


def test_debug_precision_output_onto_the_input_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _saved(tmp_path / "m.onnx")
    debug = ["debug", "precision", str(src), "--tol", "0.1", "-o"]
    assert "overwrite the input model" in _refused([*debug, str(src)], capsys, tmp_path)
    assert "a file the input model reads" in _refused([*debug, str(tmp_path / "m.onnx.data")],
                                                      capsys, tmp_path)
    assert "not a regular file" in _refused([*debug, "/dev/null"], capsys, tmp_path)


# ---- outputs are replaced atomically, as a pair -------------------------------------------------

def test_rewriting_an_output_replaces_the_pair_and_removes_the_old_data(tmp_path: Path) -> None:
    out = tmp_path / "out" / "o.onnx"
    x = np.ones(N, np.float32)
    for seed in (1, 2, 3):
        _run(_saved(tmp_path / f"in{seed}" / "m.onnx", seed), out)
        np.testing.assert_array_equal(_ort(out, x), x + _weights(seed))
        files = sorted(p.name for p in out.parent.iterdir())
        assert len(files) == 2 and files[0] == "o.onnx", files  # one model, one data file
        data = onnx.load(str(out), load_external_data=False).graph.initializer[0].external_data
        assert {e.key: e.value for e in data}["location"] == files[1]
    _remove_output(out)
    assert list(out.parent.iterdir()) == []


def test_removing_an_output_keeps_data_its_input_reads(tmp_path: Path) -> None:
    # The input reads a file named like one of the output's own data files.
    src = _saved(tmp_path / "copy.onnx", location="o.onnx.0123abcd.data")
    before = _snapshot(tmp_path)
    out = tmp_path / "o.onnx"
    _run(src, out)
    _remove_output(out)  # what a failed --verify does
    assert _snapshot(tmp_path) == before


def test_a_small_output_over_an_external_one_leaves_no_data(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    _run(_saved(tmp_path / "in" / "m.onnx"), out)
    small = tmp_path / "small.onnx"
    onnx.save(_model(_weights(5)), str(small))  # weights inline: the output has no data file
    _run(small, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "o.onnx", "small.onnx"]


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from onnxpass import modelio
    from onnxpass.cli import main

    point = sys.argv[1]
    calls = []
    real_replace, real_remove = os.replace, modelio._remove_data_files

    def replace(a, b):
        calls.append(b)
        if (point == "before_data_rename" and len(calls) == 1) or \\
           (point == "between_renames" and len(calls) == 2):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(a, b)

    def remove(*args, **kw):
        if point == "before_old_data_removed":
            os.kill(os.getpid(), signal.SIGKILL)
        real_remove(*args, **kw)

    os.replace, modelio._remove_data_files = replace, remove
    main(sys.argv[2:])
""")


@pytest.mark.parametrize("point", ["before_data_rename", "between_renames",
                                   "before_old_data_removed"])
def test_a_kill_leaves_the_old_pair_or_the_new_one(point: str, tmp_path: Path) -> None:
    old_src, new_src = _saved(tmp_path / "a" / "m.onnx", 1), _saved(tmp_path / "b" / "m.onnx", 2)
    out = tmp_path / "out" / "o.onnx"
    _run(old_src, out)
    r = subprocess.run([sys.executable, "-c", _KILLER, point, "run", str(new_src), "-o", str(out),
                        "--passes", PASSES, "-q"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    x = np.ones(N, np.float32)
    expected = _weights(2 if point == "before_old_data_removed" else 1)
    np.testing.assert_array_equal(_ort(out, x), x + expected)  # loads, and one pair's numbers
    left = [p.name for p in out.parent.iterdir()]
    if point != "before_old_data_removed":
        assert any("onnxpass-tmp" in n for n in left), left  # the killed run's temp file
    _run(new_src, out)  # the next write cleans up after the killed one
    np.testing.assert_array_equal(_ort(out, x), x + _weights(2))
    assert len(list(out.parent.iterdir())) == 2


def test_an_error_between_the_renames_leaves_the_old_pair(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o.onnx"
    _run(_saved(tmp_path / "a" / "m.onnx", 1), out)
    before = _snapshot(tmp_path)
    real, calls = os.replace, []

    def replace(a: str, b: str) -> None:
        calls.append(b)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    assert main(["run", str(_saved(tmp_path / "b" / "m.onnx", 2)), "-o", str(out), "--passes",
                 PASSES, "-q"]) == 2
    monkeypatch.undo()
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if "/b" not in k} == before  # no new file kept
    x = np.ones(N, np.float32)
    np.testing.assert_array_equal(_ort(out, x), x + _weights(1))


def test_stale_temp_files_of_dead_runs_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    out = tmp_path / "o.onnx"
    stale = [tmp_path / f".o.onnx.onnxpass-tmp-{pid}-0123abcd",
             tmp_path / f".o.onnx.onnxpass-tmp-{pid}-0123abcd.data"]
    live = tmp_path / ".o.onnx.onnxpass-tmp-1-89abcdef"  # pid 1 is alive: not ours to remove
    other = tmp_path / f".x.onnx.onnxpass-tmp-{pid}-0123abcd"  # another output's
    for p in [*stale, live, other]:
        p.write_bytes(b"partial")
    _run(_saved(tmp_path / "in" / "m.onnx"), out)
    assert not any(p.exists() for p in stale) and live.exists() and other.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_mode_umask_gives(umask: int, tmp_path: Path) -> None:
    src = _saved(tmp_path / "in" / "m.onnx")
    out = tmp_path / "o.onnx"
    old = os.umask(umask)
    try:
        _run(src, out)
    finally:
        os.umask(old)
    for p in (out, *tmp_path.glob("o.onnx*.data")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p
