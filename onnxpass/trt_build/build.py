"""``onnxpass build MODEL.onnx -o MODEL.plan``: a TensorRT engine, and MODEL.plan.json beside it.

Precision is decided where the TensorRT version decides it:

=========  ===========================  ==================================================
precision  TensorRT 10 (weak typing)    TensorRT 11 (always strongly typed)
=========  ===========================  ==================================================
fp32       TF32 flag cleared            TF32 flag cleared
tf32       TF32 flag (TensorRT's        TF32 flag
           default)
fp16       FP16 flag                    the ``fp16`` pass rewrites the graph first
bf16       BF16 flag                    the ``bf16`` pass rewrites the graph first
int8       INT8 flag; graph needs Q/DQ  graph needs Q/DQ
fp8        strongly typed network;      graph needs Q/DQ; GPU needs compute capability 8.9+
           graph needs Q/DQ; GPU 8.9+
=========  ===========================  ==================================================

int8 and fp8 on a float graph: ``--calibration DIR_OR_NPZ`` runs the ``int8``/``fp8`` pass
(:mod:`onnxpass.passes.quantize`) before building, calibrated on that data; a graph that already
has Q/DQ (a QAT export) is built as it is.

``--strongly-typed`` makes TensorRT 10 behave like 11 (the graph decides; fp16 and bf16 run
their pass; ``--pins``, alias ``--fp16-pins``, gives either pass a pin list).
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxpass.errors import OnnxpassError
from onnxpass.trt_build import import_tensorrt, trt_major

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8")
Shape = tuple[int, ...]
Profile = list[tuple[str, Shape, Shape, Shape]]
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass
class BuildOptions:
    precision: str = "fp32"
    shapes: list[str] = field(default_factory=list)
    workspace: int | None = None
    pools: dict[str, int] = field(default_factory=dict)  # MemoryPoolType name -> bytes
    timing_cache: str | None = None
    opt_level: int | None = None
    passes: str | None = None
    plugins: bool = True
    aot: bool = True
    strongly_typed: bool = False
    fp16_pins: str | None = None  # pin list for the fp16 pass (onnxpass debug precision)
    calibration: str | None = None  # int8/fp8 on a float graph: data for the quantize pass
    calibration_method: str | None = None
    target: str | None = None  # trt-X.Y the rewrite's forms fit (default: this TensorRT)


@dataclass
class PrecisionPlan:
    """How one precision is realised on one TensorRT major version."""

    strongly_typed: bool
    set_flags: list[str]       # BuilderFlag names to set
    clear_flags: list[str]     # ... and to clear
    graph_pass: str | None     # a pass that must rewrite the graph first
    needs_qdq: bool


def parse_size(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"1048576"`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise OnnxpassError(f"size {text!r}: expected N, NK, NM or NG")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def parse_pools(items: Sequence[str]) -> dict[str, int]:
    """``["TACTIC_SHARED_MEMORY=48K"]`` -> {"TACTIC_SHARED_MEMORY": 49152}."""
    out = {}
    for item in items:
        name, eq, size = item.partition("=")
        if not eq or not name.strip():
            raise OnnxpassError(f"--pool {item!r}: expected POOL=SIZE, e.g. WORKSPACE=2G")
        out[name.strip().upper()] = parse_size(size)
    return out


def parse_shape(text: str) -> Shape:
    """``"1x3x224x224"`` -> (1, 3, 224, 224); ``""`` is a scalar."""
    if not text.strip():
        return ()
    try:
        dims = tuple(int(d) for d in text.strip().lower().split("x"))
    except ValueError:
        raise OnnxpassError(f"shape {text!r}: expected dims joined by x, e.g. 1x3x224x224") \
            from None
    if any(d < 0 for d in dims):
        raise OnnxpassError(f"shape {text!r}: negative dim")
    return dims


def parse_shapes(items: Sequence[str]) -> Profile:
    """``--shapes name:min,opt,max`` (or ``name:shape`` for all three) -> profile tuples."""
    out: Profile = []
    for item in items:
        name, colon, spec = item.rpartition(":")
        if not colon or not name:
            raise OnnxpassError(f"--shapes {item!r}: expected NAME:MIN,OPT,MAX "
                                "(e.g. pixel_values:1x3x224x224,8x3x224x224,32x3x224x224)")
        parts = [parse_shape(p) for p in spec.split(",")]
        if len(parts) == 1:
            parts *= 3
        if len(parts) != 3:
            raise OnnxpassError(f"--shapes {item!r}: give one shape or three (min,opt,max)")
        lo, opt, hi = parts
        if not len(lo) == len(opt) == len(hi):
            raise OnnxpassError(f"--shapes {item!r}: min, opt and max differ in rank")
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise OnnxpassError(f"--shapes {item!r}: needs min <= opt <= max in every dim")
        if any(n == name for n, *_ in out):
            raise OnnxpassError(f"--shapes: {name!r} given twice")
        out.append((name, lo, opt, hi))
    return out


def model_inputs(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Graph inputs that are not initializers -> dims (int, or the symbolic name, or "?")."""
    inits = {t.name for t in model.graph.initializer}
    return {vi.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                      for d in vi.type.tensor_type.shape.dim]
            for vi in model.graph.input if vi.name not in inits}


