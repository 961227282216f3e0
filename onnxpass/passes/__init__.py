"""Passes: one module per pass; its docstring states the math it matches and the forms it emits."""

from onnxpass.passes.base import (
    Pass, PassContext, PatternPass, parse_passes, pipelines, register, register_pipeline, registry,
)

__all__ = ["Pass", "PassContext", "PatternPass", "parse_passes", "pipelines", "register",
           "register_pipeline", "registry"]
