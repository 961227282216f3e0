"""rmsnorm beyond the goldens (tests/goldens/rmsnorm/): every spelling exporters write, in both
forms, at opsets 14, 17, 18 and 23, in float32 and float16; real T5, Llama and Qwen2 exports
(tests/models_heldout.py) with every RMSNorm module of the torch model fused; near-misses left
alone; a LayerNorm never taken for an RMSNorm nor the other way round; RMSNormalization nodes
turned into the plugin.

Every rewritten model must load in ONNX Runtime with its default session options and compute
the original's outputs within 1e-5 of each output's scale (1e-2 for float16).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxpass
from onnxpass.graph import Graph
from onnxpass.passes.base import PatternPass, parse_passes, pipelines
from onnxpass.patterns import explain
from onnxpass.plugins.base import DOMAIN
from onnxpass.testing.golden import GoldenCase
from onnxpass.verify import random_inputs, run, scaled_stats
from tests.models_heldout import EXPORTERS, MODELS, exporters

ROOT = Path(__file__).resolve().parent
RTOL, RTOL16 = 1e-5, 1e-2
FUSED = ("RMSNormalization", "RMSNormPlugin")
SHAPE = [2, 5, 16]


# ---- building decomposed RMSNorms -----------------------------------------------------------

class _Builder:
    """Nodes and initializers of one small graph; ReduceMean written as ``opset`` has it."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, value: Any, dtype: Any) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def __call__(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        out = f"{op_type.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def mean(self, v: str, axes: list[int], keepdims: int = 1) -> str:
        if self.opset >= 18:
            return self("ReduceMean", v, self.const(axes, np.int64), keepdims=keepdims)
        return self("ReduceMean", v, axes=axes, keepdims=keepdims)

    def model(self, x_type: int, y: str, y_type: int, extra_outputs: tuple[str, ...] = ()
              ) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(y, y_type, SHAPE)]
        outs += [helper.make_tensor_value_info(o, TensorProto.FLOAT, SHAPE[:-1] + [1])
                 for o in extra_outputs]
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info(
            "x", x_type, SHAPE)], outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=8 if self.opset < 21 else 10)
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model)


def _gamma(n: int = SHAPE[-1]) -> np.ndarray:
    return 1 + 0.5 * np.random.default_rng(3).standard_normal(n)


def _std_eps(b: _Builder, x: str, t: Any, sq: str | None = None) -> str:
    """mean(x^2) + eps, x squared by Pow 2 unless ``sq`` is given."""
    sq = sq or b("Pow", x, b.const(2.0, t))
    return b("Add", b.mean(sq, [-1]), b.const(1e-6, t))


# spelling -> build(builder, x, dtype) -> output. ``t`` is x's numpy dtype.
def _dynamo(b: _Builder, x: str, t: Any) -> str:  # Pow, Reciprocal(Sqrt), gamma first
    r = b("Reciprocal", b("Sqrt", _std_eps(b, x, t)))
    return b("Mul", b.const(_gamma(), t), b("Mul", x, r))


def _torchscript(b: _Builder, x: str, t: Any) -> str:  # Mul(x, x), Div(1, Sqrt)
    r = b("Div", b.const(1.0, t), b("Sqrt", _std_eps(b, x, t, b("Mul", x, x))))
    return b("Mul", b("Mul", x, r), b.const(_gamma(), t))


def _div_sqrt(b: _Builder, x: str, t: Any) -> str:  # x / Sqrt(v)
    return b("Mul", b("Div", x, b("Sqrt", _std_eps(b, x, t))), b.const(_gamma(), t))


def _pow_minus_half(b: _Builder, x: str, t: Any) -> str:  # Pow(v, -0.5), rsqrt first
    r = b("Pow", _std_eps(b, x, t), b.const(-0.5, t))
    return b("Mul", b("Mul", r, x), b.const(_gamma(), t))


def _pow_half(b: _Builder, x: str, t: Any) -> str:  # Sqrt as Pow(v, 0.5), then Reciprocal
    r = b("Reciprocal", b("Pow", _std_eps(b, x, t), b.const(0.5, t)))
    return b("Mul", b("Mul", x, r), b.const(_gamma(), t))


