"""Issue 9, first "Done when": the default, default,fp16 and plugins pipelines on real exports of
architectures no other test covers (GPT-2, T5 encoder, Llama, Qwen2 GQA, Mask2Former, Whisper,
BEiT; see tests/models_heldout.py) write models that

(a) ONNX Runtime loads (unique node names, ...), with its default session options;
(b) a second run of the same pipeline leaves unchanged (node count and op multiset);
(c) compute the original's outputs within 1e-5 of each output's scale (1e-2 for the fp16
    pipeline and for float16 exports), on realistic feeds: token ids in the vocabulary and
    attention masks with a padded row (decoders also with a left-padded row; exports with a
    dynamic sequence also at another batch size and sequence length).

tests/test_modern_exports.py checks the same exports for every instance fused; the two share
each export and each rewrite (the ``heldout_exports`` fixture).

Every problem of a case is collected and reported together. With ``HELDOUT_REPORT=FILE`` each
case appends one JSON line (verdict, problems, fused op counts) to FILE.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import onnx
import pytest

import onnxpass
from onnxpass.verify import run, scaled_stats
from tests.models_heldout import EXPORTERS, MODELS, exporters

PIPELINES = ("default", "default,fp16", "plugins")
CASES = [(m, e, p) for m in MODELS for e in exporters(m) for p in PIPELINES]
RTOL, RTOL16 = 1e-5, 1e-2

# Fused op kinds counted for the report (informational): op types in either form.
KINDS = {
    "layernorm": ("LayerNormalization", "LayerNormPlugin"),
    "rmsnorm": ("RMSNormalization", "RMSNormPlugin"),
    "attention": ("Attention", "AttentionPlugin"),
    "gelu": ("Gelu", "GeluPlugin"),
    "rotary": ("RotaryEmbedding", "RotaryEmbeddingPlugin"),
    "masked_softmax": ("MaskedSoftmaxPlugin",),
}


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:400]


def _rewrite(model: onnx.ModelProto, pipeline: str) -> onnx.ModelProto:
    work = onnx.ModelProto()
    work.CopyFrom(model)  # rewrite works in place
    out, _ = onnxpass.rewrite(work, pipeline)
    return out


def _ort_load(model: onnx.ModelProto) -> str | None:
    """Why ONNX Runtime (default session options, as a user runs it) refuses the model, or
    None."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        return _first_line(e)
    return None


_REFERENCE: dict[str, tuple[str | None, list[dict[str, np.ndarray]]]] = {}


def _reference(path: str, original: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]
               ) -> tuple[str | None, list[dict[str, np.ndarray]]]:
    """Why ONNX Runtime refuses the original export (or None), and its outputs for ``feeds``;
    once per export."""
    if path not in _REFERENCE:
        why = _ort_load(original)
        _REFERENCE[path] = (why, [] if why else [run(original, f) for f in feeds])
    return _REFERENCE[path]


def _duplicate_names(model: onnx.ModelProto) -> list[str]:
    names = Counter(n.name for n in model.graph.node if n.name)
    return sorted(k for k, v in names.items() if v > 1)


def _ops(model: onnx.ModelProto) -> Counter[tuple[str, str]]:
    return Counter((n.domain or "", n.op_type) for n in model.graph.node)


def _kinds(model: onnx.ModelProto) -> dict[str, int]:
    ops = Counter(n.op_type for n in model.graph.node)
    return {k: sum(ops[t] for t in types) for k, types in KINDS.items()}


def _report(record: dict[str, object]) -> None:
    path = os.environ.get("HELDOUT_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


@pytest.mark.parametrize(("name", "exporter", "pipeline"), CASES,
                         ids=[f"{m}-{e}-{p.replace(',', '+')}" for m, e, p in CASES])
def test_heldout_export(heldout_exports, name: str, exporter: str,  # type: ignore[no-untyped-def]
                        pipeline: str) -> None:
    record: dict[str, object] = {"model": name, "exporter": exporter, "pipeline": pipeline}
    problems: list[str] = []
    _check(heldout_exports, name, exporter, pipeline, record, problems)
    record["problems"] = problems
    record["ok"] = not problems
    _report(record)
    assert not problems, "\n".join(problems)


def _check(heldout_exports, name: str, exporter: str, pipeline: str,  # type: ignore[no-untyped-def]
           record: dict[str, object], problems: list[str]) -> None:
    """Appends every problem of one case to ``problems``."""
    path = heldout_exports.export(name, exporter)
    if isinstance(path, str):  # an exporter failure is a finding, not a skip
        problems.append(path)
        return
    original = onnx.load(str(path))
    if (why := _reference(str(path), original, heldout_exports.feeds(name, exporter))[0]):
        problems.append(f"ONNX Runtime refuses the original export: {why}")
        return
    out = heldout_exports.rewritten(name, exporter, pipeline)
    if isinstance(out, str):
        problems.append(out)
        return
    record["fused"] = {k: (v, _kinds(original)[k]) for k, v in _kinds(out).items()}
    record["softmax_in_original"] = sum(n.op_type == "Softmax" for n in original.graph.node)

    # (a) ONNX Runtime loads it
    loads = _ort_load(out)
    if loads is not None:
        dups = _duplicate_names(out)
        problems.append(f"(a) ONNX Runtime refuses the output: {loads}"
                        + (f" [{len(dups)} duplicate node names, e.g. {dups[:3]}]"
                           if dups else ""))

    # (b) a second run changes nothing
    try:
        again = _rewrite(out, pipeline)
        if len(again.graph.node) != len(out.graph.node) or _ops(again) != _ops(out):
            a, b = _ops(out), _ops(again)
            diff = {f"{d}:{t}" if d else t: b[(d, t)] - a[(d, t)] for d, t in a | b
                    if a[(d, t)] != b[(d, t)]}
            problems.append(f"(b) second run changed the graph: {len(out.graph.node)} -> "
                            f"{len(again.graph.node)} nodes, op count changes {diff}")
    except Exception as e:
        problems.append(f"(b) second run raised {_first_line(e)}")

    # (c) same outputs
    if loads is None:
        tol = RTOL16 if ("fp16" in pipeline or EXPORTERS[exporter][1]) else RTOL
        worst: dict[str, float] = {}
        for k, feed in enumerate(heldout_exports.feeds(name, exporter)):
            want, got = _reference(str(path), original, [])[1][k], run(out, feed)
            for o, e in want.items():
                if o not in got:
                    problems.append(f"(c) output {o} missing")
                    continue
                s, err = scaled_stats(o, e, got[o], tol)
                worst[o] = max(worst.get(o, 0.0), float(np.nan_to_num(err, nan=np.inf)))
                if not s.within:
                    problems.append(f"(c) feed {k}: {s.line()} (scaled max {err:.3g}, "
                                    f"tol {tol:g})")
        record["scaled_err"] = worst