def profile_for(model: onnx.ModelProto, items: Sequence[str]) -> Profile:
    """``--shapes`` checked against the model's inputs: known names, same rank, fixed dims kept,
    and every input with a symbolic dim covered."""
    inputs = model_inputs(model)
    profile = parse_shapes(items)
    for name, lo, opt, hi in profile:
        if name not in inputs:
            raise OnnxpassError(f"--shapes: model has no input {name!r}; inputs: "
                                f"{', '.join(inputs)}")
        dims = inputs[name]
        if len(dims) != len(lo):
            raise OnnxpassError(f"--shapes: input {name!r} has rank {len(dims)} {_fmt(dims)}, "
                                f"got rank {len(lo)}")
        for k, d in enumerate(dims):
            if isinstance(d, int) and not d == lo[k] == opt[k] == hi[k]:
                raise OnnxpassError(f"--shapes: input {name!r} dim {k} is fixed at {d} "
                                    f"{_fmt(dims)}")
    given = {n for n, *_ in profile}
    for name, dims in inputs.items():
        if name not in given and any(not isinstance(d, int) for d in dims):
            raise OnnxpassError(f"input {name!r} {_fmt(dims)} has dynamic dims: give "
                                f"--shapes {name}:MIN,OPT,MAX")
    return profile


