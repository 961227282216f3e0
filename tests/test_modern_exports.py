"""Issue 11's acceptance test: modern architectures and exporters, every instance fused.

For each model and exporter of tests/models_heldout.py (GPT-2, T5 encoder, Llama, Qwen2 GQA,
Mask2Former, Whisper, BEiT; TorchScript at opset 14 with static shapes and at 17 with batch and
sequence dynamic, dynamo at its default opset and at 23, a float16 export), the ``default`` (std
forms) and ``plugins`` pipelines write a model in which

- every LayerNorm, RMSNorm, GELU and attention instance the torch model computes is one fused op
  (either form: LayerNormalization/LayerNormPlugin, RMSNormalization/RMSNormPlugin, Gelu/
  GeluPlugin, Attention/AttentionPlugin; an exporter's own op, dynamo's at opset 23, counts), no
  more and no fewer. The counts come from running the torch model (module calls, see
  ``torch_counts``); :data:`TABLE` states them and a test checks the two agree;
- ONNX Runtime loads it with its default session options;
- outputs equal the export's within 1e-5 of each output's scale (1e-2 for float16 exports), on
  every feed (decoders also with a left-padded batch, dynamic exports at another batch size and
  sequence length).

Cases that need a pass not written yet are marked in :data:`TABLE` as strict xfails naming it:
when the pass lands they pass, and strictness makes the run fail until the mark is removed.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxpass.verify import run, scaled_stats
from tests.models_heldout import EXPORTERS, KINDS, MODELS, exporters

PIPELINES = ("default", "plugins")
RTOL, RTOL16 = 1e-5, 1e-2

# kind -> the op types that are one fused instance, std form first.
FUSED_OPS = {
    "layernorm": ("LayerNormalization", "LayerNormPlugin"),
    "rmsnorm": ("RMSNormalization", "RMSNormPlugin"),
    "gelu": ("Gelu", "GeluPlugin"),
    "attention": ("Attention", "AttentionPlugin"),
}


class Row(NamedTuple):
    """One model: the instances of each kind the torch model computes, and the cases known to
    fail today, as ``"exporter"`` or ``"exporter/pipeline"`` -> the reason (the pass needed)."""

    counts: dict[str, int]
    xfail: dict[str, str]


TABLE: dict[str, Row] = {
    "gpt2": Row({"layernorm": 5, "rmsnorm": 0, "gelu": 2, "attention": 2}, {}),
    "t5_encoder": Row({"layernorm": 0, "rmsnorm": 5, "gelu": 0, "attention": 2}, {}),
    "llama": Row({"layernorm": 0, "rmsnorm": 5, "gelu": 0, "attention": 2}, {}),
    "qwen2": Row({"layernorm": 0, "rmsnorm": 5, "gelu": 0, "attention": 2}, {}),
    "mask2former": Row({"layernorm": 7, "rmsnorm": 0, "gelu": 0, "attention": 2},
                       {}),
    "whisper": Row({"layernorm": 12, "rmsnorm": 0, "gelu": 6, "attention": 6}, {}),
    "beit": Row({"layernorm": 7, "rmsnorm": 0, "gelu": 3, "attention": 3}, {}),
}
assert set(TABLE) == set(MODELS)


def _marks(name: str, exporter: str, pipeline: str) -> list[pytest.MarkDecorator]:
    xfail = TABLE[name].xfail
    reason = xfail.get(f"{exporter}/{pipeline}") or xfail.get(exporter)
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


CASES = [pytest.param(m, e, p, marks=_marks(m, e, p), id=f"{m}-{e}-{p}")
         for m in MODELS for e in exporters(m) for p in PIPELINES]


@pytest.mark.parametrize("name", list(MODELS))
def test_table_counts_what_the_torch_model_computes(heldout_exports, name: str  # type: ignore[no-untyped-def]
                                                    ) -> None:
    assert heldout_exports.counts(name) == TABLE[name].counts


def fused(model: onnx.ModelProto) -> dict[str, int]:
    ops = Counter(n.op_type for n in model.graph.node)
    return {k: sum(ops[t] for t in FUSED_OPS[k]) for k in KINDS}


def _ort_refusal(model: onnx.ModelProto) -> str | None:
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


@pytest.mark.parametrize(("name", "exporter", "pipeline"), CASES)
def test_every_instance_fused(heldout_exports, name: str, exporter: str,  # type: ignore[no-untyped-def]
                              pipeline: str) -> None:
    path = heldout_exports.export(name, exporter)
    assert not isinstance(path, str), path  # an export that fails is a finding, not a skip
    out = heldout_exports.rewritten(name, exporter, pipeline)
    assert not isinstance(out, str), out
    problems = []
    want, got = TABLE[name].counts, fused(out)
    if got != want:
        problems.append(f"fused {got}, the torch model computes {want}")
    if (why := _ort_refusal(out)) is not None:
        problems.append(f"ONNX Runtime refuses the output: {why}")
    else:
        original = onnx.load(str(path))
        tol = RTOL16 if EXPORTERS[exporter][1] else RTOL
        for k, feed in enumerate(heldout_exports.feeds(name, exporter)):
            expected, actual = run(original, feed), run(out, feed)
            for o, e in expected.items():
                s, err = scaled_stats(o, e, actual[o], tol)
                if not s.within or not np.isfinite(err):
                    problems.append(f"feed {k}: {s.line()} (scaled max {err:.3g}, tol {tol:g})")
    assert not problems, "\n".join(problems)