def _llama(b: _Builder, x: str, t: Any) -> str:
    """x.to(float32), the math in float32, .to(input_dtype), then weight * it."""
    xf = b("Cast", x, to=TensorProto.FLOAT)
    r = b("Div", b.const(1.0, np.float32), b("Sqrt", _std_eps(b, xf, np.float32)))
    back = b("Cast", b("Mul", xf, r), to=helper.np_dtype_to_tensor_dtype(np.dtype(t)))
    return b("Mul", b.const(_gamma(), t), back)


def _t5(b: _Builder, x: str, t: Any) -> str:
    """The variance of x.to(float32); x * rsqrt(...) promotes x with a second Cast; cast back
    only when the weight is float16."""
    var_eps = _std_eps(b, b("Cast", x, to=TensorProto.FLOAT), np.float32)
    r = b("Div", b.const(1.0, np.float32), b("Sqrt", var_eps))
    normed = b("Mul", b("Cast", x, to=TensorProto.FLOAT), r)
    if np.dtype(t) != np.float32:
        normed = b("Cast", normed, to=helper.np_dtype_to_tensor_dtype(np.dtype(t)))
    return b("Mul", b.const(_gamma(), t), normed)


def _gemma(b: _Builder, x: str, t: Any) -> str:
    """float32 math, gamma = 1 + w (an Add left unfolded) applied before .type_as(x)."""
    xf = b("Cast", x, to=TensorProto.FLOAT)
    r = b("Pow", _std_eps(b, xf, np.float32, b("Mul", xf, xf)), b.const(-0.5, np.float32))
    gamma = b("Add", b.const(1.0, np.float32), b.const(_gamma() - 1, np.float32))
    scaled = b("Mul", b("Mul", xf, r), gamma)
    return b("Cast", scaled, to=helper.np_dtype_to_tensor_dtype(np.dtype(t)))


def _flax(b: _Builder, x: str, t: Any) -> str:  # x * (rsqrt * gamma)
    r = b("Reciprocal", b("Sqrt", _std_eps(b, x, t)))
    return b("Mul", x, b("Mul", r, b.const(_gamma(), t)))


def _no_gamma(b: _Builder, x: str, t: Any) -> str:
    return b("Mul", x, b("Reciprocal", b("Sqrt", _std_eps(b, x, t))))


SPELLINGS: dict[str, Callable[[_Builder, str, Any], str]] = {
    "dynamo": _dynamo, "torchscript": _torchscript, "div_sqrt": _div_sqrt,
    "pow_minus_half": _pow_minus_half, "pow_half": _pow_half, "llama": _llama, "t5": _t5,
    "gemma": _gemma, "flax": _flax, "no_gamma": _no_gamma,
}
DTYPES = {"float32": np.float32, "float16": np.float16}


def spelled(spelling: str, dtype: str, opset: int) -> onnx.ModelProto:
    b = _Builder(opset)
    t = DTYPES[dtype]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(t))
    return b.model(elem, SPELLINGS[spelling](b, "x", t), elem)


# ---- checking a rewrite --------------------------------------------------------------------

def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    work = onnx.ModelProto()
    work.CopyFrom(model)
    return work


def _rewrite(model: onnx.ModelProto, passes: str) -> onnx.ModelProto:
    out, _ = onnxpass.rewrite(_copy(model), passes)
    return out


def _default_session(model: onnx.ModelProto) -> Any:
    """ONNX Runtime as a user runs it: default session options (optimizations on)."""
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _same_outputs(original: onnx.ModelProto, rewritten: onnx.ModelProto,
                  feeds: list[dict[str, np.ndarray]], tol: float) -> list[str]:
    """Problems: outputs of ``rewritten`` (run with default options) beyond ``tol`` of the
    output's scale from ``original``'s."""
    session = _default_session(rewritten)
    wanted = {i.name for i in session.get_inputs()}
    bad = []
    for feed in feeds:
        want = run(original, feed)
        got = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {k: v for k, v in feed.items() if k in wanted})))
        for name, w in want.items():
            stats, err = scaled_stats(name, w, np.asarray(got[name]), tol)
            if not stats.within:
                bad.append(f"{stats.line()} (scaled max {err:.3g}, tol {tol:g})")
    return bad


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


NORMS = (*FUSED, "LayerNormalization", "LayerNormPlugin")