def _fmt(dims: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def precision_plan(precision: str, major: int, strongly_typed: bool = False) -> PrecisionPlan:
    """What ``precision`` means on TensorRT ``major`` (see the module's table)."""
    if precision not in PRECISIONS:
        raise OnnxpassError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    typed = strongly_typed or major >= 11
    tf32 = (["TF32"], []) if precision == "tf32" else ([], ["TF32"])
    if precision in ("fp32", "tf32"):
        return PrecisionPlan(typed, *tf32, None, False)
    if precision == "fp8":
        return PrecisionPlan(True, [], ["TF32"], None, True)
    if typed:
        graph_pass = {"fp16": "fp16", "bf16": "bf16"}.get(precision)
        return PrecisionPlan(True, [], ["TF32"], graph_pass, precision == "int8")
    return PrecisionPlan(False, [precision.upper()], ["TF32"], None, precision == "int8")


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def plugin_ops(model: onnx.ModelProto) -> list[str]:
    from onnxpass.plugins.base import DOMAIN

    return sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_record(*, model: str, model_sha256: str, engine: str, options: BuildOptions,
                 plan: PrecisionPlan, versions: dict[str, str], profile: Profile,
                 passes_run: Sequence[str], plugins: Sequence[str], built_onnx: str | None,
                 seconds: float, gpu: str | None) -> dict[str, Any]:
    """The JSON written beside the engine: everything needed to rebuild it the same way."""
    return {
        "engine": engine,
        "model": {"path": model, "sha256": model_sha256},
        "built_from": built_onnx or model,
        "options": asdict(options),
        "precision": {"requested": options.precision, **asdict(plan)},
        "profile": [{"input": n, "min": list(a), "opt": list(b), "max": list(c)}
                    for n, a, b, c in profile],
        "passes": list(passes_run),
        "plugins": list(plugins),
        "versions": dict(versions),
        "gpu": gpu,
        "build_seconds": round(seconds, 3),
    }


def versions(trt_version: str | None) -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "onnx": onnx.__version__}
    for pkg in ("onnxpass", "torch", "triton"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    if trt_version:
        out["tensorrt"] = trt_version
    return out


def record_path(engine: str | Path) -> Path:
    return Path(str(engine) + ".json")


def rewritten_path(engine: str | Path) -> Path:
    return Path(str(engine) + ".onnx")


def _rewrite(model_path: str, spec: str, out: Path, pins: str | None = None,
             calibration: str | None = None, method: str | None = None,
             target: str | None = None) -> tuple[str, list[str]]:
    """Run passes (``spec`` as for ``onnxpass run --passes``, the low-precision pass with the pin
    list ``pins``, the quantize pass with ``calibration`` data and ``method``); returns the
    written model's path and the passes' labels. ``target``: the TensorRT (trt-X.Y) whose
    import the passes' forms fit (onnxpass/targets.py)."""
    from onnxpass.passes.manager import Pipeline

    pipeline = Pipeline(spec, {"pins": pins, "calibration": calibration, "method": method},
                        flag={"pins": "--pins (use --strongly-typed, or fp16 in --passes)",
                              "calibration": "--calibration", "method": "--calibration-method"},
                        target=target)
    pipeline.rewrite_file(model_path, out)
    return str(out), pipeline.labels


def _graph_pass_spec(plan: PrecisionPlan, passes: str | None) -> str | None:
    from onnxpass.passes.base import registry

    if plan.graph_pass is None:
        return passes
    if plan.graph_pass not in registry():
        raise OnnxpassError(f"a strongly typed {plan.graph_pass} engine needs the graph in "
                            f"{plan.graph_pass}, but no {plan.graph_pass!r} pass is registered")
    return f"{passes},{plan.graph_pass}" if passes else plan.graph_pass


def _gpu() -> tuple[str | None, tuple[int, int] | None]:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(), torch.cuda.get_device_capability()
    except ImportError:
        pass
    return None, None


def build(model_path: str, engine_path: str, opts: BuildOptions,
          log: Any = print) -> dict[str, Any]:
    """Build ``engine_path`` from ``model_path``; writes the record beside it and returns it."""
    from onnxpass.graph import load_model

    trt = import_tensorrt()
    t0 = time.perf_counter()
    model = load_model(model_path)
    profile = profile_for(model, opts.shapes)
    plan = precision_plan(opts.precision, trt_major(trt.__version__), opts.strongly_typed)
    gpu, cc = _gpu()
    if opts.precision == "fp8" and cc is not None and cc < (8, 9):
        raise OnnxpassError(f"fp8 needs compute capability 8.9 or newer; {gpu} has "
                            f"{cc[0]}.{cc[1]}")
    spec = _rewrite_spec(model, model_path, opts, plan, trt.__version__)
    src, passes_run = model_path, []
    if spec:  # the rewritten model is kept beside the engine: it is what the engine runs
        src, passes_run = _rewrite(model_path, spec, rewritten_path(engine_path), opts.fp16_pins,
                                   opts.calibration, opts.calibration_method,
                                   opts.target or f"trt-{trt.__version__}")
        log(f"rewrote the model with {','.join(passes_run)} -> {src}")
    plugins = _register_plugins(load_model(src) if spec else model, opts) if opts.plugins else []
    serialized = _build_engine(src, plan, profile, opts, bool(plugins))
    Path(engine_path).write_bytes(serialized)
    record = build_record(
        model=model_path, model_sha256=sha256_file(model_path), engine=engine_path,
        options=opts, plan=plan, versions=versions(trt.__version__), profile=profile,
        passes_run=passes_run, plugins=plugins, built_onnx=src if spec else None,
        seconds=time.perf_counter() - t0, gpu=gpu)
    record_path(engine_path).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _rewrite_spec(model: onnx.ModelProto, model_path: str, opts: BuildOptions,
                  plan: PrecisionPlan, trt_version: str) -> str | None:
    """The passes a build runs before TensorRT sees the model: ``--passes``, the graph pass the
    precision needs (fp16 on a strongly typed build) and the quantize pass where int8/fp8 meet
    a float model with ``--calibration``; None when the model goes in as it is."""
    quantize = None
    if plan.needs_qdq and has_qdq(model):
        if opts.calibration:
            raise OnnxpassError(f"--calibration {opts.calibration}: {model_path} has Q/DQ nodes "
                                f"already (quantized); build it without --calibration")
    elif plan.needs_qdq:
        if not opts.calibration:
            raise OnnxpassError(f"{opts.precision} needs a Q/DQ graph (QuantizeLinear/"
                                f"DequantizeLinear nodes): give --calibration DIR_OR_NPZ to "
                                f"quantize {model_path} first (or --calibration random)")
        quantize = opts.precision
    spec = _graph_pass_spec(plan, opts.passes)
    if quantize:
        spec = f"{spec},{quantize}" if spec else quantize
    if opts.fp16_pins and not spec:
        raise OnnxpassError(f"--fp16-pins {opts.fp16_pins}: no fp16 pass runs in this build "
                            f"(TensorRT {trt_version} {opts.precision} uses builder flags); "
                            f"add --strongly-typed")
    return spec


def dry_run(model_path: str, engine_path: str, opts: BuildOptions,
            log: Any = print) -> dict[str, Any]:
    """``onnxpass build --dry-run``: everything a build does before TensorRT, for the TensorRT
    of ``opts.target`` (default onnxpass.targets.DEFAULT_TARGET), without TensorRT. Writes the
    model TensorRT should build (ENGINE.onnx when passes run) and ENGINE.plugins.json (the
    plugins it needs), and returns the equivalent trtexec command line in ``"trtexec"``."""
    from onnxpass.graph import load_model
    from onnxpass.targets import DEFAULT_TARGET, parse_target

    target = parse_target(opts.target or DEFAULT_TARGET)
    if target.note:
        log(f"--target {target.name}: {target.note}")
    major = target.version[0]
    model = load_model(model_path)
    profile = profile_for(model, opts.shapes)
    plan = precision_plan(opts.precision, major, opts.strongly_typed)
    spec = _rewrite_spec(model, model_path, opts, plan, target.name[4:])
    src, passes_run = model_path, []
    if spec:
        src, passes_run = _rewrite(model_path, spec, rewritten_path(engine_path), opts.fp16_pins,
                                   opts.calibration, opts.calibration_method, target.name)
        log(f"rewrote the model with {','.join(passes_run)} -> {src}")
    plugins = plugin_info(load_model(src) if spec else model, opts.aot) if opts.plugins else []
    info = None
    if plugins:
        info = plugins_path(engine_path)
        info.write_text(json.dumps({"target": target.name, "plugins": plugins}, indent=2) + "\n")
    cmd = trtexec_command(src, engine_path, opts, plan, profile, target.version)
    return {"target": target.name, "onnx": src, "passes": passes_run, "plugins": plugins,
            "plugins_json": str(info) if info else None, "trtexec": cmd}


def plugins_path(engine: str | Path) -> Path:
    return Path(str(engine) + ".plugins.json")


def plugin_info(model: onnx.ModelProto, aot: bool) -> list[dict[str, Any]]:
    """The onnxpass plugins ``model`` needs, as a build registers them: name, namespace, version,
    the node count and the input dtypes each is used with, and whether its kernel goes into the
    engine as AOT PTX (no Python when the engine runs) or runs through Python (JIT)."""
    from onnxpass.plugins.base import DOMAIN, NAMESPACE, get_plugin
    from onnxpass.plugins.kernels import get_kernel

    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    out: dict[str, dict[str, Any]] = {}
    for n in model.graph.node:
        if n.domain != DOMAIN:
            continue
        spec = get_plugin(n.op_type)
        e = out.setdefault(n.op_type, {
            "plugin": f"{NAMESPACE}::{n.op_type}", "version": spec.version, "nodes": 0,
            "input_dtypes": [],
            "kernel": "aot" if aot and get_kernel(n.op_type) is not None else "jit"})
        e["nodes"] += 1
        dts = [onnx.helper.tensor_dtype_to_np_dtype(types[i]).name if types.get(i) else "?"
               for i in n.input]
        if dts not in e["input_dtypes"]:
            e["input_dtypes"].append(dts)
    return list(out.values())


def trtexec_command(onnx_path: str, engine_path: str, opts: BuildOptions, plan: PrecisionPlan,
                    profile: Profile, version: tuple[int, int]) -> list[str]:
    """The trtexec invocation that builds what ``onnxpass build`` would on TensorRT
    ``version``: 11 has no precision flags (always strongly typed); 10 takes --stronglyTyped or
    --fp16/--bf16/--int8 and --memPoolSize; 8.x --workspace (MiB)."""
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    major = version[0]
    if major < 11:
        if plan.strongly_typed:
            cmd.append("--stronglyTyped")
        cmd += [f"--{f.lower()}" for f in plan.set_flags if f != "TF32"]
        if "TF32" in plan.clear_flags:
            cmd.append("--noTF32")
    for key, idx in (("minShapes", 1), ("optShapes", 2), ("maxShapes", 3)):
        if profile:
            cmd.append(f"--{key}=" + ",".join(
                f"{p[0]}:{'x'.join(str(d) for d in p[idx])}" for p in profile))
    if opts.workspace:
        mib = max(1, opts.workspace >> 20)
        cmd.append(f"--memPoolSize=workspace:{mib}M" if major >= 10 else f"--workspace={mib}")
    for name, size in opts.pools.items():
        cmd.append(f"--memPoolSize={name.lower()}:{max(1, size >> 20)}M")
    if opts.timing_cache:
        cmd.append(f"--timingCacheFile={opts.timing_cache}")
    if opts.opt_level is not None:
        cmd.append(f"--builderOptimizationLevel={opts.opt_level}")
    return cmd


def _register_plugins(model: onnx.ModelProto, opts: BuildOptions) -> list[str]:
    ops = plugin_ops(model)
    if not ops:
        return []
    from onnxpass.plugins import trt as trt_plugins

    return trt_plugins.register(ops, jit=True, aot=opts.aot)


def _build_engine(src: str, plan: PrecisionPlan, profile: Profile,
                  opts: BuildOptions, has_plugins: bool) -> bytes:
    import tensorrt as trt  # import_tensorrt() checked it is there

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    flags = 0
    Flag = trt.NetworkDefinitionCreationFlag
    if plan.strongly_typed and hasattr(Flag, "STRONGLY_TYPED"):
        flags |= 1 << int(Flag.STRONGLY_TYPED)
    if has_plugins and opts.aot and hasattr(Flag, "PREFER_AOT_PYTHON_PLUGINS"):
        flags |= 1 << int(Flag.PREFER_AOT_PYTHON_PLUGINS)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(src):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise OnnxpassError(f"{src}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    for name in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    pools = dict(opts.pools)
    if opts.workspace is not None:
        pools["WORKSPACE"] = opts.workspace
    for name, size in pools.items():
        if not hasattr(trt.MemoryPoolType, name):
            raise OnnxpassError(f"--pool {name}: TensorRT {trt.__version__} has no such memory "
                                f"pool; pools: {', '.join(trt.MemoryPoolType.__members__)}")
        config.set_memory_pool_limit(getattr(trt.MemoryPoolType, name), size)
    if opts.opt_level is not None:
        config.builder_optimization_level = opts.opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names for bench --profile
    if profile:
        p = builder.create_optimization_profile()
        for name, lo, opt, hi in profile:
            p.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
        config.add_optimization_profile(p)
    cache_file = Path(opts.timing_cache) if opts.timing_cache else None
    if cache_file is not None:
        data = cache_file.read_bytes() if cache_file.exists() else b""
        config.set_timing_cache(config.create_timing_cache(data), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise OnnxpassError(f"{src}: TensorRT could not build an engine (see its log above)")
    if cache_file is not None:
        cache = config.get_timing_cache()
        if cache is not None:
            cache_file.write_bytes(bytes(cache.serialize()))
    return bytes(serialized)


def main_build(args: Any) -> int:
    """``onnxpass build`` (argparse namespace from onnxpass.cli)."""
    src = Path(args.model)
    if not src.is_file():
        raise OnnxpassError(f"{src}: no such model file")
    out = Path(args.output) if args.output else src.with_suffix(".plan")
    opts = options_from_args(args)
    if getattr(args, "dry_run", False):
        return _main_dry_run(str(src), str(out), opts)
    import_tensorrt()  # the one-line error before reading anything big
    record = build(str(src), str(out), opts, log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {out} ({record['precision']['requested']}, "
          f"{'strongly typed' if record['precision']['strongly_typed'] else 'builder flags'}, "
          f"{record['build_seconds']:.1f} s) and {record_path(out)}")
    return 0


def _main_dry_run(src: str, out: str, opts: BuildOptions) -> int:
    import shlex

    r = dry_run(src, out, opts, log=lambda m: print(m, file=sys.stderr))
    for p in r["plugins"]:
        print(f"plugin {p['plugin']} v{p['version']}: {p['nodes']} node(s), {p['kernel']} kernel",
              file=sys.stderr)
    if r["plugins"]:
        print(f"wrote {r['plugins_json']}: trtexec cannot register onnxpass's plugins "
              f"(tensorrt.plugin, Python); build with `onnxpass build` on that machine, or load "
              f"a plugin library of yours with --dynamicPlugins", file=sys.stderr)
    print(f"TensorRT {r['target'][4:]}:", file=sys.stderr)
    print(shlex.join(r["trtexec"]))
    return 0


def options_from_args(args: Any) -> BuildOptions:
    """argparse namespace -> BuildOptions, every value checked (one-line errors)."""
    if args.opt_level is not None and not 0 <= args.opt_level <= 5:
        raise OnnxpassError(f"--opt-level {args.opt_level}: expected 0 to 5")
    parse_shapes(args.shapes)
    if (args.calibration or args.calibration_method) and args.precision not in ("int8", "fp8"):
        flag = "--calibration" if args.calibration else "--calibration-method"
        raise OnnxpassError(f"{flag}: only --precision int8 or fp8 calibrates "
                            f"(got --precision {args.precision})")
    if args.fp16_pins:
        from onnxpass.passes.pins import read_pins

        read_pins(args.fp16_pins)
    if args.target:
        from onnxpass.targets import parse_target

        parse_target(args.target)
    if args.passes:
        from onnxpass.passes.manager import parse_pipeline
        from onnxpass.targets import parse_target

        parse_pipeline(args.passes, target=parse_target(args.target) if args.target else None)
    return BuildOptions(
        precision=args.precision, shapes=list(args.shapes),
        workspace=parse_size(args.workspace) if args.workspace else None,
        pools=parse_pools(args.pool), timing_cache=args.timing_cache, opt_level=args.opt_level,
        passes=args.passes, plugins=not args.no_plugins, aot=not args.jit,
        strongly_typed=args.strongly_typed, fp16_pins=args.fp16_pins,
        calibration=args.calibration, calibration_method=args.calibration_method,
        target=args.target)


def add_arguments(p: Any) -> None:
    p.add_argument("model", help="input .onnx")
    p.add_argument("-o", "--output", help="engine file (default: MODEL.plan beside the model)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--strongly-typed", action="store_true",
                   help="TensorRT 10: the graph decides precision, as on TensorRT 11")
    p.add_argument("--shapes", action="append", default=[], metavar="NAME:MIN,OPT,MAX",
                   help="optimization profile of one input, dims joined by x "
                        "(e.g. x:1x3x224x224,8x3x224x224,32x3x224x224)")
    p.add_argument("--workspace", metavar="SIZE", help="workspace pool limit (e.g. 4G)")
    p.add_argument("--pool", action="append", default=[], metavar="POOL=SIZE",
                   help="another memory-pool limit (MemoryPoolType name)")
    p.add_argument("--timing-cache", metavar="FILE", help="read (if present) and update this cache")
    p.add_argument("--opt-level", type=int, help="builder optimization level 0-5 (default 3)")
    p.add_argument("--passes", help="rewrite with these passes first (as onnxpass run --passes)")
    p.add_argument("--target", metavar="trt-X.Y",
                   help="the TensorRT whose ONNX import --passes' forms fit (default: the "
                        "installed TensorRT's version; with --dry-run, trt-10.15)")
    p.add_argument("--dry-run", action="store_true",
                   help="no TensorRT: write the model TensorRT should build and the plugins it "
                        "needs (ENGINE.plugins.json), print the equivalent trtexec command")
    p.add_argument("--pins", "--fp16-pins", dest="fp16_pins", metavar="FILE",
                   help="nodes the fp16 or bf16 pass keeps float32 (onnxpass debug precision "
                        "writes it; --fp16-pins is an alias)")
    p.add_argument("--calibration", metavar="DIR_OR_NPZ",
                   help="int8/fp8 of a float model: quantize it first (the int8/fp8 pass), "
                        "calibrated on a folder of images, an .npz of feeds, or random")
    p.add_argument("--calibration-method", choices=["max", "entropy", "percentile"],
                   help="ONNX Runtime calibrator for --calibration (default: max)")
    p.add_argument("--no-plugins", action="store_true", help="do not register onnxpass plugins")
    p.add_argument("--jit", action="store_true",
                   help="plugins through their JIT (Python) implementation, not AOT")
