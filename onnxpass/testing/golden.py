"""Golden-graph tests: a model in ONNX text syntax, the passes to run, and the expected result.

A ``.golden`` file reads top to bottom::

    # passes: layernorm=plugin
    # target: trt-8.6        (optional: the TensorRT whose import the forms fit)
    # load: my_passes.py     (optional: a file or module that registers the passes)
    # Any other comment lines describe the case.
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,8] x) => (float[2,8] y) { ... }
    # expected:
    <ir_version: 8, ...>
    g (float[2,8] x) => (float[2,8] y) { ... }

A negative case (a near-miss the pass must leave alone) ends in ``# expected: unchanged``.
``pytest --update-goldens`` rewrites expected sections but never turns a negative case into a
positive one or back: that change fails and is made by hand.
The comparison is structural: value and node names are canonicalized (renamed in topological
order), node metadata and inferred value_info are dropped, initializers compare by value. A plugin
node's local function (its reference decomposition) prints as one digest line,
``# function onnxpass.LayerNormPlugin sha256:<16 hex digits>`` of its text: its body is tested once,
in tests/test_plugin_reference.py, not copied into every golden file that emits the plugin. Then the
input and the result run in ONNX Runtime on the same random inputs and must agree (a result with
bfloat16 values runs as :func:`onnxpass.debug_precision.simulate_float16` rewrites it: ORT's CPU
provider has no bfloat16 arithmetic).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxpass.api import rewrite
from onnxpass.loadcheck import check_loadable
from onnxpass.plugins.base import DOMAIN
from onnxpass.verify import compare_models, random_inputs

EXPECTED = "# expected:"
UNCHANGED = "unchanged"


class GoldenMismatch(AssertionError):
    """The rewritten graph differs from the golden file, or its outputs differ from the input's."""


@dataclass
class GoldenCase:
    path: Path
    passes: str
    source: str
    expected: str | None  # None: the graph must come out unchanged
    header: str
    rtol: float = 1e-5
    atol: float = 1e-6
    target: str | None = None  # '# target: trt-8.6': the TensorRT the forms fit
    load: str | None = None  # '# load: examples/gs_layernorm.py': registers the passes first

    @classmethod
    def parse(cls, path: str | Path) -> GoldenCase:
        path = Path(path)
        text = path.read_text()
        head, sep, tail = text.partition(f"\n{EXPECTED}")
        if not sep:
            raise GoldenMismatch(f"{path}: no '{EXPECTED}' line")
        lines = head.splitlines()
        header_lines = list(itertools.takewhile(lambda ln: ln.startswith("#"), lines))
        body_start = len(header_lines)
        directives = {m.group(1): m.group(2).strip() for m in
                      (re.match(r"#\s*(passes|rtol|atol|target|load):(.*)", ln)
                       for ln in header_lines)
                      if m}
        if "passes" not in directives:
            raise GoldenMismatch(f"{path}: no '# passes:' line")
        first, _, rest = tail.partition("\n")
        expected = None if first.strip() == UNCHANGED else rest.strip("\n")
        return cls(path, directives["passes"], "\n".join(lines[body_start:]), expected,
                   "\n".join(header_lines),
                   float(directives.get("rtol", 1e-5)), float(directives.get("atol", 1e-6)),
                   directives.get("target"), directives.get("load"))

    def run(self) -> tuple[onnx.ModelProto, onnx.ModelProto]:
        """Parse the input, run the passes; returns (input, output)."""
        if self.load:  # relative to the repository (the golden's parent folders) or absolute
            from onnxpass.passes.graphsurgeon import load_passes

            root = next((p for p in self.path.resolve().parents if (p / self.load).exists()),
                        None)
            load_passes(str(root / self.load) if root else self.load)
        original = onnx.parser.parse_model(self.source)
        onnx.checker.check_model(original)
        work = onnx.ModelProto()
        work.CopyFrom(original)
        out, _ = rewrite(work, self.passes, target=self.target)
        return original, out

    def write(self, actual_text: str | None) -> None:
        tail = (f"{EXPECTED} {UNCHANGED}\n" if actual_text is None
                else f"{EXPECTED}\n{actual_text}\n")
        self.path.write_text(f"{self.header}\n{self.source.rstrip()}\n{tail}")


def value_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    return ({v.name for v in g.input} | {v.name for v in g.output} | {t.name for t in g.initializer}
            | {o for n in g.node for o in n.output})


