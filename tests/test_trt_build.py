"""onnxpass build / bench: everything that runs without TensorRT, and one test that needs it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from onnxpass import cli
from onnxpass.errors import OnnxpassError
from onnxpass.trt_build import bench as tb, build as tbuild
from tests.helpers import tensorrt_missing

ROOT = Path(__file__).resolve().parents[1]


TRT_MISSING = tensorrt_missing()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x [batch, 3, 8] float, fixed 3 and 8; y = Relu(x) + 1."""
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "one"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 8])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    path = tmp_path_factory.mktemp("trt") / "tiny.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              path)
    return path


def test_parse_size_and_pools() -> None:
    assert tbuild.parse_size("4G") == 4 << 30
    assert tbuild.parse_size("512m") == 512 << 20
    assert tbuild.parse_size("48KiB") == 48 << 10
    assert tbuild.parse_size("1000") == 1000
    assert tbuild.parse_pools(["tactic_shared_memory=48K"]) == {"TACTIC_SHARED_MEMORY": 48 << 10}
    for bad in ("4T", "x", "-1G"):
        with pytest.raises(OnnxpassError, match="expected N"):
            tbuild.parse_size(bad)
    with pytest.raises(OnnxpassError, match="POOL=SIZE"):
        tbuild.parse_pools(["WORKSPACE"])


def test_parse_shapes() -> None:
    assert tbuild.parse_shapes(["x:1x3x8,4x3x8,16x3x8", "ids:2x7"]) == [
        ("x", (1, 3, 8), (4, 3, 8), (16, 3, 8)), ("ids", (2, 7), (2, 7), (2, 7))]
    assert tbuild.parse_shapes(["encoder:input:1x2"]) == [("encoder:input", (1, 2), (1, 2), (1, 2))]
    for bad, msg in [("x", "NAME:MIN,OPT,MAX"), ("x:1x3,2x3", "one shape or three"),
                     ("x:1x3,2x3,4", "differ in rank"), ("x:4x3,2x3,8x3", "min <= opt <= max"),
                     ("x:1by3", "dims joined by x")]:
        with pytest.raises(OnnxpassError, match=msg):
            tbuild.parse_shapes([bad])
    with pytest.raises(OnnxpassError, match="given twice"):
        tbuild.parse_shapes(["x:1", "x:2"])


def test_profile_checked_against_the_model(tiny: Path) -> None:
    model = onnx.load(tiny)
    assert tbuild.profile_for(model, ["x:1x3x8,4x3x8,16x3x8"]) == [
        ("x", (1, 3, 8), (4, 3, 8), (16, 3, 8))]
    cases = [(["y:1x3x8"], "model has no input 'y'; inputs: x"),
             (["x:1x3"], r"input 'x' has rank 3 \[batch, 3, 8\], got rank 2"),
             (["x:1x4x8,2x4x8,4x4x8"], r"input 'x' dim 1 is fixed at 3"),
             ([], r"input 'x' \[batch, 3, 8\] has dynamic dims: give --shapes x:MIN,OPT,MAX")]
    for shapes, msg in cases:
        with pytest.raises(OnnxpassError, match=msg) as e:
            tbuild.profile_for(model, shapes)
        assert "\n" not in str(e.value)


def test_precision_plans() -> None:
    plan = tbuild.precision_plan
    assert plan("fp32", 10).clear_flags == ["TF32"] and not plan("fp32", 10).strongly_typed
    assert plan("tf32", 10).set_flags == ["TF32"]
    assert (plan("fp16", 10).set_flags, plan("fp16", 10).graph_pass) == (["FP16"], None)
    assert plan("bf16", 10).set_flags == ["BF16"]
    assert plan("int8", 10).set_flags == ["INT8"] and plan("int8", 10).needs_qdq
    fp8 = plan("fp8", 10)
    assert fp8.strongly_typed and fp8.needs_qdq and fp8.set_flags == []
    for p in ("fp16", "bf16", "int8", "fp8"):  # TensorRT 11: no precision flags at all
        p11 = plan(p, 11)
        assert p11.strongly_typed and p11.set_flags == []
    assert plan("fp16", 11).graph_pass == "fp16" and plan("bf16", 11).graph_pass == "bf16"
    assert plan("fp16", 10, strongly_typed=True).graph_pass == "fp16"
    assert plan("int8", 11).needs_qdq and plan("int8", 11).graph_pass is None
    with pytest.raises(OnnxpassError, match="expected one of"):
        plan("int4", 10)


def test_graph_pass_by_name_from_the_registry() -> None:
    from onnxpass.passes.base import registry

    if "fp16" in registry():
        assert tbuild._graph_pass_spec(tbuild.precision_plan("fp16", 11), "default") == \
            "default,fp16"
    assert tbuild._graph_pass_spec(tbuild.precision_plan("bf16", 11), None) == "bf16"
    assert tbuild._graph_pass_spec(tbuild.precision_plan("fp16", 10), "layernorm") == "layernorm"


