"""User mistakes: each is one line ``onnxpass: error: <file or flag>: <problem>`` on stderr, exit
code 2, no traceback and nothing written; and stdout stays onnxpass's own (``--json`` parses)
whatever third-party code prints."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxpass.cli import main
from onnxpass.errors import OnnxpassError
from onnxpass.testing.golden import GoldenMismatch, check_golden

ROOT = Path(__file__).resolve().parent.parent
VIT = ROOT / "examples" / "vit_tiny.onnx"
GOLDENS = ROOT / "tests" / "goldens"


# ---- helpers ------------------------------------------------------------------------------------

def _small_model(producer: str = "onnxpass-test") -> onnx.ModelProto:
    """y = Relu(x @ w + bias): x float[batch,8], bias float[1,8]."""
    w = onnx.numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["hidden_value"], name="matmul_node"),
         helper.make_node("Add", ["hidden_value", "bias"], ["pre"], name="add_node"),
         helper.make_node("Relu", ["pre"], ["y"], name="relu_node")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                             producer_name=producer)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture
def small(work: Path) -> Path:
    p = work / "small.onnx"
    onnx.save(_small_model(), str(p))
    return p


@pytest.fixture
def small_ext(work: Path) -> Path:
    """The small model with its weight in an external data file."""
    p = work / "ext.onnx"
    onnx.save(_small_model(), str(p), save_as_external_data=True, location="ext.data",
              size_threshold=0)
    return p


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], root: Path, names: str,
           why: str = "") -> str:
    """main(argv) is a user mistake: exit 2, one stderr line naming ``names`` (and ``why``),
    nothing on stdout, no file under ``root`` written or changed."""
    before = _files(root)
    rc = main(argv)
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert rc == 2, (rc, cap.err)
    assert "Traceback" not in cap.err
    assert len(err.splitlines()) == 1 and err.startswith("onnxpass: error: "), err
    assert names in err and why in err, err
    assert cap.out == "", cap.out
    assert _files(root) == before, "a file was written"
    return err


# ---- --inputs .npz: checked against the model before anything runs ------------------------------

def _npz(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


X = np.zeros((2, 8), np.float32)
BIAS = np.zeros((1, 8), np.float32)
NPZ_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "unknown name": (lambda p: _npz(p, x=X, bias=BIAS, z=X), "'z' is not an input"),
    "missing name": (lambda p: _npz(p, x=X), "lacks input bias float[1,8]"),
    "wrong dtype": (lambda p: _npz(p, x=X.astype(np.int64), bias=BIAS),
                    "input 'x' is int64, the model expects float[batch,8]"),
    "wrong rank": (lambda p: _npz(p, x=X[..., None], bias=BIAS), "(rank 3)"),
    "wrong static dim": (lambda p: _npz(p, x=X, bias=np.zeros((1, 7), np.float32)),
                         "dim 1 must be 8"),
    "no arrays": (lambda p: _npz(p), "holds no arrays"),
    "empty file": (lambda p: p.write_bytes(b""), "is empty"),
    "not an npz": (lambda p: p.write_text("x,bias\n1,2\n"), "not an .npz"),
    "an npy": (lambda p: np.save(open(p, "wb"), X), "single array (.npy)"),
    "no such file": (lambda p: None, "no such file"),
}


def _npz_argv(command: str, model: Path, npz: Path) -> list[str]:
    if command == "run --verify":
        return ["run", str(model), "--verify", "--inputs", str(npz), "--passes", "layernorm",
                "-q"]
    if command == "compare":
        return ["compare", str(model), str(model), "--inputs", str(npz)]
    return ["debug", "precision", str(model), "--tol", "1e-2", "--inputs", str(npz)]


@pytest.mark.parametrize("command", ["run --verify", "compare", "debug precision"])
@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_bad_inputs_npz(case: str, command: str, small: Path, work: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    make, why = NPZ_CASES[case]
    npz = work / "inputs.npz"
    make(npz)
    _fails(_npz_argv(command, small, npz), capsys, work, "inputs.npz", why)


def test_inputs_without_verify(small: Path, work: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    npz = work / "inputs.npz"
    _npz(npz, x=X, bias=BIAS)
    _fails(["run", str(small), "--inputs", str(npz)], capsys, work, "--inputs", "--verify")


# ---- compare: models whose inputs differ --------------------------------------------------------

REF = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,8] x) => (float[N,8] y) { y = Relu (x) }"""
OTHER = {
    "name": ("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,8] z) => (float[N,8] y) { y = Relu (z) }""", "'z' only in"),
    "dtype": ("""<ir_version: 8, opset_import: ["" : 17]>
g (double[N,8] x) => (double[N,8] y) { y = Relu (x) }""", "x double[N,8] differs"),
    "rank": ("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,8,1] x) => (float[N,8,1] y) { y = Relu (x) }""", "x float[N,8,1] differs"),
    "static dim": ("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] y) { y = Relu (x) }""", "x float[N,4] differs"),
}


