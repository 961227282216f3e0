"""NumPy references, Triton kernels and their launch plans for plugin ops: one module per
plugin, each registering a :class:`KernelSpec` (see base.py). TensorRT registration of these
kernels is in onnxpass/plugins/trt.py."""

from onnxpass.plugins.kernels import (  # noqa: F401  # noqa: F401
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
from onnxpass.plugins.kernels.base import (
                                     AotKernel,
                                     Case,
                                     KernelSpec,
                                     Launch,
                                     aot_kernel,
                                     get_kernel,
                                     implementations,
                                     run,
)

__all__ = ["AotKernel", "Case", "KernelSpec", "Launch", "aot_kernel", "get_kernel",
           "implementations", "run"]
