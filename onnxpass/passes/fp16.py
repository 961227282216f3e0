"""The fp16 and bf16 passes live in :mod:`onnxpass.passes.lowprec` (one class, two targets) and the
pin-list file in :mod:`onnxpass.passes.pins`; these names stay importable from here."""

from onnxpass.passes.lowprec import BFloat16, Float16, LowPrecision, converted_outputs
from onnxpass.passes.pins import PinList, node_key, read_pins

__all__ = ["BFloat16", "Float16", "LowPrecision", "PinList", "converted_outputs", "node_key",
           "read_pins"]