def test_build_record_is_complete_json(tiny: Path) -> None:
    opts = tbuild.BuildOptions(precision="fp16", shapes=["x:1x3x8,4x3x8,16x3x8"],
                               workspace=1 << 30, timing_cache="t.cache", opt_level=5)
    rec = tbuild.build_record(
        model=str(tiny), model_sha256=tbuild.sha256_file(tiny), engine="tiny.plan", options=opts,
        plan=tbuild.precision_plan("fp16", 11), versions=tbuild.versions("11.0.0"),
        profile=tbuild.parse_shapes(opts.shapes), passes_run=["fp16=mixed"], plugins=[],
        built_onnx="tiny.plan.onnx", seconds=1.23456, gpu="H100")
    back = json.loads(json.dumps(rec))
    assert back["model"]["sha256"] == __import__("hashlib").sha256(tiny.read_bytes()).hexdigest()
    assert back["options"]["workspace"] == 1 << 30 and back["options"]["opt_level"] == 5
    assert back["precision"] == {"requested": "fp16", "strongly_typed": True, "set_flags": [],
                                 "clear_flags": ["TF32"], "graph_pass": "fp16", "needs_qdq": False}
    assert back["profile"] == [{"input": "x", "min": [1, 3, 8], "opt": [4, 3, 8],
                                "max": [16, 3, 8]}]
    assert back["versions"]["tensorrt"] == "11.0.0" and "onnx" in back["versions"]
    assert back["built_from"] == "tiny.plan.onnx" and back["build_seconds"] == 1.235
    assert tbuild.record_path("a/m.plan") == Path("a/m.plan.json")


def test_cli_options() -> None:
    args = cli._parser().parse_args(
        ["build", "m.onnx", "-o", "m.plan", "--precision", "bf16", "--shapes", "x:1x3,2x3,4x3",
         "--workspace", "2G", "--pool", "TACTIC_SHARED_MEMORY=48K", "--timing-cache", "c.bin",
         "--opt-level", "4", "--passes", "default", "--jit"])
    o = tbuild.options_from_args(args)
    assert (o.precision, o.workspace, o.pools, o.timing_cache, o.opt_level, o.passes, o.aot) == \
        ("bf16", 2 << 30, {"TACTIC_SHARED_MEMORY": 48 << 10}, "c.bin", 4, "default", False)
    bad = cli._parser().parse_args(["build", "m.onnx", "--opt-level", "9"])
    with pytest.raises(OnnxpassError, match="expected 0 to 5"):
        tbuild.options_from_args(bad)
    bad = cli._parser().parse_args(["build", "m.onnx", "--passes", "nosuchpass"])
    with pytest.raises(OnnxpassError, match="unknown pass"):
        tbuild.options_from_args(bad)


def test_calibration_options() -> None:
    """int8/fp8 of a float graph: --calibration reaches the quantize pass; on another precision
    it is a mistake, said before TensorRT is even imported."""
    args = cli._parser().parse_args(["build", "m.onnx", "--precision", "fp8", "--calibration",
                                     "photos", "--calibration-method", "entropy"])
    o = tbuild.options_from_args(args)
    assert (o.calibration, o.calibration_method) == ("photos", "entropy")
    bad = cli._parser().parse_args(["build", "m.onnx", "--precision", "fp16", "--calibration",
                                    "photos"])
    with pytest.raises(OnnxpassError, match="only --precision int8 or fp8 calibrates"):
        tbuild.options_from_args(bad)


def test_quantize_spec_reaches_the_pass(tmp_path: Path) -> None:
    """What build runs before an int8 engine: the int8 pass with the calibration data."""
    import numpy as np
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8))
                                .astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])],
                          [w])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    out, labels = tbuild._rewrite(str(src), "int8", tmp_path / "m.plan.onnx",
                                  calibration="random", method="percentile")
    assert labels == ["int8"]
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("DequantizeLinear") == 2 and ops.count("QuantizeLinear") == 1


