"""The TensorRT-facing code against TensorRT 11.4's API, from the real bindings wheel.

``tensorrt-cu12-bindings==11.4.0.106`` (PyPI) is a real wheel: its ``tensorrt.so`` cannot be
imported here (it needs libnvinfer.so.11), but its string table names the 11.4 API, and its
``tensorrt_bindings/plugin/`` is the real Python source of ``tensorrt.plugin``. .ci/run downloads
it into .ci/cache; elsewhere these tests skip and say how to get it. What they check:
- the APIs NVIDIA's 10.x -> 11.x migration guide lists as removed are gone from the 11.4
  bindings, and the ones onnxpass calls are there;
- pyright over onnxpass/trt_build and onnxpass/plugins/trt.py against tensorrt-stubs 10.13 with
  those removals taken out (the 11.4 API as far as it is known here);
- typings/tensorrt/plugin.pyi (onnxpass's stub of tensorrt.plugin) against the real 11.4 source:
  every function with the same parameters, every class, KernelLaunchParams' fields;
- no build of onnxpass's sets or clears a builder flag 11 removed.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEEL_GLOB = "tensorrt_cu12_bindings-11.4.0.106-*.whl"
GET = ("pip download --no-deps tensorrt-cu12-bindings==11.4.0.106 -d .ci/cache")

# NVIDIA, "Migrating from TensorRT 10.x to 11.x: Removed Python APIs and Replacements" (11.4 docs)
# and DESIGN.md's reading of the 11.4 bindings: class -> members removed; None: the whole class.
REMOVED_IN_11: dict[str, tuple[str, ...] | None] = {
    "BuilderFlag": ("FP16", "INT8", "FP8", "BF16", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                    "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO"),
    "IBuilderConfig": ("int8_calibrator", "set_calibration_profile", "get_calibration_profile",
                       "set_quantization_flag", "get_quantization_flag", "quantization_flags",
                       "clear_quantization_flag"),
    "Builder": ("platform_has_fast_fp16", "platform_has_fast_int8"),
    "ILayer": ("precision", "set_output_type"),
    "OnnxParser": ("supports_model",),
    "IAlgorithm": None, "IAlgorithmContext": None, "IAlgorithmIOInfo": None,
    "IAlgorithmSelector": None, "IAlgorithmVariant": None,
    "IInt8Calibrator": None, "IInt8EntropyCalibrator": None, "IInt8EntropyCalibrator2": None,
    "IInt8LegacyCalibrator": None, "IInt8MinMaxCalibrator": None,
}
# What onnxpass's TensorRT code calls that 11.4 must still have (names long enough that their
# presence in the string table means something)
USED = ("STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "set_memory_pool_limit",
        "build_serialized_network", "create_network", "create_builder_config", "parse_from_file",
        "builder_optimization_level", "create_timing_cache", "set_timing_cache",
        "add_optimization_profile", "deserialize_cuda_engine", "create_execution_context",
        "set_input_shape", "set_tensor_address", "execute_async_v3", "get_tensor_name",
        "num_io_tensors", "profiling_verbosity", "init_libnvinfer_plugins")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    found = sorted((ROOT / ".ci" / "cache").glob(WHEEL_GLOB))
    env = os.environ.get("ONNXPASS_TRT11_WHEEL")
    path = Path(env) if env else (found[-1] if found else None)
    if path is None or not path.is_file():
        pytest.skip(f"the TensorRT 11.4 bindings wheel is not here: {GET}")
    out = tmp_path_factory.mktemp("trt11")
    with zipfile.ZipFile(path) as z:
        z.extractall(out)
    return out / "tensorrt_bindings"


def _tokens(so: Path) -> set[str]:
    data = so.read_bytes()
    return set(re.findall(rb"[A-Za-z_][A-Za-z0-9_]{3,}", data))  # type: ignore[arg-type]


def test_removed_apis_are_gone_and_used_ones_are_there(wheel: Path) -> None:
    tokens = {t.decode() for t in _tokens(wheel / "tensorrt.so")}
    # names of 12+ characters: a C string that short is never a whole other string's tail here
    removed = [m for c, ms in REMOVED_IN_11.items() for m in (ms or (c,)) if len(m) >= 12]
    assert removed and not [m for m in removed if m in tokens]
    assert not [u for u in USED if u not in tokens]


def _stub_11(wheel: Path, out: Path) -> Path:
    """typings for 11.4: tensorrt-stubs 10.13's API minus REMOVED_IN_11, and onnxpass's
    tensorrt.plugin stub."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorrt-stubs not installed (pip install --no-deps "
                    "tensorrt-stubs==10.13.0.35.1)")
    src = Path(list(spec.submodule_search_locations)[0]) / "tensorrt.pyi"
    kept: list[str] = []
    cls: str | None = None
    skip_indent: int | None = None
    pending: list[str] = []  # decorators waiting for the def they decorate
    for line in src.read_text().splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if line.strip() and indent <= skip_indent:
                skip_indent = None
            else:
                continue
        m = re.match(r"class (\w+)", line)
        if m:
            cls = m.group(1)
            if cls in REMOVED_IN_11 and REMOVED_IN_11[cls] is None:
                skip_indent = 0
                pending = []
                continue
        elif indent == 0 and line.strip():
            cls = None
        member = re.match(r"    (?:def )?(\w+)\s*[:(]", line)
        if line.startswith("    @"):
            pending.append(line)
            continue
        gone = REMOVED_IN_11.get(cls or "") or ()
        if member and indent == 4 and member.group(1) in gone:
            pending = []
            skip_indent = 4
            continue
        kept += pending + [line]
        pending = []
    typings = out / "typings" / "tensorrt"
    typings.mkdir(parents=True)
    (typings / "__init__.pyi").write_text("\n".join(kept) + "\n__version__: str\n"
                                          "def nptype(trt_type: DataType) -> type: ...\n")
    shutil.copy(ROOT / "typings" / "tensorrt" / "plugin.pyi", typings / "plugin.pyi")
    return out / "typings"