def _left_alone(original: onnx.ModelProto, out: onnx.ModelProto) -> None:
    """No normalization was fused and the decomposition's reductions and roots are all still
    there (the runner's canonical pass may tidy other nodes: a Cast to x's own type, say)."""
    a, b = _ops(original), _ops(out)
    assert all(b[n] == a[n] for n in NORMS), b
    assert all(b[n] == a[n] for n in ("ReduceMean", "Sqrt", "Pow", "Reciprocal")), (a, b)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# ---- every spelling, both forms, four opsets, two dtypes -----------------------------------

OPSETS = (14, 17, 18, 23)
CASES = [(s, f, o, d) for s in SPELLINGS for f in ("std", "plugin") for o in OPSETS
         for d in DTYPES]


@pytest.mark.parametrize("spelling,form,opset,dtype", CASES,
                         ids=[f"{s}-{f}-opset{o}-{d}" for s, f, o, d in CASES])
def test_spelling_fuses(spelling: str, form: str, opset: int, dtype: str) -> None:
    original = spelled(spelling, dtype, opset)
    out = _rewrite(original, f"rmsnorm={form}")
    fused = "RMSNormalization" if form == "std" else "RMSNormPlugin"
    want = Counter({fused: 1})
    if spelling == "gemma":  # gamma's 1 + w stays; float16 x goes in cast up, comes out back
        want["Add"] = 1
        if dtype == "float16":
            want["Cast"] = 2
    assert _ops(out) == want, _ops(out)
    node = next(n for n in out.graph.node if n.op_type == fused)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    upcast = spelling in ("llama", "t5", "gemma")  # eps is in the type of the math
    eps = np.float32(np.float32(1e-6) if upcast else DTYPES[dtype](1e-6))
    assert attrs["axis"] == -1 and np.float32(attrs["epsilon"]) == eps
    if form == "std":
        assert attrs["stash_type"] == 1 and _opset(out) == 23
    else:
        assert node.domain == DOMAIN and [f.name for f in out.functions] == ["RMSNormPlugin"]
        plugin_float16 = dtype == "float16" and spelling != "gemma"
        assert _opset(out) == (max(opset, 15) if plugin_float16 else opset)
    feeds = [random_inputs(original, seed=k) for k in range(2)]
    bad = _same_outputs(original, out, feeds, RTOL16 if dtype == "float16" else RTOL)
    assert not bad, "\n".join(bad)


def test_std_and_plugin_forms_are_in_the_pipelines() -> None:
    default, plugins = pipelines()["default"], pipelines()["plugins"]
    assert default.index("rmsnorm") == default.index("layernorm") + 1
    assert plugins.index("rmsnorm=plugin") == plugins.index("layernorm=plugin") + 1


# ---- near-misses: each computes something else, or cannot be fused as it stands -------------

def _near_miss(name: str) -> onnx.ModelProto:
    b = _Builder(17)
    f32 = np.float32
    eps, two = b.const(1e-6, f32), b.const(2.0, f32)
    x = "x"
    extra: tuple[str, ...] = ()
    if name == "mean_of_x":  # no square: x / sqrt(mean(x) + eps)
        y = b("Div", x, b("Sqrt", b("Add", b.mean(x, [-1]), eps)))
    elif name == "pow_3":
        y = b("Div", x, b("Sqrt", b("Add", b.mean(b("Pow", x, b.const(3.0, f32)), [-1]), eps)))
    elif name == "pow_2_0001":
        sq = b("Pow", x, b.const(2.0001, f32))
        y = b("Div", x, b("Sqrt", b("Add", b.mean(sq, [-1]), eps)))
    elif name == "sqrt_without_reciprocal":  # x * sqrt(mean(x^2) + eps)
        y = b("Mul", x, b("Sqrt", b("Add", b.mean(b("Pow", x, two), [-1]), eps)))
    elif name == "div_2_by_sqrt":
        r = b("Div", b.const(2.0, f32), b("Sqrt", b("Add", b.mean(b("Pow", x, two), [-1]), eps)))
        y = b("Mul", x, r)
    elif name == "eps_not_scalar":  # one eps per row
        rows = b.const(np.linspace(1e-6, 1e-3, 10).reshape(2, 5, 1), f32)
        y = b("Div", x, b("Sqrt", b("Add", b.mean(b("Pow", x, two), [-1]), rows)))
    elif name == "axes_not_normalizable":  # over axes 0 and 2 of a rank-3 x
        y = b("Div", x, b("Sqrt", b("Add", b.mean(b("Pow", x, two), [0, 2]), eps)))
    elif name == "keepdims_0":
        ms = b.mean(b("Pow", x, two), [0], keepdims=0)  # [5, 16] broadcasts against [2, 5, 16]
        y = b("Div", x, b("Sqrt", b("Add", ms, eps)))
    elif name == "cast_narrows_in_the_middle":  # the mean of squares rounded to float16
        ms = b("Cast", b.mean(b("Pow", x, two), [-1]), to=TensorProto.FLOAT16)
        r = b("Reciprocal", b("Sqrt", b("Add", ms, b.const(1e-3, np.float16))))
        y = b("Mul", b("Mul", x, b("Cast", r, to=TensorProto.FLOAT)), b.const(_gamma(), f32))
    elif name == "gamma_varies_along_batch":
        normed = b("Div", x, b("Sqrt", b("Add", b.mean(b("Pow", x, two), [-1]), eps)))
        y = b("Mul", normed, b.const(np.stack([_gamma(), -_gamma()])[:, None, :], f32))
    elif name == "intermediate_used_outside":  # the mean of squares is also an output
        ms = b.mean(b("Pow", x, two), [-1])
        y = b("Div", x, b("Sqrt", b("Add", ms, eps)))
        extra = (ms,)
    else:  # pragma: no cover - a misspelled case name
        raise KeyError(name)
    return b.model(TensorProto.FLOAT, y, TensorProto.FLOAT, extra)


