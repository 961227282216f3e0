"""The fp16 pass on real exports (float16 within 1e-2 of float32 in ONNX Runtime, onnx.checker
clean), its options (pins by op type, node name, pin file; float16 graph I/O), and idempotence.
Golden cases are in tests/goldens/fp16/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxpass
from onnxpass.debug_precision import simulate_float16
from onnxpass.errors import OnnxpassError
from onnxpass.passes.lowprec import Float16
from onnxpass.passes.pins import read_pins
from onnxpass.verify import error_stats, random_inputs, run, scaled_stats
from tests.helpers import computed_types, tensorrt_missing, toy_model
from tests.models_attention import minilm_cache, minilm_path, padded_inputs

RTOL = 1e-2
REAL = [(m, e) for m in ("vit", "bert", "clip_text", "clip_vision", "detr", "mobilevit", "levit",
                           "swin", "segformer")
        for e in ("torchscript", "dynamo")]


def fp16(model: onnx.ModelProto, *passes: object) -> onnx.ModelProto:
    work = onnx.ModelProto()
    work.CopyFrom(model)
    spec = passes[0] if len(passes) == 1 and isinstance(passes[0], str) else list(passes)
    out, _ = onnxpass.rewrite(work, spec or "fp16")  # type: ignore[arg-type]
    return out


def scaled_error(model: onnx.ModelProto, half: onnx.ModelProto,
                 feeds: list[dict[str, np.ndarray]] | None = None, tol: float = RTOL
                 ) -> dict[str, float]:
    """Per output: max |fp16 - fp32| / max |fp32| over the finite elements (elementwise relative
    error is meaningless for elements near zero; NaNs must match), asserting ``scaled_stats``
    finds every element within ``tol`` at that scale. The float16 graph runs as is and as
    simulated with every node's output rounded (ORT's CPU provider keeps float32 values along
    chains of ops that lack float16 kernels); the worse counts, over all ``feeds``. A bfloat16
    graph runs only simulated: ORT's CPU provider has no bfloat16 arithmetic."""
    out: dict[str, float] = {}
    bf16 = any(t.data_type == onnx.TensorProto.BFLOAT16 for t in half.graph.initializer)
    for f in feeds or [random_inputs(model, seed=0)]:
        want, sim = run(model, f), run(simulate_float16(half), f)
        got = sim if bf16 else run(half, f)
        for k, e in want.items():
            (s, err), (s2, err2) = scaled_stats(k, e, got[k], tol), scaled_stats(k, e, sim[k], tol)
            assert s.within and s2.within, (s.line(), s2.line())
            out[k] = max(out.get(k, 0.0), err, err2)
    return out


# (pass, tolerance, elem type): bfloat16 has 8 significant bits to float16's 11.
PRECISION = {"fp16": (RTOL, onnx.TensorProto.FLOAT16), "bf16": (5e-2, onnx.TensorProto.BFLOAT16)}
REAL_PASSES = [(m, e, "fp16") for m, e in REAL] + [
    (m, e, "bf16") for m in ("vit", "bert", "clip_text") for e in ("torchscript", "dynamo")]


@pytest.mark.parametrize("name,exporter,pass_name", REAL_PASSES,
                         ids=["-".join(c).replace("-fp16", "") for c in REAL_PASSES])