def test_pyright_against_the_11_4_api(wheel: Path, tmp_path: Path) -> None:
    if shutil.which("pyright") is None:
        pytest.skip("pyright not installed (pip install pyright)")
    typings = _stub_11(wheel, tmp_path)
    text = (typings / "tensorrt" / "__init__.pyi").read_text()
    assert "\n    int8_calibrator:" not in text and "class IInt8EntropyCalibrator2" not in text
    assert "    TF32: typing.ClassVar[BuilderFlag]" in text and "    FP16: typing" not in text
    config = tmp_path / "pyrightconfig.json"
    config.write_text(json.dumps({
        "stubPath": str(typings), "pythonVersion": "3.11", "typeCheckingMode": "standard",
        "reportMissingModuleSource": "none", "extraPaths": [str(ROOT)]}))
    r = subprocess.run(["pyright", "-p", str(config), "onnxpass/trt_build",
                        "onnxpass/plugins/trt.py"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def _functions(tree: ast.AST) -> dict[str, list[str]]:
    out = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef):
            out.setdefault(n.name, [a.arg for a in n.args.args])
    return out


def _classes(tree: ast.AST) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}


def test_plugin_stub_matches_the_11_4_source(wheel: Path) -> None:
    real_funcs: dict[str, list[str]] = {}
    real_classes: dict[str, ast.ClassDef] = {}
    for f in sorted((wheel / "plugin").glob("*.py")):
        with warnings.catch_warnings():  # its docstrings hold invalid escapes ('\s')
            warnings.simplefilter("ignore", DeprecationWarning)
            tree = ast.parse(f.read_text())
        for k, v in _functions(tree).items():
            real_funcs.setdefault(k, v)
        real_classes.update(_classes(tree))
    stub = ast.parse((ROOT / "typings" / "tensorrt" / "plugin.pyi").read_text())
    for node in stub.body:
        if isinstance(node, ast.FunctionDef):
            assert node.name in real_funcs, node.name
            assert [a.arg for a in node.args.args] == real_funcs[node.name], node.name
        elif isinstance(node, ast.ClassDef):
            assert node.name in real_classes, node.name
            real = real_classes[node.name]
            init = next((b for b in real.body if isinstance(b, ast.FunctionDef)
                         and b.name == "__init__"), None)
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names = ({a.arg for a in init.args.args} if init else set()) | {
                        b.name for b in real.body if isinstance(b, ast.FunctionDef)}
                    assert item.target.id in names, (node.name, item.target.id)
                if isinstance(item, ast.FunctionDef):  # same name, same parameter names
                    members = {b.name: [a.arg for a in b.args.args] for b in real.body
                               if isinstance(b, ast.FunctionDef)}
                    assert item.name in members, (node.name, item.name)
                    assert members[item.name] == [a.arg for a in item.args.args], \
                        (node.name, item.name, members[item.name])


def test_no_build_uses_a_flag_11_removed() -> None:
    from onnxpass.trt_build.build import PRECISIONS, precision_plan

    removed = set(REMOVED_IN_11["BuilderFlag"] or ())
    for precision in PRECISIONS:
        for typed in (False, True):
            plan = precision_plan(precision, 11, typed)
            assert plan.strongly_typed
            assert not removed & {*plan.set_flags, *plan.clear_flags}, (precision, plan)