@pytest.mark.parametrize("case", list(OTHER))
def test_compare_models_with_different_inputs(case: str, work: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a, b = work / "a.onnx", work / "b.onnx"
    onnx.save(onnx.parser.parse_model(REF), str(a))
    text, why = OTHER[case]
    onnx.save(onnx.parser.parse_model(text), str(b))
    _fails(["compare", str(a), str(b)], capsys, work, "b.onnx", why)


# ---- plugins check ------------------------------------------------------------------------------

def test_plugins_check_without_cuda(small: Path, work: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails(["plugins", "check", str(small)], capsys, work, "--device cuda", "--device cpu")


def test_plugins_check_cpu_with_triton_interpret_off(small: Path, work: Path, capsys,  # type: ignore[no-untyped-def]
                                                     monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    _fails(["plugins", "check", str(small), "--device", "cpu"], capsys, work, "--device cpu",
           "TRITON_INTERPRET=0")


def test_plugins_check_cpu_after_triton_compiled(small: Path, work: Path, capsys,  # type: ignore[no-untyped-def]
                                                 monkeypatch) -> None:
    """In a process that imported Triton in compiler mode, --device cpu cannot switch it."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setitem(sys.modules, "triton.language", types.SimpleNamespace(sum=object()))
    _fails(["plugins", "check", str(small), "--device", "cpu"], capsys, work, "--device cpu",
           "new process")


def _layernorm_model(path: Path, external: bool) -> Path:
    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=-1,
                          epsilon=1e-5, name="ln")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 64])],
        [onnx.numpy_helper.from_array(rng.random(64).astype(np.float32) + 0.5, "scale"),
         onnx.numpy_helper.from_array(rng.random(64).astype(np.float32), "bias")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save(m, str(path), save_as_external_data=True, location=path.name + ".data",
                  size_threshold=0)
    else:
        onnx.save(m, str(path))
    return path


def test_plugins_check_cpu_sets_triton_interpret_and_reads_external_data(work: Path) -> None:
    """--device cpu without TRITON_INTERPRET in the environment, --original and MODEL with
    external data; stdout is the JSON and nothing else."""
    pytest.importorskip("triton", reason="the plugin kernels are written in Triton")
    original = _layernorm_model(work / "ln.onnx", external=True)
    plugin = work / "ln_plugin.onnx"
    assert main(["run", str(original), "--passes", "layernorm=plugin", "-o", str(plugin),
                 "-q"]) == 0
    m = onnx.load(str(plugin))
    onnx.save(m, str(plugin), save_as_external_data=True, location="ln_plugin.data",
              size_threshold=0)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-m", "onnxpass.cli", "plugins", "check", str(plugin),
                        "--original", str(original), "--device", "cpu", "--json"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert r["ok"] and [how for _, _, how in r["ran"]] == ["triton"]


# ---- files that cannot be read, corrupt files ---------------------------------------------------

def _deny_open(monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    """open() of ``denied`` fails as for a file without read permission (root reads anything,
    so chmod cannot simulate this when the tests run as root)."""
    real_open = builtins.open
    target = os.path.realpath(denied)

    def fake_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) == target:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)


def test_unreadable_model(small: Path, work: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _deny_open(monkeypatch, small)
    _fails(["run", str(small), "-q"], capsys, work, "small.onnx", "ermission denied")


def test_unreadable_external_data(small_ext: Path, work: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _deny_open(monkeypatch, work / "ext.data")
    _fails(["run", str(small_ext), "-q"], capsys, work, "ext.onnx", "ermission denied")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files without read permission (see the monkeypatched "
                           "tests above)")
@pytest.mark.parametrize("which", ["model", "external data"])
def test_chmod_000(which: str, small_ext: Path, work: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    target = small_ext if which == "model" else work / "ext.data"
    target.chmod(0)
    try:
        _fails(["run", str(small_ext), "-q"], capsys, work, "ext.onnx", "ermission denied")
    finally:
        target.chmod(0o644)


@pytest.mark.parametrize("word", [b"relu_node", b"hidden_value", b"onnxpass-test",
                                  b"flipped.data"])
def test_byte_flipped_model(word: bytes, work: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A flipped byte in a name (node, value, producer, external data location) makes it
    invalid UTF-8, which protobuf only notices when the string is used: one line at load, not a
    UnicodeDecodeError (or a TypeError on a bytes path) later."""
    p = work / "flipped.onnx"
    onnx.save(_small_model(), str(p), save_as_external_data=True, location="flipped.data",
              size_threshold=0)
    data = bytearray(p.read_bytes())
    data[data.index(word)] ^= 0x80
    p.write_bytes(bytes(data))
    _fails(["run", str(p), "-q", "--verify"], capsys, work, "flipped.onnx", "UTF-8")


def test_debug_precision_on_external_data(small_ext: Path, work: Path, capsys,  # type: ignore[no-untyped-def]
                                          monkeypatch) -> None:
    monkeypatch.chdir(work.parent)  # the data is found beside the model, not in the cwd
    assert main(["debug", "precision", str(small_ext.relative_to(work.parent)), "--tol", "1e-2",
                 "--json"]) == 0
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert r["ok"] and Path(r["output"]).exists() and "Traceback" not in cap.err


# ---- --json: stdout is onnxpass's own -----------------------------------------------------------

def _noisy_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime sessions that print to stdout, from Python and from C (file descriptor 1)."""
    import onnxpass.verify as verify

    real = verify.session

    def noisy(model):  # type: ignore[no-untyped-def]
        print("[W] a warning printed by a library")
        sys.stdout.flush()
        os.write(1, b"[W] a warning written to fd 1 by C code\n")
        return real(model)

    monkeypatch.setattr(verify, "session", noisy)


@pytest.mark.parametrize("command", ["run --verify", "compare", "debug precision"])
def test_json_parses_when_libraries_print(command: str, small: Path, work: Path, capfd,  # type: ignore[no-untyped-def]
                                          monkeypatch) -> None:
    _noisy_session(monkeypatch)
    npz = work / "inputs.npz"
    _npz(npz, x=X, bias=BIAS)
    assert main([*_npz_argv(command, small, npz), "--json"]) == 0
    cap = capfd.readouterr()
    json.loads(cap.out)
    assert "[W]" not in cap.out and cap.err.count("[W]") >= 2


def test_json_parses_with_graphsurgeon_warnings_bf16(tmp_path: Path, capfd) -> None:  # type: ignore[no-untyped-def]
    """GraphSurgeon folding a bfloat16 graph warns on stdout; --verify of a bfloat16 output
    runs (simulated: ONNX Runtime's CPU provider has no bfloat16) at bfloat16's tolerance."""
    out = tmp_path / "bf16.onnx"
    assert main(["run", str(VIT), "--passes", "default,bf16", "-o", str(out), "--verify",
                 "--json"]) == 0
    cap = capfd.readouterr()
    summary = json.loads(cap.out)
    assert summary["verify"] and all(line.endswith("ok") for line in summary["verify"])
    assert out.exists()


# ---- --verify: tolerance by precision, shapes, removal ------------------------------------------

def test_verify_float16_default_tolerance_keeps_a_correct_output(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "fp16.onnx"
    assert main(["run", str(VIT), "--passes", "default,fp16", "-o", str(out), "--verify",
                 "-q"]) == 0
    assert out.exists() and "ok" in capsys.readouterr().out


def test_verify_explicit_tolerance_overrides_and_removes_the_output(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "fp16.onnx"
    assert main(["run", str(VIT), "--passes", "default,fp16", "-o", str(out), "--verify", "-q",
                 "--rtol", "1e-6", "--atol", "1e-7"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("onnxpass: error: ") and "rtol=1e-06 atol=1e-07" in err[-1]
    assert "output removed" in err[-1] and sorted(p.name for p in tmp_path.iterdir()) == []


def test_verify_error_removes_the_output(small: Path, work: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import onnxpass.verify as verify

    real = verify.run

    def failing(model, feeds):  # type: ignore[no-untyped-def]
        if str(model).endswith("out.onnx"):
            raise OnnxpassError(f"{model}: ONNX Runtime cannot run it: test")
        return real(model, feeds)

    monkeypatch.setattr(verify, "run", failing)
    _fails(["run", str(small), "-o", str(work / "out.onnx"), "--verify", "-q"], capsys, work,
           "out.onnx", "cannot run")


def test_help_shows_defaults(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "1e-4 for float32, 1e-2 for float16" in text and "(default: 0)" in text
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "(default: 1e-3)" in " ".join(capsys.readouterr().out.split())


def test_shape_change_is_named(work: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a, b = work / "a.onnx", work / "b.onnx"
    onnx.save(onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] y) { y = Relu (x) }"""), str(a))
    onnx.save(onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3,1] y) <int64[1] ax = {2}> { r = Relu (x)
 y = Unsqueeze (r, ax) }"""), str(b))
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "y: shape (2,3) != (2,3,1); MISMATCH" in out and "nan" not in out
    assert main(["compare", str(a), str(b), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["outputs"][0]["problem"] == \
        "shape (2,3) != (2,3,1)"


# ---- flags ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["", " , ", ","])
def test_empty_passes(spec: str, small: Path, work: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    _fails(["run", str(small), "--passes", spec], capsys, work, "--passes", "names no pass")


@pytest.mark.parametrize("command", ["run", "run --verify", "compare", "debug precision"])
def test_unknown_dim_name(command: str, small: Path, work: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    argv = {"run": ["run", str(small), "-q"],
            "run --verify": ["run", str(small), "--verify", "-q"],
            "compare": ["compare", str(small), str(small)],
            "debug precision": ["debug", "precision", str(small), "--tol", "1e-2"]}[command]
    _fails([*argv, "--dim", "bach=4"], capsys, work, "--dim bach=4", "symbolic dims: batch")


def test_dump_dir_is_a_file(small: Path, work: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    blocker = work / "dump"
    blocker.write_text("not a folder")
    _fails(["run", str(VIT), "-o", str(work / "out.onnx"), "--passes", "layernorm",
            "--dump-dir", str(blocker)], capsys, work, "--dump-dir", "not a folder")


# ---- pytest --update-goldens ---------------------------------------------------------------

def _golden_source(path: Path) -> str:
    text = path.read_text()
    return text[:text.index("\n# expected:") + 1]


def test_update_goldens_keeps_a_negative_case_negative(tmp_path: Path) -> None:
    positive = GOLDENS / "gelu" / "erf_std.golden"
    check_golden(positive)  # it does rewrite
    case = tmp_path / "now_negative.golden"
    case.write_text(_golden_source(positive) + "# expected: unchanged\n")
    before = case.read_text()
    with pytest.raises(GoldenMismatch, match="does not turn it into a positive case"):
        check_golden(case, update=True)
    assert case.read_text() == before


def test_update_goldens_keeps_a_positive_case_positive(tmp_path: Path) -> None:
    negative = next(p for p in sorted((GOLDENS / "gelu").glob("neg_*.golden"))
                    if "unchanged" in p.read_text())
    check_golden(negative)  # it is left alone
    case = tmp_path / "now_positive.golden"
    case.write_text(_golden_source(negative) + "# expected:\n<ir_version: 8>\n")
    before = case.read_text()
    with pytest.raises(GoldenMismatch, match="does not turn it into a negative case"):
        check_golden(case, update=True)
    assert case.read_text() == before


def test_console_script_one_line_for_a_corrupt_model(tmp_path: Path) -> None:
    data = bytearray(_small_model().SerializeToString())
    data[data.index(b"relu_node")] ^= 0x80
    p = tmp_path / "flipped.onnx"
    p.write_bytes(bytes(data))
    exe = shutil.which("onnxpass")
    cmd = [exe] if exe else [sys.executable, "-m", "onnxpass.cli"]
    r = subprocess.run([*cmd, "run", str(p), "--json"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stdout == "" and sorted(x.name for x in tmp_path.iterdir()) == ["flipped.onnx"]
