"""Plugin ops that passes emit. Each module registers one :class:`PluginSpec`."""

from onnxpass.plugins import (  # noqa: F401
           add_bias_transpose,
           attention,
           gelu,
           l2norm,
           layernorm,
           mask2pos,
           masked_softmax,
           rmsnorm,
           rotary,
)
from onnxpass.plugins.base import DOMAIN, NAMESPACE, PluginAttr, PluginSpec, all_plugins, get_plugin

__all__ = ["DOMAIN", "NAMESPACE", "PluginAttr", "PluginSpec", "all_plugins", "get_plugin", "gelu",
           "layernorm"]