# name -> part of the reason ``onnxpass match --explain`` gives (None: the pattern stops early)
NEAR_MISSES: dict[str, str | None] = {
    "mean_of_x": None,
    "pow_3": "is not 2.0",
    "pow_2_0001": "is not 2.0",
    "sqrt_without_reciprocal": None,
    "div_2_by_sqrt": None,
    "eps_not_scalar": "eps has 10 elements, expected a scalar",
    "axes_not_normalizable": "which are not the trailing axes",
    "keepdims_0": None,
    "cast_narrows_in_the_middle": None,
    "gamma_varies_along_batch": None,  # refused with gamma, then fused without it (below)
    "intermediate_used_outside": "internal value 'reducemean1' is a graph output",
}


def _reasons(model: onnx.ModelProto, passes: str) -> list[str]:
    """Why the pass's rules do not apply, at every node they were tried (at any opset)."""
    g = Graph(_copy(model))
    g.refresh_types()
    (p,) = parse_passes(passes)
    assert isinstance(p, PatternPass)
    return [a.reason for a in explain(g, p.rules()) if not a.matched]


@pytest.mark.parametrize("name", list(NEAR_MISSES))
@pytest.mark.parametrize("form", ["std", "plugin"])
def test_near_miss_is_left_alone(name: str, form: str) -> None:
    original = _near_miss(name)
    _default_session(original)  # a valid model, which ONNX Runtime runs
    out = _rewrite(original, f"rmsnorm={form}")
    if name == "gamma_varies_along_batch":
        # Not an RMSNorm with this gamma; the RMSNorm inside it (no gamma) fuses and the Mul
        # stays, which computes the same.
        assert _ops(out)["Mul"] == 1 and sum(_ops(out)[f] for f in FUSED) == 1
        bad = _same_outputs(original, out, [random_inputs(original)], RTOL)
        assert not bad, bad
        reasons = _reasons(original, f"rmsnorm={form}")
        assert any("gamma varies along axis 0, which is not normalized" in r for r in reasons)
        return
    _left_alone(original, out)
    assert _opset(out) == 17
    want = NEAR_MISSES[name]
    if want is not None:
        reasons = _reasons(original, f"rmsnorm={form}")
        assert any(want in r for r in reasons), reasons