def canonical_text(model: onnx.ModelProto, keep: set[str] | None = None) -> str:
    """The model in ONNX text syntax with metadata dropped and every value name not in ``keep``
    (default: the graph's inputs and outputs) renamed t0, t1, ... in topological order."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    keep = (keep or set()) | {v.name for v in g.input} | {v.name for v in g.output}
    names: dict[str, str] = {}
    counter = 0

    def rename(v: str) -> str:
        nonlocal counter
        if not v or v in keep:
            return v
        if v not in names:
            names[v] = f"t{counter}"
            counter += 1
        return names[v]

    for n in g.node:
        n.ClearField("name")
        del n.metadata_props[:]
        n.input[:] = [rename(i) for i in n.input]
        n.output[:] = [rename(o) for o in n.output]
    for t in g.initializer:
        t.name = rename(t.name) if t.name in names else t.name
    inits = sorted(g.initializer, key=lambda t: t.name)
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    m.ClearField("producer_name")
    m.ClearField("producer_version")
    # plugin functions become digest lines; any other local function stays in full
    digests = [function_digest(f) for f in m.functions if f.domain == DOMAIN]
    others = [f for f in m.functions if f.domain != DOMAIN]
    del m.functions[:]
    m.functions.extend(others)
    text = onnx.printer.to_text(m)
    return "\n".join([*(line.rstrip() for line in text.splitlines()), *digests])


def function_digest(function: onnx.FunctionProto) -> str:
    """One line naming a local function and a digest of its text (stable across protobuf
    versions, unlike its serialized bytes)."""
    digest = hashlib.sha256(onnx.printer.to_text(function).encode()).hexdigest()[:16]
    return f"# function {function.domain}.{function.name} sha256:{digest}"


def check_golden(path: str | Path, update: bool = False) -> None:
    """Run one golden case; raise :class:`GoldenMismatch` with a readable diff if it fails.
    With ``update``, rewrite the expected section instead of comparing it."""
    case = GoldenCase.parse(path)
    original, out = case.run()
    names = value_names(original)  # names from the input stay readable; new ones are canonical
    before, after = canonical_text(original, names), canonical_text(out, names)
    actual = None if after == before else after
    if update and (case.expected is None) != (actual is None):
        # A near-miss the pass now rewrites (or a rewrite that stopped) is a behaviour change to
        # look at, never something to accept in bulk.
        raise GoldenMismatch(_kind_changed(case, before, after, actual))
    if update:
        case.write(actual)
    elif case.expected is None and actual is not None:
        raise GoldenMismatch(f"{case.path}: expected the graph unchanged, but {case.passes} "
                             f"rewrote it:\n{_diff(before, after, 'input', 'output')}")
    elif case.expected is not None and actual is None:
        raise GoldenMismatch(f"{case.path}: expected a rewrite, but {case.passes} left the graph "
                             f"unchanged (try onnxpass match --explain)")
    elif case.expected is not None and case.expected.strip() != after.strip():
        raise GoldenMismatch(f"{case.path}: output differs from the golden file "
                             f"(pytest --update-goldens accepts it):\n"
                             f"{_diff(case.expected.strip(), after.strip(), 'expected', 'actual')}")
    onnx.checker.check_model(out)
    check_loadable(out, str(case.path))  # what ONNX Runtime refuses and the checker lets by
    feeds = random_inputs(original, seed=0)
    if _has_bfloat16(out):
        from onnxpass.debug_precision import simulate_float16

        out = simulate_float16(out)
    bad = [s.line() for s in compare_models(original, out, feeds, case.rtol, case.atol)
           if not s.within]
    if bad:
        raise GoldenMismatch(f"{case.path}: rewritten model computes something else:\n  "
                             + "\n  ".join(bad))


def _kind_changed(case: GoldenCase, before: str, after: str, actual: str | None) -> str:
    """Why --update-goldens refuses to turn a negative case positive, or the reverse."""
    if case.expected is None:
        return (f"{case.path}: a negative case ('{EXPECTED} {UNCHANGED}'), but {case.passes} "
                f"now rewrites it; --update-goldens does not turn it into a positive case: fix "
                f"the pass, or if the rewrite is right, replace the expected section by hand:\n"
                f"{_diff(before, after, 'input', 'output')}")
    return (f"{case.path}: a positive case, but {case.passes} now leaves the graph unchanged; "
            f"--update-goldens does not turn it into a negative case: fix the pass (try "
            f"onnxpass match --explain), or write '{EXPECTED} {UNCHANGED}' by hand")


def _has_bfloat16(model: onnx.ModelProto) -> bool:
    g = onnx.shape_inference.infer_shapes(model).graph
    return any(t.data_type == onnx.TensorProto.BFLOAT16 for t in g.initializer) or any(
        v.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
        for v in [*g.input, *g.output, *g.value_info])


def _diff(a: str, b: str, name_a: str, name_b: str) -> str:
    return "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), name_a, name_b,
                                          lineterm=""))
