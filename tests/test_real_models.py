"""Real exported graphs: the layernorm and gelu passes fuse every instance, outputs unchanged.

The expected counts come from the torch model (calls to F.layer_norm and F.gelu, see
tests/models.py), never from the graph. ONNX's own function-expanded LayerNormalization and Gelu
node tests are checked against their expected outputs.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import pytest

import onnxpass
from onnxpass.plugins.base import DOMAIN
from onnxpass.verify import compare_models, error_stats, random_inputs, run
from tests.models import EXPORTERS, MODELS, OpCounts

FORMS = ("std", "plugin")
RTOL, ATOL = 1e-5, 1e-5  # float32 graphs; atol for elements near zero


@dataclass
class Fused:
    layernorm: int
    gelu: int
    gelu_tanh: int
    other: Counter[str]  # fused ops of the other form, native ops left unconverted


def fused_counts(model: onnx.ModelProto, form: str) -> Fused:
    ln, gelu, tanh, other = 0, 0, 0, Counter[str]()
    for n in model.graph.node:
        key = (n.domain or "", n.op_type)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if key == (("", "LayerNormalization") if form == "std" else (DOMAIN, "LayerNormPlugin")):
            ln += 1
        elif key == (("", "Gelu") if form == "std" else (DOMAIN, "GeluPlugin")):
            approximate = attrs.get("approximate", b"none" if form == "std" else 0)
            if approximate in (b"tanh", 1):
                tanh += 1
            else:
                gelu += 1
        elif n.op_type in ("LayerNormalization", "Gelu", "LayerNormPlugin", "GeluPlugin"):
            other[n.op_type] += 1
    return Fused(ln, gelu, tanh, other)


def decomposed_layernorms(model: onnx.ModelProto) -> list[str]:
    """ReduceMean nodes whose input x is also centered by them (Sub(x, mean(x))): the start of a
    decomposed LayerNorm, or of its variance."""
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            by_input.setdefault(i, []).append(n)
    found = []
    for n in model.graph.node:
        if n.op_type != "ReduceMean":
            continue
        for user in by_input.get(n.output[0], []):
            if user.op_type == "Sub" and list(user.input) == [n.input[0], n.output[0]]:
                found.append(n.name or n.output[0])
    return found


def fuse(model: onnx.ModelProto, form: str, passes: str | None = None) -> onnx.ModelProto:
    spec = passes or f"layernorm={form},gelu={form}"
    rewritten, _ = onnxpass.rewrite(model, spec)
    onnx.checker.check_model(rewritten, full_check=True)
    return rewritten


def _fuse_export(real_models, name: str, exporter: str, form: str,  # type: ignore[no-untyped-def]
                 fp16: bool = False):
    """(original, rewritten, fused counts) for one export, asserting the fused LayerNorm and
    GELU counts equal the torch model's calls."""
    path = real_models.export(name, exporter, fp16=fp16)
    if isinstance(path, str):
        pytest.skip(path)
    want: OpCounts = real_models.counts(name)
    original = onnx.load(str(path))
    rewritten = fuse(onnx.load(str(path)), form)
    got = fused_counts(rewritten, form)
    assert (got.layernorm, got.gelu, got.gelu_tanh) == (want.layernorm, want.gelu,
                                                        want.gelu_tanh), (
        f"fused LayerNorm/GELU/tanh-GELU {got}, torch calls {want}")
    return original, rewritten, got


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_real_model_fuses_every_instance(real_models, name: str, exporter: str, form: str) -> None:
    original, rewritten, got = _fuse_export(real_models, name, exporter, form)
    assert not got.other, f"ops of the other form left: {dict(got.other)}"
    assert decomposed_layernorms(rewritten) == []
    assert not [n for n in rewritten.graph.node if n.op_type == "Erf"], "an erf GELU is left"

    feeds = random_inputs(original)
    stats = compare_models(original, rewritten, feeds, rtol=RTOL, atol=ATOL)
    assert all(s.within for s in stats), "\n".join(s.line() for s in stats)