def _narrowed(where: str) -> onnx.ModelProto:
    """A float32 x cast down to float16 and normalized there (``before``), or normalized in
    float32 and cast down before a float16 gamma (``after``)."""
    b = _Builder(17)
    h16, f32 = np.float16, np.float32
    if where == "before":
        h = b("Cast", "x", to=TensorProto.FLOAT16)
        normed = b("Div", h, b("Sqrt", _std_eps(b, h, h16)))
        y = b("Mul", b("Cast", normed, to=TensorProto.FLOAT), b.const(_gamma(), f32))
    else:
        normed = b("Div", "x", b("Sqrt", _std_eps(b, "x", f32)))
        y = b("Mul", b("Cast", normed, to=TensorProto.FLOAT16), b.const(_gamma(), h16))
    return b.model(TensorProto.FLOAT, y, TensorProto.FLOAT if where == "before" else
                   TensorProto.FLOAT16)


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_narrowing_cast_stays_outside_the_fused_op(where: str) -> None:
    """x cast from float32 down to float16 is not the float32 x the fused op would read, nor is
    a float32 result rounded to float16 the op's float32 output: the Cast stays, and the RMSNorm
    on its one side is what fuses (in float16 before, float32 after)."""
    original = _narrowed(where)
    out = _rewrite(original, "rmsnorm")
    want = ["Cast", "RMSNormalization", "Cast", "Mul"] if where == "before" else \
        ["RMSNormalization", "Cast", "Mul"]
    assert [n.op_type for n in out.graph.node] == want
    reasons = _reasons(original, "rmsnorm")
    assert any(("x is cast from 1 down to 10" if where == "before" else
                "the result is cast to 10, not back to x's 1") in r for r in reasons), reasons
    bad = _same_outputs(original, out, [random_inputs(original)], RTOL16)
    assert not bad, bad


# ---- LayerNorm and RMSNorm are never taken for each other ----------------------------------

LAYERNORM_GOLDENS = sorted((ROOT / "goldens" / "layernorm").glob("*.golden"))


@pytest.mark.parametrize("path", LAYERNORM_GOLDENS, ids=[p.stem for p in LAYERNORM_GOLDENS])
def test_rmsnorm_never_fires_on_a_layernorm(path: Path) -> None:
    """Every LayerNorm spelling of the layernorm goldens (and their near-misses): x - mean is
    normalized like an RMSNorm, but rmsnorm must leave the LayerNorm whole."""
    original = onnx.parser.parse_model(GoldenCase.parse(path).source)
    for form in ("std", "plugin"):
        _left_alone(original, _rewrite(original, f"rmsnorm={form}"))


@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_layernorm_never_fires_on_an_rmsnorm(spelling: str, dtype: str) -> None:
    original = spelled(spelling, dtype, 17)
    for form in ("std", "plugin"):
        _left_alone(original, _rewrite(original, f"layernorm={form}"))


def test_rmsnorm_leaves_a_real_layernorm_model_alone(real_models) -> None:  # type: ignore
    """BERT (TorchScript, opset 14, every LayerNorm decomposed) has nothing for rmsnorm."""
    path = real_models.export("bert", "torchscript")
    if isinstance(path, str):
        pytest.fail(path)
    original = onnx.load(str(path))
    assert _ops(original)["ReduceMean"] >= 10
    for form in ("std", "plugin"):
        out = _rewrite(original, f"rmsnorm={form}")
        _left_alone(original, out)
        assert _opset(out) == _opset(original)


# ---- real exports: T5 encoder, Llama, Qwen2 -------------------------------------------------

RMSNORM_MODULES = frozenset({"RMSNorm", "T5LayerNorm", "LlamaRMSNorm", "Qwen2RMSNorm"})
REAL = ("t5_encoder", "llama", "qwen2")
_CALLS: dict[str, int] = {}


def rmsnorm_calls(name: str) -> int:
    """How many times the torch model runs an RMSNorm module (T5LayerNorm is one); every
    module runs once. Counted once per model."""
    if name not in _CALLS:
        import torch

        built = MODELS[name]()
        modules = [m for m in built.module.modules() if type(m).__name__ in RMSNORM_MODULES]
        calls: list[str] = []
        hooks = [m.register_forward_hook(lambda mod, i, o: calls.append(type(mod).__name__))
                 for m in modules]
        with torch.no_grad():
            built.module(*built.args)
        for h in hooks:
            h.remove()
        assert len(calls) == len(modules) > 0, (calls, modules)
        _CALLS[name] = len(calls)
    return _CALLS[name]


REAL_CASES = [(m, e, f) for m in REAL for e in exporters(m) for f in ("std", "plugin")]


@pytest.mark.parametrize("name,exporter,form", REAL_CASES,
                         ids=[f"{m}-{e}-{f}" for m, e, f in REAL_CASES])
