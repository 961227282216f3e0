"""Coverage: for each model and exporter, how many instances of each pattern the source model
computes and how many the pass fuses. Writes docs/coverage.md (or --out) and prints it.

    python bench/coverage.py [--models vit,llama,paddle] [--exporters ts14,dynamo] [--out FILE]

Sources: the torch models of tests/models.py, tests/models_attention.py (DeiT),
tests/models_anchordetr.py, tests/models_mstpp.py and tests/models_heldout.py (GPT-2, T5,
Llama, Qwen2 GQA, Whisper, BEiT; Mask2Former on request: its dynamo exports take a minute each),
exported by the exporters of tests/models_heldout.py (TorchScript at opset 14, dynamo at its
default opset, a float16 TorchScript export at opset 16, TorchScript at opset 17 with batch and
sequence dynamic); and the graphs tests/models_exporters.py builds as Paddle2ONNX and tf2onnx
write them (rows skipped, with a note, where that module is absent).

"present" comes from the source model, never from the graph: for torch models from running it
(calls of LayerNorm, RMSNorm and GELU modules and functions, softmax / scaled_dot_product_attention
or attention modules, F.normalize, masked softmax and mask cumsum, rotate_half), for the built
graphs the counts their builder states. Passes without such a count (structural rewrites) show
"-" and their number of rewrites. Each pass runs alone, in its default form, after the clean-up
prelude on its own copy of the export.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import onnx
import torch

from onnxpass.api import rewrite
from onnxpass.passes.base import registry
from tests import models, models_anchordetr, models_attention, models_heldout, models_mstpp
from tests.models import Built, half

try:  # written alongside; its graphs are rows only where it exists
    from tests import models_exporters
except ImportError:
    models_exporters = None


@dataclass(frozen=True)
class Target:
    """A pass and the op types that count as a fused instance (either form)."""

    spec: str
    ops: tuple[str, ...]


TARGETS = [
    Target("layernorm", ("LayerNormalization", "LayerNormPlugin")),
    Target("rmsnorm", ("RMSNormalization", "RMSNormPlugin")),
    Target("gelu", ("Gelu", "GeluPlugin")),
    Target("attention", ("Attention", "AttentionPlugin")),
    Target("rotary", ("RotaryEmbedding", "RotaryEmbeddingPlugin")),
    Target("masked_softmax", ("MaskedSoftmaxPlugin",)),
    Target("mask2pos", ("Mask2PosPlugin",)),
    Target("l2norm", ("L2NormPlugin",)),
    Target("add_bias_transpose", ()),
    Target("matmul2d", ()),
    Target("tile", ()),
    Target("const_slice", ()),
]
COUNTED = [t.spec for t in TARGETS if t.ops]

PRELUDE = "fold,noop,cse,shape_of"
EXPORTERS = ("ts14", "dynamo", "ts16-fp16", "ts17-dyn")
NOTES = [
    "## Where present and fused differ", "",
    "- **anchordetr, attention**: the torch count is every softmax. Row-column decoupled attention"
    " (RCDA) runs two per layer: the column weights times V is an attention and is fused; the row"
    " weights then contract a different axis of that result (a batched vector-matrix product),"
    " which"
    " no attention op expresses. 3 of 5 are attentions, and all 3 are fused; the masked row"
    " softmaxes are fused by `masked_softmax` (tests/test_anchordetr.py checks both pipelines).",
    "- **more** in masked_softmax: the dynamo exporter's decomposition of"
    " scaled_dot_product_attention builds an explicit mask, so its softmaxes are masked softmaxes"
    " in the graph though not in torch.",
    "- **masked_softmax** has no torch count for the models of tests/models_heldout.py (GPT-2"
    " and later): all their softmaxes are inside attention modules, which `attention` fuses"
    " first in every pipeline.",
    "- **ts17-dyn** leaves the batch and the token sequence dynamic (the image models have no"
    " sequence input: the batch only); **ts16-fp16** is the float16 model (`model.half()`).",
    "",
]


@dataclass
class Source:
    """A row group: where instances are counted and how each exporter's graph is made
    (``graph(exporter, path)`` writes it, or raises: the export failed)."""

    name: str
    present: Callable[[], dict[str, int]]
    exporters: tuple[str, ...]
    graph: Callable[[str, Path], None]


def _torch_present(builder: Callable[[], Built], attention_modules: bool) -> dict[str, int]:
    """Counts from one torch model: attention as modules (tests/models_heldout.py) or, for the
    models whose attention is not a module of its own, as softmax and SDPA calls."""
    b = builder()
    kinds = models_heldout.torch_counts(b)
    anchor = models_anchordetr.torch_counts(b.module, b.args)
    present = {**{k: kinds[k] for k in ("layernorm", "rmsnorm", "gelu")},
               "attention": models_attention.attention_count(b), "rotary":
               models_heldout.rotary_count(b), "masked_softmax": anchor.masked_softmax,
               "mask2pos": anchor.mask2pos,
               "l2norm": sum(models_mstpp.l2norm_calls(b).values())}
    if attention_modules:
        # Every softmax is inside an attention module, which the attention pass claims first
        # in every pipeline; the masked-softmax count (made for AnchorDETR's row softmax) would
        # take a relative-position bias for a mask.
        present["attention"] = kinds["attention"]
        del present["masked_softmax"]
    return present


def _torch_source(name: str, builder: Callable[[], Built], attention_modules: bool,
                  exporters: tuple[str, ...]) -> Source:
    def graph(exporter: str, path: Path) -> None:
        built = builder()  # fresh per export: tracing may leave state behind
        models_heldout.export(half(built) if models_heldout.EXPORTERS[exporter][1] else built,
                              exporter, path)

    return Source(name, lambda: _torch_present(builder, attention_modules), exporters, graph)


class _Positional(torch.nn.Module):
    """forward(*args): the calling convention tests/models_heldout.py's export gives dynamo
    its dynamic shapes for."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> Any:
        return self.model(*args)


