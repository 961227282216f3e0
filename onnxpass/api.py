"""The Python entry point: rewrite a model in memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from onnxpass.passes.base import Pass
from onnxpass.passes.manager import Pipeline, PipelineResult


def rewrite(model: onnx.ModelProto, passes: str | Sequence[str] | Sequence[Pass] = "default",
            base_dir: str = "", check: bool = True, options: Mapping[str, str] | None = None,
            target: str | None = None) -> tuple[onnx.ModelProto, PipelineResult]:
    """Run ``passes`` (a spec like ``"layernorm,gelu=plugin"``, or pass instances) over
    ``model``, in place. ``options`` go to the passes that take them (``{"pins": FILE}`` to the
    fp16 or bf16 pass). ``target`` (``"trt-8.6"``; default onnxpass.targets.DEFAULT_TARGET) is
    the TensorRT the output must import: it picks the passes' forms and caps the opset.
    Returns the rewritten model and the per-pass statistics."""
    return Pipeline(passes, options, flag="options", check=check, target=target
                    ).rewrite(model, base_dir)