def test_real_export_every_rmsnorm_fuses(heldout_exports, name: str, exporter: str,  # type: ignore
                                         form: str) -> None:
    path = heldout_exports.export(name, exporter)
    if isinstance(path, str):  # an exporter failure is a finding, not a skip
        pytest.fail(path)
    original = onnx.load(str(path))
    out = _rewrite(original, f"rmsnorm={form}")
    ops = _ops(out)
    fused = "RMSNormalization" if form == "std" else "RMSNormPlugin"
    assert ops[fused] == rmsnorm_calls(name), ops
    assert ops["ReduceMean"] == 0 and ops["Sqrt"] == 0, ops  # nothing of them is left behind
    assert not any(n.op_type == "LayerNormalization" for n in out.graph.node)
    tol = RTOL16 if EXPORTERS[exporter][1] else RTOL
    bad = _same_outputs(original, out, heldout_exports.feeds(name, exporter), tol)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", REAL)
def test_layernorm_never_fires_on_a_real_rmsnorm(heldout_exports, name: str) -> None:  # type: ignore
    path = heldout_exports.export(name, exporters(name)[0])
    if isinstance(path, str):
        pytest.fail(path)
    original = onnx.load(str(path))
    for form in ("std", "plugin"):
        _left_alone(original, _rewrite(original, f"layernorm={form}"))


# ---- RMSNormalization nodes: dynamo at opset 23 writes them --------------------------------

@pytest.fixture(scope="module")
def llama_opset23(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """Llama exported by dynamo at opset 23: onnxscript's optimizer writes RMSNormalization."""
    import torch

    from tests.models_heldout import feeds

    built = MODELS["llama"]()
    path = tmp_path_factory.mktemp("llama23") / "llama-dynamo23.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(built.module, built.args, input_names=built.input_names,
                                    output_names=built.output_names, dynamo=True,
                                    opset_version=23)
        assert program is not None
        program.save(str(path))
    return path, feeds("llama", built)


def test_native_rmsnormalization_becomes_the_plugin(llama_opset23) -> None:  # type: ignore
    path, feeds = llama_opset23
    original = onnx.load(str(path))
    assert _ops(original)["RMSNormalization"] == rmsnorm_calls("llama")
    assert _ops(_rewrite(original, "rmsnorm"))["RMSNormalization"] == rmsnorm_calls("llama")
    out = _rewrite(original, "rmsnorm=plugin")
    ops = _ops(out)
    assert ops["RMSNormPlugin"] == rmsnorm_calls("llama") and ops["RMSNormalization"] == 0
    bad = _same_outputs(original, out, feeds, RTOL)
    assert not bad, "\n".join(bad)


def _native(scale_shape: list[int], scale_type: int = TensorProto.FLOAT, stash_type: int = 1,
            x_type: int = TensorProto.FLOAT, axis: int = -1) -> onnx.ModelProto:
    dtype = helper.tensor_dtype_to_np_dtype(scale_type)
    scale = numpy_helper.from_array(
        (1 + 0.3 * np.random.default_rng(0).standard_normal(scale_shape)).astype(dtype), "s")
    node = helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=axis, epsilon=1e-5,
                            stash_type=stash_type)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", x_type, [2, 4, 6])],
                              [helper.make_tensor_value_info("y", scale_type, [2, 4, 6])], [scale])
    return onnx.shape_inference.infer_shapes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10))


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
@pytest.mark.parametrize("axis,scale_shape", [(-1, [6]), (1, [4, 6]), (-1, [1, 1, 6])])
def test_native_forms_become_the_plugin(dtype: int, axis: int, scale_shape: list[int]) -> None:
    original = _native(scale_shape, dtype, x_type=dtype, axis=axis)
    out = _rewrite(original, "rmsnorm=plugin")
    assert _ops(out) == Counter({"RMSNormPlugin": 1})
    bad = _same_outputs(original, out, [random_inputs(original)],
                        RTOL16 if dtype == TensorProto.FLOAT16 else RTOL)
    assert not bad, bad


@pytest.mark.parametrize("case", ["scale_broadcasts", "scale_of_other_type", "stash_float16"])
def test_native_forms_the_plugin_cannot_take_stay(case: str) -> None:
    original = {
        "scale_broadcasts": lambda: _native([1]),  # one value for every column
        "scale_of_other_type": lambda: _native([6], TensorProto.FLOAT, x_type=TensorProto.FLOAT16),
        "stash_float16": lambda: _native([6], stash_type=TensorProto.FLOAT16),
    }[case]()
    assert _ops(_rewrite(original, "rmsnorm=plugin")) == Counter({"RMSNormalization": 1})
