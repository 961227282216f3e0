"""Passes: one module per pass; its docstring states the math it matches and the forms it emits."""

from onnxpass.passes.base import (
    Pass,
    PassContext,
    PatternPass,
    parse_passes,
    pipelines,
    register,
    register_pipeline,
    registry,
)

__all__ = ["Pass", "PassContext", "PatternPass", "builtin", "parse_passes", "pipelines",
           "register", "register_pipeline", "registry"]

# The one place the built-in passes and pipelines are loaded and the graph layer learns about
# plugin nodes: importing any module of this package runs this first, so the registry and the
# hooks are in place whatever a caller imports.
from onnxpass.passes import builtin, plugin_hooks

plugin_hooks.install()