def test_real_model_fp16(real_models, name: str, exporter: str,  # type: ignore[no-untyped-def]
                         pass_name: str) -> None:
    """fp16 (and bf16 on three models): onnx.checker clean, weights converted, graph I/O types
    kept, outputs within tolerance, and a second run changes nothing."""
    path = real_models.export(name, exporter)
    if isinstance(path, str):
        pytest.skip(path)
    model = onnx.load(str(path))
    tol, elem = PRECISION[pass_name]
    half = fp16(model, pass_name)
    onnx.checker.check_model(half)
    assert sum(t.data_type == elem for t in half.graph.initializer) > 0, "no weight converted"
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == \
        [o.type.tensor_type.elem_type for o in model.graph.output]
    errs = scaled_error(model, half, tol=tol)
    casts = sum(n.op_type == "Cast" for n in half.graph.node) - sum(
        n.op_type == "Cast" for n in model.graph.node)
    print(f"\n{name}-{exporter} {pass_name}: casts added {casts}, "
          + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    assert fp16(half, pass_name).graph.node == half.graph.node


def _other_model(request: pytest.FixtureRequest, name: str, exporter: str
                 ) -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    """The test graphs outside tests/models.py, with the feeds their own tests use."""
    if name == "anchordetr":
        ad = request.getfixturevalue("anchordetr")
        return onnx.load(str(ad.export(exporter))), ad.feeds()
    if name == "mstpp":
        built, get = request.getfixturevalue("mstpp_exports")
        return onnx.load(str(get(exporter))), [{"rgb": built.args[0].numpy()}]
    if name == "deit":
        model = onnx.load(str(request.getfixturevalue("deit_exports")(exporter)))
        return model, [random_inputs(model, seed=0)]
    path = minilm_path(minilm_cache())
    if isinstance(path, str):
        pytest.skip(path)
    model = onnx.load(str(path))
    return model, [padded_inputs(model)]


OTHER = [("anchordetr", "torchscript"), ("anchordetr", "dynamo"), ("mstpp", "torchscript"),
         ("mstpp", "dynamo"), ("deit", "torchscript"), ("deit", "dynamo"), ("minilm", "wheel")]


@pytest.mark.parametrize("name,exporter", OTHER, ids=[f"{m}-{e}" for m, e in OTHER])
def test_other_model_fp16(request: pytest.FixtureRequest, name: str, exporter: str) -> None:
    """AnchorDETR-style (its all-padding image gives NaN rows, which must stay NaN and no more),
    MST++, DeiT and the MiniLM wheel's graph (padded masks): float16 within 1e-2."""
    model, feeds = _other_model(request, name, exporter)
    half = fp16(model)
    onnx.checker.check_model(half)
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer) > 0
    errs = scaled_error(model, half, feeds)
    print(f"\n{name}-{exporter}: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))


def test_pins_by_op_node_and_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    F, H = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert computed_types(fp16(toy_model())) == {"Relu": H, "Exp": H, "Softmax": F}
    assert computed_types(fp16(toy_model(), Float16(keep_ops={"Exp"}))) == {
        "Relu": H, "Exp": F, "Softmax": F}
    assert computed_types(fp16(toy_model(), Float16("all", keep_nodes={"b"}))) == {
        "Relu": H, "Exp": F, "Softmax": H}
    pins = tmp_path / "pins.txt"
    pins.write_text("# pins\nop:Relu\nnode:b  # the Exp\n")
    assert read_pins(pins) == ({"Relu"}, {"b"}, set())
    assert computed_types(fp16(toy_model(), Float16("all", pins=str(pins)))) == {
        "Relu": F, "Exp": F, "Softmax": H}


def test_pins_by_glob_and_pattern(real_models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``node:GLOB`` pins nodes by name pattern; ``pattern:gelu`` every node of every GELU the
    gelu pass matches (TorchScript's Div/Erf/Add/Mul/Mul chain), and nothing else; an unknown
    pattern pass is a one-line error naming the known ones."""
    path = real_models.export("bert", "torchscript")
    if isinstance(path, str):
        pytest.skip(path)
    model = onnx.load(str(path))
    pins = tmp_path / "pins.txt"
    pins.write_text("pattern:gelu\nnode:/model/encoder/layer.0/attention/*/query/*\n")
    assert read_pins(pins) == (set(), {"/model/encoder/layer.0/attention/*/query/*"}, {"gelu"})
    half = fp16(model, Float16("all", pins=str(pins)))
    m = onnx.shape_inference.infer_shapes(half)
    f32 = {v.name for v in [*m.graph.value_info, *m.graph.output]
           if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    kept = {n.name for n in half.graph.node if n.op_type not in ("Cast", "Constant")
            and n.output[0] in f32}
    erfs = [n.name for n in model.graph.node if n.op_type == "Erf"]
    assert erfs and set(erfs) <= kept
    query = {n.name for n in model.graph.node if "/layer.0/attention/self/query/" in n.name}
    assert query and query <= kept
    gelu_ops = {n.op_type for n in model.graph.node if n.name in kept - query}
    assert gelu_ops == {"Div", "Erf", "Add", "Mul"}, gelu_ops  # nothing else
    assert scaled_error(model, half)
    pins.write_text("pattern:nosuch\n")
    with pytest.raises(OnnxpassError,
                       match="pattern:nosuch: not a pattern pass; pattern passes: .*gelu"):
        Float16(pins=str(pins))


def test_float16_io() -> None:
    half = fp16(toy_model(), Float16("all", keep_io_types=False))
    onnx.checker.check_model(half)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert not any(n.op_type == "Cast" for n in half.graph.node)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float16)
    ref = run(toy_model(), {"x": x.astype(np.float32)})["y"]
    assert error_stats("y", ref, run(half, {"x": x})["y"], 1e-2, 1e-3).within


OVERFLOW = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4,16] x) => (float[4,16] y, float[4,16] z)
  <float k = {200.0}, float c = {1e-4}, float[16] bias = {B}> {
  a = Mul (x, k)
  b = Mul (a, a)
  y = Mul (b, c)
  r = Relu (x)
  z = Add (r, bias)
} """


def _overflow(tmp_path) -> Path:  # type: ignore[no-untyped-def]
    text = OVERFLOW.replace("{B}", "{" + ",".join(["0.5"] * 16) + "}")
    path = tmp_path / "overflow.onnx"
    onnx.save(onnx.parser.parse_model(text), path)
    return path


def test_debug_precision_finds_pins(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """(200 x)^2 overflows float16 (ORT's CPU provider has float16 Mul): converting everything
    fails 1e-2; the search pins the square and its consumer, nothing else, and the fp16 pass
    with that pin list passes."""
    from onnxpass.cli import main

    path = _overflow(tmp_path)
    model = onnx.load(str(path))
    with pytest.raises(AssertionError):
        scaled_error(model, fp16(model))
    pins = tmp_path / "pins.txt"
    assert main(["debug", "precision", str(path), "--tol", "1e-2", "-o", str(pins)]) == 0
    assert "2 node(s) to keep float32" in capsys.readouterr().out
    assert read_pins(pins) == (set(), {"b", "y"}, set())
    half = fp16(model, Float16(pins=str(pins)))
    assert scaled_error(model, half)["y"] < 1e-2
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer) == 2


AFTER = [("vit", "torchscript", "default"), ("vit", "torchscript", "plugins"),
         ("bert", "dynamo", "plugins")]


@pytest.mark.parametrize("name,exporter,pipeline", AFTER, ids=["-".join(a) for a in AFTER])
def test_fp16_after_pipeline(real_models, name: str, exporter: str, pipeline: str
                             ) -> None:  # type: ignore[no-untyped-def]
    """After the fusing pipelines: fused ops and plugin nodes (float16 in their specs; float32
    islands at opset < 15, where reference bodies cannot CastLike) stay within 1e-2."""
    path = real_models.export(name, exporter)
    if isinstance(path, str):
        pytest.skip(path)
    model = onnx.load(str(path))
    fused = fp16(model, pipeline)  # type: ignore[arg-type]
    half = fp16(fused)
    onnx.checker.check_model(half)
    errs = scaled_error(model, half)
    shown = ", ".join(f"{k} {v:.2e}" for k, v in errs.items())
    print(f"\n{name}-{exporter}-{pipeline}+fp16: {shown}")


def test_eps_below_float16_stays_nonzero() -> None:
    """sum / max(count, 1e-9) over an all-padding row: 0 in float32, and 0 in float16 too (1e-9
    becomes float16's smallest subnormal, not 0, which would make it 0 / 0 = NaN)."""
    from onnxpass.testing.golden import GoldenCase

    case = GoldenCase.parse(Path(__file__).parent / "goldens" / "fp16" /
                           "tiny_constant_stays_nonzero.golden")
    model = onnx.parser.parse_model(case.source)
    rng = np.random.default_rng(0)
    feeds = {"h": rng.standard_normal((2, 8, 4)).astype(np.float32),
             "mask": np.array([[1] * 5 + [0] * 3, [0] * 8], np.float32)}
    errs = scaled_error(model, fp16(model), [feeds])
    assert errs["y"] < 1e-2


def test_debug_precision_ignores_matching_nans(anchordetr) -> None:  # type: ignore[no-untyped-def]
    """The all-padding image's NaN rows are NaN in float32 and float16 alike: not an error. The
    AnchorDETR-style model needs no pins at 1e-2, and the reported errors are finite."""
    from onnxpass.debug_precision import find_pins

    model = onnx.load(str(anchordetr.export("torchscript")))
    feeds = anchordetr.feeds()[2]
    assert np.isnan(run(model, feeds)["logits"]).any()
    r = find_pins(model, 1e-2, feeds)
    assert (r.ok, r.pins, r.runs) == (True, [], 1)
    assert all(0 < v < 1e-2 for v in r.worst.values()), r.worst


def test_run_reads_the_pin_list(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """``onnxpass run --passes fp16 --fp16-pins FILE``, as debug precision suggests; with no fp16
    pass to read it, or an unreadable file: one line, exit 2, nothing written."""
    from onnxpass.cli import main

    src, out = tmp_path / "toy.onnx", tmp_path / "out.onnx"
    onnx.save(toy_model(), src)
    pins = tmp_path / "pins.txt"
    pins.write_text("op:Exp\n")
    assert main(["run", str(src), "--passes", "fp16", "--fp16-pins", str(pins), "-o", str(out),
                 "-q"]) == 0
    F, H = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert computed_types(onnx.load(str(out))) == {"Relu": H, "Exp": F, "Softmax": F}
    out.unlink()
    for passes, pin_file, message in [("cleanup", pins, "which does not run here"),
                                      ("fp16", tmp_path / "none.txt", "cannot read the pin list")]:
        capsys.readouterr()
        assert main(["run", str(src), "--passes", passes, "--fp16-pins", str(pin_file),
                     "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and not out.exists()


def test_debug_precision_tensorrt_runner(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """``--runner tensorrt``: strongly typed engines of the candidates. Without TensorRT it is a
    one-line error and no pin list is written; with it, the same pins as ONNX Runtime finds."""
    from onnxpass.cli import main

    path, pins = _overflow(tmp_path), tmp_path / "pins.txt"
    argv = ["debug", "precision", str(path), "--tol", "1e-2", "-o", str(pins), "--runner",
            "tensorrt"]
    missing = tensorrt_missing()
    if missing is not None:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "TensorRT is not installed" in err and not pins.exists()
        pytest.skip(f"the TensorRT half of this test: {missing}")
    assert main(argv) == 0
    assert read_pins(pins) == (set(), {"b", "y"}, set())
