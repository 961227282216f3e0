"""The bf16 pass (onnxpass/passes/lowprec.py, :class:`BFloat16`): its real-model tests run with the
fp16 ones (tests/test_fp16.py, within 5e-2 at each output's scale); here, it refuses a graph the
fp16 pass converted (and fp16 one bf16 converted); ``onnxpass debug precision --dtype bf16``.
Golden cases are in tests/goldens/bf16/.

ONNX Runtime's CPU provider has no bfloat16 arithmetic (MatMul, Add, Relu... are NOT_IMPLEMENTED),
so bfloat16 graphs run as :func:`simulate_float16` rewrites them: every op in float32, every
bfloat16 value rounded by a Cast pair (ORT's Cast to bfloat16 rounds to nearest even).
"""

from __future__ import annotations

import onnx
import pytest

import onnxpass
from onnxpass.debug_precision import simulate_float16
from onnxpass.errors import OnnxpassError
from onnxpass.passes.lowprec import BFloat16
from onnxpass.passes.pins import read_pins
from onnxpass.verify import random_inputs, run, scaled_stats
from tests.helpers import toy_model


def rewrite(model: onnx.ModelProto, spec: object = "bf16") -> onnx.ModelProto:
    work = onnx.ModelProto()
    work.CopyFrom(model)
    out, _ = onnxpass.rewrite(work, spec)  # type: ignore[arg-type]
    return out


def test_one_precision_pass_per_model() -> None:
    """bf16 on a graph fp16 converted, or fp16 on one bf16 converted: a one-line error, not a
    graph with float16 and bfloat16 values; pins work as for fp16."""
    for first, second, left in [("fp16", "bf16", "float16"), ("bf16", "fp16", "bfloat16")]:
        with pytest.raises(OnnxpassError, match=f"already has {left} from the other") as e:
            rewrite(rewrite(toy_model(), first), second)
        assert "\n" not in str(e.value)
    bf = rewrite(toy_model(), [BFloat16(keep_ops={"Exp"})])
    assert [n.op_type for n in bf.graph.node] == ["Cast", "Relu", "Cast", "Exp", "Softmax"]


CANCEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4,16] x) => (float[4,16] y, float[4,16] z) <float k = {1000.0}, float[16] bias = {B}> {
  a = Add (x, k)
  y = Sub (a, k)
  r = Relu (x)
  z = Add (r, bias)
} """


def test_debug_precision_bf16(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """(x + 1000) - 1000: bfloat16's step at 1000 is 4, so x is lost; float16's is 0.5. The
    search pins the Add and the Sub, nothing else, and writes MODEL.bf16pins.txt."""
    from onnxpass.cli import main

    path = tmp_path / "cancel.onnx"
    onnx.save(onnx.parser.parse_model(CANCEL.replace("{B}", "{" + ",".join(["0.5"] * 16) + "}")),
              path)
    assert main(["debug", "precision", str(path), "--tol", "1e-2", "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "2 node(s) to keep float32" in out and "--precision bf16" in out
    pins = tmp_path / "cancel.bf16pins.txt"
    assert pins.read_text().startswith("# onnxpass debug precision: float32 pins for bf16=mixed")
    assert read_pins(pins) == (set(), {"a", "y"}, set())
    model = onnx.load(str(path))
    bf = rewrite(model, [BFloat16(pins=str(pins))])
    feeds = random_inputs(model, seed=0)
    want, got = run(model, feeds), run(simulate_float16(bf), feeds)
    assert all(scaled_stats(k, e, got[k], 1e-2)[0].within for k, e in want.items())