def _anchordetr() -> Built:
    model, args = models_anchordetr.build()
    return Built(_Positional(model).eval(), args, list(models_anchordetr.INPUT_NAMES),
                 list(models_anchordetr.OUTPUT_NAMES))


def _built_graph(name: str, builder: Callable[[], Any]) -> Source:
    """A graph tests/models_exporters.py builds: (model, counts, feeds) or an object with
    those fields."""
    @functools.cache
    def parts() -> tuple[onnx.ModelProto, dict[str, int]]:
        e = builder()
        model, counts = (e.model, e.counts) if hasattr(e, "model") else (e[0], e[1])
        return model, counts

    def present() -> dict[str, int]:
        counts = parts()[1]
        return {t: counts.get(t, 0) for t in COUNTED}

    def graph(exporter: str, path: Path) -> None:
        onnx.save(parts()[0], str(path))

    producer = parts()[0].producer_name or "graph"
    return Source(name, present, (producer,), graph)


def sources() -> dict[str, Source]:
    out: dict[str, Source] = {}
    for name, builder in {**models.MODELS, "deit": models_attention.deit,
                          "anchordetr": _anchordetr, "mstpp": models_mstpp.mstpp}.items():
        out[name] = _torch_source(name, builder, False, EXPORTERS)
    for name, builder in models_heldout.MODELS.items():
        wanted = ("ts16", "ts17", "dynamo23", "dynamo-fp16") if name == "mask2former" else (
            EXPORTERS)
        out[name] = _torch_source(name, builder, True, wanted)
    if models_exporters is not None:
        for name, builder in getattr(models_exporters, "BUILDERS", {}).items():
            out[name] = _built_graph(name, builder)
    return out


DEFAULT = [n for n in sources() if n != "mask2former"]


def _count(model: onnx.ModelProto, ops: tuple[str, ...]) -> int:
    return sum(n.op_type in ops for n in model.graph.node)


def _cell(fused: int | None, native: int, rewrites: int, present: int | None) -> str:
    if fused is None:
        return str(rewrites)
    text = f"{fused}" + (" (native)" if native and native == fused else
                         f" ({native} native)" if native else "")
    if present is None or fused == present:
        return text
    return f"{text} more" if fused > present else f"**{text}**"


def column(source: Source, exporter: str, present: dict[str, int], work: Path) -> list[str]:
    """One cell per target for ``source`` exported by ``exporter``."""
    path = work / f"{source.name}-{exporter}.onnx"
    try:
        source.graph(exporter, path)
    except Exception as e:
        why = str(e).strip().splitlines()[0][:60] if str(e).strip() else ""
        return [f"export failed: {type(e).__name__}: {why}"] + [""] * (len(TARGETS) - 1)
    base, _ = rewrite(onnx.load(str(path)), PRELUDE)
    passes = registry()
    cells = []
    for t in TARGETS:
        if t.spec not in passes:
            cells.append("(no pass)")
            continue
        work_model = onnx.ModelProto()
        work_model.CopyFrom(base)
        try:
            out, result = rewrite(work_model, t.spec)
        except Exception as e:
            cells.append(f"error: {type(e).__name__}: {str(e).splitlines()[0][:60]}")
            continue
        rewrites = sum(s.matches for s in result.stats if s.name.partition("=")[0] == t.spec)
        fused = _count(out, t.ops) if t.ops else None
        cells.append(_cell(fused, _count(base, t.ops) if t.ops else 0, rewrites,
                           present.get(t.spec)))
    return cells


def coverage(names: list[str], exporters: list[str] | None, work: Path) -> list[str]:
    lines = ["# Coverage", "",
             "Instances present (counted in the source model) vs fused, per pass (each alone, in "
             "its default form), model and exporter. A cell is the fused count; **bold**: fewer "
             "than present; \"native\": that many were already the exporter's own ops; "
             "\"more\": the graph holds instances the source does not compute as such; passes "
             "without a count show their number of rewrites. Regenerate with "
             "`python bench/coverage.py`.", ""]
    available = sources()
    for name in names:
        source = available[name]
        t0 = time.perf_counter()
        present = source.present()
        # a source none of whose exporters was asked for (Mask2Former, a built graph) shows
        # its own
        columns = [e for e in source.exporters if exporters is None or e in exporters] or list(
            source.exporters)
        cells = [column(source, e, present, work) for e in columns]
        lines += [f"## {name}", "",
                  "| pass | present | " + " | ".join(columns) + " |",
                  "| --- | ---: |" + " ---: |" * len(columns)]
        for k, t in enumerate(TARGETS):
            p = present.get(t.spec)
            lines.append(f"| {t.spec} | {'-' if p is None else p} | "
                         + " | ".join(c[k] for c in cells) + " |")
        lines.append("")
        print(f"{name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    if models_exporters is None:
        lines += ["The Paddle2ONNX-style and tf2onnx-style graphs are missing: "
                  "tests/models_exporters.py is not there.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(DEFAULT),
                    help=f"any of {', '.join(sources())}")
    ap.add_argument("--exporters", default=",".join(EXPORTERS),
                    help="columns for the torch models (tests/models_heldout.py's EXPORTERS)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" /
                                         "coverage.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lines = coverage(args.models.split(","), args.exporters.split(","), Path(tmp))
    text = "\n".join(lines + NOTES) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