# Float16 exports differ by rounding only: the fused op computes the mean in float32 where the
# TorchScript graph computed it in float16. A structural mistake (gamma, eps, axis) is O(0.1).
RTOL16, ATOL16 = 1e-2, 1e-2


@pytest.mark.parametrize(("exporter", "form"), [("torchscript", "std"), ("torchscript16", "std"),
                                                ("torchscript16", "plugin")])
@pytest.mark.parametrize("name", ["vit", "bert"])
def test_real_model_fp16(real_models, name: str, exporter: str, form: str) -> None:
    """TorchScript's float16 graphs: LayerNorm between Casts up to double and back, GELU constants
    stored as float16. (The plugin form needs opset >= 15 for a float16 reference function.)"""
    original, rewritten, _ = _fuse_export(real_models, name, exporter, form, fp16=True)
    assert decomposed_layernorms(rewritten) == []
    stats = compare_models(original, rewritten, random_inputs(original), RTOL16, ATOL16)
    assert all(s.within for s in stats), "\n".join(s.line() for s in stats)


# ---- ONNX's node test cases, function-expanded -------------------------------------------------

@functools.cache
def _onnx_cases() -> dict[str, object]:
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return {c.name: c for c in cases if "expanded" in c.name and (
        "layer_normalization" in c.name or "gelu" in c.name)}


def _onnx_case_names() -> list[str]:
    return sorted(_onnx_cases())


# The expanded graphs compute their constants in the graph (CastLike(Constant, x), Sqrt(2)) and
# cast to the stash type and back: the default pipeline's fold and noop passes make them constants
# and drop the same-type casts first.
PIPELINE = "fold,noop,layernorm={form},gelu={form}"


def _keep_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    keep = [o for o in model.graph.output if o.name in names]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    return model


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", _onnx_case_names())
def test_onnx_expanded_case_fuses(case: str, form: str) -> None:
    c = _onnx_cases()[case]
    model = onnx.ModelProto()
    model.CopyFrom(c.model)  # type: ignore[attr-defined]
    inputs, expected = c.data_sets[0]  # type: ignore[attr-defined]
    feeds = dict(zip([i.name for i in model.graph.input], inputs))
    outputs = [o.name for o in model.graph.output]
    if "layer_normalization" in case:
        # Mean and InvStdDev are intermediate values of the decomposition, exposed as graph
        # outputs only by these tests; a fused LayerNorm (plugin form) does not produce them.
        # test_onnx_expanded_layernorm_with_statistics covers the graph as it is.
        model = _keep_outputs(model, outputs[:1])
        expected, outputs = expected[:1], outputs[:1]
    rewritten = fuse(model, form, PIPELINE.format(form=form))

    got = fused_counts(rewritten, form)
    if "gelu" in case:
        assert (got.gelu, got.gelu_tanh) == ((0, 1) if "tanh" in case else (1, 0)), got
    else:
        assert got.layernorm == 1, got
    assert not got.other and decomposed_layernorms(rewritten) == []
    actual = run(rewritten, feeds)
    stats = [error_stats(k, e, actual[k], RTOL, ATOL) for k, e in zip(outputs, expected)]
    assert all(s.within for s in stats), "\n".join(s.line() for s in stats)


def test_onnx_expanded_layernorm_with_statistics() -> None:
    """With the mean and 1/std also graph outputs, fusing would drop values used outside the
    match: the pass must leave the graph computing exactly what it did."""
    c = _onnx_cases()["test_layer_normalization_4d_axis1_expanded_ver18"]
    model = onnx.ModelProto()
    model.CopyFrom(c.model)  # type: ignore[attr-defined]
    inputs, expected = c.data_sets[0]  # type: ignore[attr-defined]
    feeds = dict(zip([i.name for i in model.graph.input], inputs))
    rewritten = fuse(model, "std", PIPELINE.format(form="std"))
    assert fused_counts(rewritten, "std").layernorm == 0
    actual = run(rewritten, feeds)
    for o, e in zip(rewritten.graph.output, expected):
        assert error_stats(o.name, e, actual[o.name], RTOL, ATOL).within
