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
from onnxpass.passes.fp16 import Float16, read_pins
from onnxpass.verify import error_stats, random_inputs, run

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


def scaled_error(model: onnx.ModelProto, half: onnx.ModelProto) -> dict[str, float]:
    """Per output: max |fp16 - fp32| / max |fp32| (elementwise relative error is meaningless
    for elements near zero), asserting ``error_stats`` agrees at that scale. The float16 graph
    runs as is and as simulated with every node's output rounded (ORT's CPU provider keeps
    float32 values along chains of ops that lack float16 kernels); the worse counts."""
    feeds = random_inputs(model, seed=0)
    want, got, sim = run(model, feeds), run(half, feeds), run(simulate_float16(half), feeds)
    out = {}
    for k, e in want.items():
        scale = float(np.abs(e).max()) or 1.0
        s = error_stats(k, e, got[k], rtol=RTOL, atol=RTOL * scale)
        s2 = error_stats(k, e, sim[k], rtol=RTOL, atol=RTOL * scale)
        assert s.within and s2.within, (s.line(), s2.line())
        out[k] = max(s.abs_max, s2.abs_max) / scale
    return out


@pytest.mark.parametrize("name,exporter", REAL, ids=[f"{m}-{e}" for m, e in REAL])
def test_real_model_fp16(real_models, name: str, exporter: str) -> None:  # type: ignore[no-untyped-def]
    path = real_models.export(name, exporter)
    if isinstance(path, str):
        pytest.skip(path)
    model = onnx.load(str(path))
    half = fp16(model)
    onnx.checker.check_model(half)
    types = {n.op_type: 0 for n in half.graph.node}
    float16_inits = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    assert float16_inits > 0, "no weight became float16"
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == \
        [o.type.tensor_type.elem_type for o in model.graph.output]
    errs = scaled_error(model, half)
    casts = sum(n.op_type == "Cast" for n in half.graph.node) - sum(
        n.op_type == "Cast" for n in model.graph.node)
    print(f"\n{name}-{exporter}: casts added {casts}, nodes {len(types)} kinds, "
          + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    assert fp16(half).graph.node == half.graph.node  # a second run changes nothing


def _toy() -> onnx.ModelProto:
    return onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,8] x) => (float[2,8] y) {
  a = Relu (x)
  b = Exp (a)
  y = Softmax <axis = -1> (b)
}""")


def _float_ops(model: onnx.ModelProto) -> dict[str, int]:
    """op type -> elem type it computes in (from inferred value types)."""
    m = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*m.graph.value_info, *m.graph.output]}
    return {n.op_type: types[n.output[0]] for n in m.graph.node if n.op_type != "Cast"}


def test_pins_by_op_node_and_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    F, H = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert _float_ops(fp16(_toy())) == {"Relu": H, "Exp": H, "Softmax": F}
    assert _float_ops(fp16(_toy(), Float16(keep_ops={"Exp"}))) == {
        "Relu": H, "Exp": F, "Softmax": F}
    assert _float_ops(fp16(_toy(), Float16("all", keep_nodes={"b"}))) == {
        "Relu": H, "Exp": F, "Softmax": H}
    pins = tmp_path / "pins.txt"
    pins.write_text("# pins\nop:Relu\nnode:b  # the Exp\n")
    assert read_pins(pins) == ({"Relu"}, {"b"})
    assert _float_ops(fp16(_toy(), Float16("all", pins=str(pins)))) == {
        "Relu": F, "Exp": F, "Softmax": H}


def test_float16_io() -> None:
    half = fp16(_toy(), Float16("all", keep_io_types=False))
    onnx.checker.check_model(half)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert not any(n.op_type == "Cast" for n in half.graph.node)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float16)
    ref = run(_toy(), {"x": x.astype(np.float32)})["y"]
    assert error_stats("y", ref, run(half, {"x": x})["y"], 1e-2, 1e-3).within


OVERFLOW = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4,16] x) => (float[4,16] y, float[4,16] z) <float k = {200.0}, float c = {1e-4}, float[16] bias = {B}> {
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
    assert read_pins(pins) == (set(), {"b", "y"})
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
    print(f"\n{name}-{exporter}-{pipeline}+fp16: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
