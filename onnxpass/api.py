"""The Python entry point: rewrite a model in memory."""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from onnxpass.graph import Graph
from onnxpass.passes.base import Pass, parse_passes
from onnxpass.passes.manager import PassManager, PipelineResult


def rewrite(model: onnx.ModelProto, passes: str | Sequence[str] | Sequence[Pass] = "default",
            base_dir: str = "", check: bool = True) -> tuple[onnx.ModelProto, PipelineResult]:
    """Run ``passes`` (a spec like ``"layernorm,gelu=plugin"``) over ``model``, in place.
    Returns the rewritten model and the per-pass statistics."""
    if isinstance(passes, str) or (passes and isinstance(next(iter(passes)), str)):
        plist = parse_passes(passes)  # type: ignore[arg-type]
    else:
        plist = list(passes)  # type: ignore[arg-type]
    result = PassManager(plist, check=check).run(Graph(model, base_dir))
    return result.graph.to_model(), result
