"""Plugin ops that passes emit. Each module registers one :class:`PluginSpec`."""

from onnxpass.plugins import gelu, layernorm
from onnxpass.plugins import attention  # noqa: F401
from onnxpass.plugins import l2norm  # noqa: F401
from onnxpass.plugins import mask2pos, masked_softmax  # noqa: F401
from onnxpass.plugins import add_bias_transpose  # noqa: F401
from onnxpass.plugins.base import DOMAIN, NAMESPACE, PluginAttr, PluginSpec, all_plugins, get_plugin

__all__ = ["DOMAIN", "NAMESPACE", "PluginAttr", "PluginSpec", "all_plugins", "get_plugin", "gelu",
           "layernorm"]
