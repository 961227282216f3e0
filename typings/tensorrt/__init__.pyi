# A local stub directory named "tensorrt" (needed for plugin.pyi beside it) hides tensorrt-stubs'
# own tensorrt/__init__.pyi, so this file re-exports it: the API is tensorrt-stubs 10.13's
# (install with `pip install --no-deps tensorrt-stubs==10.13.0.35.1`). APIs newer than 10.13 are
# not declared; code reaches them through getattr/hasattr checks.
from tensorrt_bindings import nptype as nptype
from tensorrt_bindings import volume as volume
from tensorrt_bindings.tensorrt import *

__version__: str