@pytest.mark.skipif(TRT_MISSING is None, reason="TensorRT is installed here")
def test_without_tensorrt_build_and_engine_bench_fail_in_one_line(
        tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"not an engine")
    for argv in (["build", str(tiny), "--shapes", "x:1x3x8"], ["bench", str(engine)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "TensorRT is not installed" in err
        assert "pip install tensorrt" in err
    assert not (tmp_path / "m.plan.json").exists()


def test_bench_onnx_times_onnxruntime(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", str(tiny), "--shapes", "x:4x3x8", "--warmup", "0",
                     "--iterations", "5", "--json"]) == 0
    out = capsys.readouterr()
    (t,) = json.loads(out.out)
    assert t["runner"] == "onnxruntime CPUExecutionProvider" and t["iterations"] == 5
    assert 0 < t["min_ms"] <= t["median_ms"] <= t["p90_ms"] <= t["p99_ms"]
    assert "ONNX Runtime on the CPU" in out.err


def test_latency_stats_and_layer_table() -> None:
    t = tb.latency_stats("r", [float(k) for k in range(1, 101)], batch=4)
    assert (t.median_ms, t.min_ms, t.iterations) == (50.5, 1.0, 100)
    assert t.p90_ms == pytest.approx(90.1) and t.p99_ms == pytest.approx(99.01)
    assert t.throughput == pytest.approx(4 * 1000 / 50.5)
    rows = tb.layer_table({"a": [1.0, 3.0], "b": [6.0]})
    assert [r["layer"] for r in rows] == ["b", "a"] and rows[0]["percent"] == pytest.approx(75)


@pytest.mark.skipif(TRT_MISSING is not None, reason=TRT_MISSING or "")
def test_build_and_bench_with_tensorrt(tiny: Path, tmp_path: Path) -> None:
    engine = tmp_path / "tiny.plan"
    cache = tmp_path / "timing.cache"
    assert cli.main(["build", str(tiny), "-o", str(engine), "--shapes", "x:1x3x8,4x3x8,16x3x8",
                     "--workspace", "256M", "--timing-cache", str(cache), "--opt-level", "1"]) == 0
    rec = json.loads(tbuild.record_path(engine).read_text())
    assert rec["model"]["sha256"] == tbuild.sha256_file(tiny) and cache.stat().st_size > 0
    assert cli.main(["bench", str(engine), "--warmup", "0.1", "--iterations", "10",
                     "--profile"]) == 0
    # compare runs the engine in TensorRT on the same feeds as the model in ONNX Runtime.
    assert cli.main(["compare", str(tiny), str(engine), "--dim", "batch=4"]) == 0


@pytest.mark.skipif(TRT_MISSING is not None, reason=TRT_MISSING or "")
def test_strongly_typed_fp16_build_with_pins(tiny: Path, tmp_path: Path) -> None:
    pins = tmp_path / "pins.txt"
    pins.write_text("op:Relu\n")
    engine = tmp_path / "tiny16.plan"
    assert cli.main(["build", str(tiny), "-o", str(engine), "--precision", "fp16",
                     "--strongly-typed", "--shapes", "x:4x3x8", "--fp16-pins", str(pins)]) == 0
    built = onnx.load(str(tbuild.rewritten_path(engine)))
    relu = next(n for n in built.graph.node if n.op_type == "Relu")
    assert relu.input[0] == "x"  # pinned: reads the float32 input, no Cast
    assert cli.main(["compare", str(tiny), str(engine), "--dim", "batch=4", "--rtol", "1e-2",
                     "--atol", "1e-2"]) == 0


def test_pyright_clean_against_tensorrt_stubs() -> None:
    import importlib.util

    if shutil.which("pyright") is None:
        pytest.skip("pyright not installed (pip install pyright)")
    if importlib.util.find_spec("tensorrt_stubs") is None:
        pytest.skip("tensorrt-stubs not installed (pip install --no-deps "
                    "tensorrt-stubs==10.13.0.35.1)")
    r = subprocess.run(["pyright", "-p", str(ROOT / "pyrightconfig.json")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_build_reads_the_pin_list(tiny: Path, tmp_path: Path) -> None:
    """``build --fp16-pins``: the fp16 pass it runs keeps the listed nodes float32; a pin list
    no fp16 pass would read, or one that cannot be read, is a one-line error."""
    pins = tmp_path / "pins.txt"
    pins.write_text("op:Relu\n")
    out = tbuild.rewritten_path(tmp_path / "tiny.plan")
    tbuild._rewrite(str(tiny), "fp16", out, str(pins))
    types = {n.op_type: n.input[0] for n in onnx.load(str(out)).graph.node}
    assert types["Relu"] == "x" and types["Add"] != "r"  # Relu float32; Add reads a Cast of r
    with pytest.raises(OnnxpassError, match="int8 or fp8 pass, which does not run here"):
        tbuild._rewrite(str(tiny), "cleanup", out, str(pins))
    args = cli._parser().parse_args(["build", "m.onnx", "--fp16-pins", str(pins)])
    assert tbuild.options_from_args(args).fp16_pins == str(pins)
    bad = cli._parser().parse_args(["build", "m.onnx", "--fp16-pins", str(tmp_path / "no.txt")])
    with pytest.raises(OnnxpassError, match="no.txt: cannot read the pin list"):
        tbuild.options_from_args(bad)


def test_passes_rewrite_beside_the_engine(tiny: Path, tmp_path: Path) -> None:
    out = tbuild.rewritten_path(tmp_path / "tiny.plan")
    src, ran = tbuild._rewrite(str(tiny), "cleanup", out)
    assert src == str(tmp_path / "tiny.plan.onnx") and ran == ["noop", "cse", "dce"]
    onnx.checker.check_model(onnx.load(src))
