"""The ``onnxpass`` command line: run, list, match, plugins, build, bench.

User mistakes print one line (``onnxpass: error: ...``) and exit 2, writing nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxpass.errors import ModelLoadError, OnnxpassError
from onnxpass.graph import Graph, check_model, load_model
from onnxpass.targets import DEFAULT_TARGET
from onnxpass.verify import VERIFY_TOLERANCES

if TYPE_CHECKING:
    from onnxpass.passes.base import Pass
    from onnxpass.passes.manager import Pipeline

EXIT_USER_ERROR = 2
EXIT_VERIFY_FAILED = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OnnxpassError as e:
        print(f"onnxpass: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into `head`: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("onnxpass: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    summary = (__doc__ or "onnxpass").splitlines()[0]
    p = argparse.ArgumentParser(prog="onnxpass", description=summary)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="rewrite a model with a pipeline of passes")
    r.add_argument("model", help="input .onnx file (never overwritten)")
    r.add_argument("--passes", default="default",
                   help="comma-separated passes or pipelines, NAME[=FORM] (default: default)")
    r.add_argument("-o", "--output", help="output .onnx (default: MODEL.onnxpass.onnx beside it)")
    r.add_argument("--load", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="import a Python file or module that registers passes (e.g. a "
                        "GraphSurgeon function, onnxpass/passes/graphsurgeon.py) first")
    r.add_argument("--target", metavar="trt-X.Y",
                   help="the TensorRT the output must import: standard forms it imports, "
                        "TensorRT's attention form or plugins where not, opsets up to its "
                        f"highest (default: {DEFAULT_TARGET}; onnxpass list shows the table)")
    r.add_argument("--verify", action="store_true",
                   help="run original and rewritten model in ONNX Runtime and compare outputs; "
                        "remove the output if they differ")
    r.add_argument("--inputs", help=".npz of inputs for --verify (default: random)")
    r.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="value of a symbolic input dim for random inputs (default: 2)")
    r.add_argument("--seed", type=int, default=0, help="seed of random inputs (default: 0)")
    rtols = ", ".join(f"{_sci(rtol)} for {p}" for p, (rtol, _) in VERIFY_TOLERANCES.items())
    r.add_argument("--rtol", type=float,
                   help="--verify's relative tolerance (default: by the precision the rewritten "
                        f"model computes in: {rtols})")
    r.add_argument("--atol", type=float,
                   help="--verify's absolute tolerance (default: "
                        f"{_sci(VERIFY_TOLERANCES['float32'][1] or 0)} for float32; for float16 "
                        "and bfloat16, rtol times the output's max |value|)")
    r.add_argument("--pins", "--fp16-pins", dest="pins", metavar="FILE",
                   help="pin list for the fp16, bf16, int8 or fp8 pass (as onnxpass debug "
                        "precision writes it; --fp16-pins is an alias)")
    _calibration_arguments(r)
    r.add_argument("--dump-dir", help="write the graph after each pass that changed it")
    r.add_argument("--report", metavar="HTML",
                   help="write a self-contained HTML page: the summary, every rewrite with the "
                        "nodes it replaced, before/after drawings, near misses, op counts")
    r.add_argument("--no-check", action="store_true",
                   help="skip onnx.checker after each pass (shape inference still runs)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    r.add_argument("-v", "--verbose", action="store_true",
                   help="let the libraries onnxpass runs (ONNX, ONNX Runtime, ...) print their "
                        "warnings")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="list passes, their forms and pipelines")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    m = sub.add_parser("match", help="show where passes match, and with --explain why not")
    m.add_argument("model")
    m.add_argument("--passes", required=True)
    m.add_argument("--load", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="import a Python file or module that registers passes first")
    m.add_argument("--explain", action="store_true",
                   help="also the places a pass was tried without a match, furthest first, "
                        "why each stopped, and a summary per rule")
    m.add_argument("--top", type=int, metavar="N",
                   help="with --explain: the N near misses that got furthest (default: all)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_match)

    pl = sub.add_parser("plugins", help="plugin ops: attributes and implementations")
    pl.add_argument("action", choices=["list", "check"],
                    help="check MODEL: plugin nodes on Triton, the rest on ONNX Runtime, "
                         "against ONNX Runtime on --original (default: MODEL's functions)")
    pl.add_argument("model", nargs="?")
    pl.add_argument("--original")
    pl.add_argument("--device", default="cuda",
                    help="cuda, or cpu (Triton's interpreter; sets TRITON_INTERPRET=1) "
                         "(default: cuda)")
    pl.add_argument("--rtol", type=float, help="relative tolerance (default: 1e-5)")
    pl.add_argument("--atol", type=float, help="absolute tolerance (default: 1e-6)")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)

    c = sub.add_parser("compare", help="run two models on the same inputs and compare outputs")
    c.add_argument("a", help="reference model (.onnx)")
    c.add_argument("b", help="model to compare with it (.onnx)")
    c.add_argument("--inputs", help=".npz of inputs or a folder of images (default: random)")
    c.add_argument("--mean", help="per-channel mean for --inputs DIR, e.g. 0.5,0.5,0.5 "
                                  "(default: ImageNet's; 0.5 for 1 channel)")
    c.add_argument("--std", help="per-channel std for --inputs DIR (default: ImageNet's; 0.5)")
    c.add_argument("--seed", type=int, default=0, help="seed of random inputs (default: 0)")
    c.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="value of a symbolic input dim for random inputs (default: 2)")
    c.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default: 1e-3)")
    c.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default: 1e-4)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("debug", help="debug precision MODEL --tol T: find the nodes to keep "
                                     "float32 for the fp16 (or bf16) pass; writes a pin list")
    d.add_argument("what", choices=["precision"])
    d.add_argument("model")
    d.add_argument("--tol", type=float, required=True,
                   help="allowed error, relative to each element and to the output's max")
    d.add_argument("-o", "--output", help="pin list to write (default: MODEL.fp16pins.txt)")
    d.add_argument("--runner", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                   help="run the float16 candidates in ONNX Runtime, simulating float16 rounding "
                        "(default), or as strongly typed TensorRT engines (needs TensorRT)")
    d.add_argument("--form", choices=["mixed", "all"], default="mixed",
                   help="fp16 form the pins add to (default: mixed)")
    d.add_argument("--dtype", choices=["fp16", "bf16", "int8", "fp8"], default="fp16",
                   help="the pass the pins are for (default: fp16; pin list MODEL.DTYPEpins.txt); "
                        "int8 and fp8 find the layers to leave unquantized and need --calibration")
    _calibration_arguments(d)
    d.add_argument("--inputs", help=".npz of inputs (default: random; for int8/fp8 the first "
                                    "calibration batch)")
    d.add_argument("--seed", type=int, default=0, help="seed of random inputs (default: 0)")
    d.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="value of a symbolic input dim for random inputs (default: 2)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_debug)

    from onnxpass.trt_build import bench, build

    b = sub.add_parser("build", help="build a TensorRT engine (and ENGINE.json: how it was built)")
    build.add_arguments(b)
    b.set_defaults(func=build.main_build)
    bn = sub.add_parser("bench", help="time a TensorRT engine (or an .onnx in ONNX Runtime)")
    bench.add_arguments(bn)
    bn.set_defaults(func=bench.main_bench)
    return p


def _calibration_arguments(p: argparse.ArgumentParser) -> None:
    """The int8/fp8 passes' calibration flags (run, debug precision; build has its own)."""
    p.add_argument("--calibration", metavar="DIR_OR_NPZ",
                   help="calibration data for the int8/fp8 pass: a folder of images, an .npz of "
                        "feeds (one batch, or K batches along a leading dim), or 'random' / "
                        "'random:K' (made-up scales; the output says so)")
    p.add_argument("--calibration-method", choices=["max", "entropy", "percentile"],
                   help="ONNX Runtime calibrator for activation ranges (default: max)")
    p.add_argument("--calibration-batch", type=int, metavar="N",
                   help="images per calibration batch for --calibration DIR (default: 8)")
    p.add_argument("--calibration-mean", metavar="M,M,M",
                   help="per-channel mean for --calibration DIR (default: ImageNet's)")
    p.add_argument("--calibration-std", metavar="S,S,S",
                   help="per-channel std for --calibration DIR (default: ImageNet's)")


def _calibration_options(args: argparse.Namespace) -> dict[str, str | None]:
    """The pass options the calibration flags give (None: not given)."""
    if args.calibration_batch is not None and args.calibration_batch < 1:
        raise OnnxpassError(f"--calibration-batch {args.calibration_batch}: expected N >= 1")
    for flag, text in (("--calibration-mean", args.calibration_mean),
                       ("--calibration-std", args.calibration_std)):
        _parse_floats(flag, text)
    return {"calibration": args.calibration, "method": args.calibration_method,
            "batch_size": None if args.calibration_batch is None else str(args.calibration_batch),
            "mean": args.calibration_mean, "std": args.calibration_std}


def _image_options(options: dict[str, str | None]) -> dict[str, Any]:
    """calibration_data's keywords from the calibration pass options."""
    size = options.get("batch_size")
    return {"batch_size": int(size) if size else 8,
            "mean": _parse_floats("--calibration-mean", options.get("mean")),
            "std": _parse_floats("--calibration-std", options.get("std"))}


_OPTION_FLAGS = {"pins": "--pins", "calibration": "--calibration",
                 "method": "--calibration-method", "batch_size": "--calibration-batch",
                 "mean": "--calibration-mean", "std": "--calibration-std"}


def _check_calibration(pipeline: Pipeline, graph: Graph, path: Path) -> None:
    """Read the calibration data's index (files, npz keys and shapes) against the model before
    any pass runs: a bad folder or npz is one line, before minutes of work."""
    from onnxpass.passes.quantize import Quantize, quantized_ops

    for p in pipeline.passes:
        if not isinstance(p, Quantize) or p.ranges is not None:
            continue
        found = quantized_ops(graph.model)
        if found:
            raise OnnxpassError(f"{path}: {p.quantized_already(found)}")
        if not p.calibration:
            raise p.no_calibration()
        from onnxpass.calibration import calibration_data

        calibration_data(p.calibration, graph.model, batch_size=p.batch_size, mean=p.mean,
                         std=p.std)


def _sci(x: float) -> str:
    """1e-4, not 0.0001 or 1e-04: tolerances as people write them."""
    return f"{x:.0e}".replace("e-0", "e-")


def _load(path: str) -> Graph:
    """Load and check a model for a command, before any work: one line for any problem with
    the file, its strings or the external data files it reads."""
    try:
        try:
            model = load_model(path, in_place=True)
        except TypeError:  # a non-UTF-8 external data location reaches path code as bytes
            _decode_strings(onnx.load(path, load_external_data=False))
            raise
        _decode_strings(model)
        check_model(model, path)
        graph = Graph(model, str(Path(path).resolve().parent))
    except UnicodeDecodeError:  # protobuf decodes strings lazily: a flipped byte shows up late
        raise ModelLoadError(f"{path}: not an ONNX model (a name is not valid UTF-8: the file "
                             "is corrupt)") from None
    _check_data_readable(graph, path)
    return graph


def _decode_strings(msg: object) -> None:
    """Raise UnicodeDecodeError for any string field of a model that is not UTF-8 (protobuf
    hands those out as bytes, and fails only when they are copied); tensor data is not read."""
    if isinstance(msg, onnx.TensorProto):
        _check_text(msg.name, msg.doc_string, *(v for e in msg.external_data
                                               for v in (e.key, e.value)))
        return
    for fd, value in msg.ListFields():  # type: ignore[attr-defined]
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else \
            fd.label == fd.LABEL_REPEATED
        if fd.type == fd.TYPE_MESSAGE:
            for m in (value if repeated else [value]):
                _decode_strings(m)
        elif fd.type == fd.TYPE_STRING:
            _check_text(*(value if repeated else [value]))


def _check_text(*values: object) -> None:
    for v in values:
        if isinstance(v, bytes):
            v.decode("utf-8")  # raises UnicodeDecodeError


def _check_data_readable(graph: Graph, path: str) -> None:
    """Open each external data file now: a permission problem is one line, not a failure when
    the output is saved after the whole pipeline ran."""
    from onnxpass.modelio import referenced_files

    for f in referenced_files(graph.model, graph.base_dir):
        try:
            with open(f, "rb") as fh:
                fh.read(1)
        except OSError as e:
            raise ModelLoadError(f"{path}: cannot read its external data file {f.name!r}: "
                                 f"{e.strerror or e}") from None


def _read_data(graph: Graph, path: str) -> onnx.ModelProto:
    """The model of a graph from :func:`_load` with its external data read in (from the
    model's folder), for code that hands the model to ONNX Runtime in memory."""
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(graph.model, graph.base_dir)
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read its external data: {e.strerror or e}") from None
    return graph.model


def _parse_passes(spec: str) -> list[Pass]:
    """parse_passes with the flag named in its errors."""
    from onnxpass.passes.base import parse_passes

    try:
        return parse_passes(spec)
    except OnnxpassError as e:
        raise type(e)(f"--passes {spec!r}: {e}") from None


def _pipeline(spec: str, pins: str | None, calibration: dict[str, str | None] | None = None,
              **kw: Any) -> Pipeline:
    """The pipeline of ``--passes`` (named in its errors), ``--pins`` and the calibration
    flags given to it."""
    from onnxpass.errors import UnknownPassError
    from onnxpass.passes.manager import Pipeline

    options = {"pins": pins, **(calibration or {})}
    try:
        return Pipeline(spec, options, flag=_OPTION_FLAGS, **kw)
    except UnknownPassError as e:
        raise type(e)(f"--passes {spec!r}: {e}") from None


def _feeds(model: onnx.ModelProto, inputs: str | None, seed: int, dims: dict[str, int]
           ) -> dict[str, np.ndarray]:
    """Inputs from ``--inputs`` (checked against the model) or random ones; ``--dim`` names
    checked against the model's symbolic dims. All before any work."""
    from onnxpass.verify import check_dims, check_feeds, load_inputs, random_inputs

    check_dims(model, dims)
    if not inputs:
        return random_inputs(model, seed, dims)
    feeds = load_inputs(inputs)
    check_feeds(model, feeds, inputs)
    return feeds


def _check_dump_dir(path: str | None) -> None:
    """Refuse a --dump-dir that cannot be a writable folder before the pipeline runs."""
    if not path:
        return
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise OnnxpassError(f"--dump-dir {d}: exists and is not a folder")
    parent = d
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OnnxpassError(f"--dump-dir {d}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise OnnxpassError(f"--dump-dir {d}: {parent} is not writable")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """While active, what third-party code prints (Python or C) goes to stderr: stdout carries
    only onnxpass's own output, so --json parses."""
    sys.stdout.flush()
    try:
        saved: int | None = os.dup(1)
    except OSError:  # fd 1 closed: Python-level redirection only
        saved = None
    if saved is not None:
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            _flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)


def _flush_c_stdio() -> None:
    """fflush(NULL): C-level prints still buffered go out before fd 1 is switched back."""
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def _prepare_device(device: str) -> None:
    """Check ``plugins check --device`` before any work; for cpu, have Triton interpret, which it
    decides once, when first imported."""
    if device == "cpu":
        value = os.environ.get("TRITON_INTERPRET", "1")
        if value != "1":
            raise OnnxpassError(f"--device cpu: TRITON_INTERPRET={value} is set, but the CPU runs "
                                "kernels only in Triton's interpreter: unset it or set it to 1")
        os.environ["TRITON_INTERPRET"] = "1"
        tl = sys.modules.get("triton.language")
        if tl is not None and type(getattr(tl, "sum", None)).__name__ != "InterpretedFunction":
            raise OnnxpassError("--device cpu: Triton was imported before TRITON_INTERPRET=1 "
                                "could be set; run onnxpass in a new process")
        return
    if device != "cuda" and not device.startswith("cuda:"):
        raise OnnxpassError(f"--device {device!r}: expected cuda or cpu")
    try:
        import torch
    except ImportError:
        raise OnnxpassError(f"--device {device}: needs PyTorch with CUDA; or use --device cpu "
                            "(Triton's interpreter)") from None
    if not torch.cuda.is_available():
        raise OnnxpassError(f"--device {device}: no CUDA GPU is available here; use --device cpu "
                            "to run the kernels in Triton's interpreter (slow)")


def _default_output(model: Path) -> Path:
    stem = model.name[:-5] if model.name.endswith(".onnx") else model.name
    return model.with_name(f"{stem}.onnxpass.onnx")


def cmd_run(args: argparse.Namespace) -> int:
    src = Path(args.model)
    out = Path(args.output) if args.output else _default_output(src)
    _check_writable(out, src)
    progress = None if args.quiet or args.json else (lambda msg: print(msg, file=sys.stderr))
    _load_passes(args.load)
    # unknown names and an unreadable pin list fail before anything big is read
    pipeline = _pipeline(args.passes, args.pins, _calibration_options(args),
                         check=not args.no_check, dump_dir=args.dump_dir, progress=progress,
                         target=args.target)
    dims = _parse_dims(args.dim)
    _check_dump_dir(args.dump_dir)
    if args.inputs and not args.verify:
        raise OnnxpassError(f"--inputs {args.inputs}: only --verify runs the model; add --verify")
    t0 = time.perf_counter()
    graph = _load(str(src))
    _check_writable(out, src, graph)  # now that the files the input reads are known
    if args.report:  # the page never replaces the input, a file it reads, or the output
        _check_report(Path(args.report), src, out, graph)
    _check_calibration(pipeline, graph, src)
    load_s = time.perf_counter() - t0
    # --inputs and --dim are checked against the model before the pipeline runs
    feeds = _feeds(graph.model, args.inputs, args.seed, dims) if args.verify else None
    if feeds is None:
        from onnxpass.verify import check_dims

        check_dims(graph.model, dims)
    t1 = time.perf_counter()
    from onnxpass.patterns import rule as rule_module

    rule_module.REWRITE_LOG = [] if args.report else None  # what --report draws
    try:
        with _stdout_to_stderr(), warnings.catch_warnings():
            if not args.verbose:  # third-party warnings are noise in onnxpass's summary
                warnings.simplefilter("ignore")
            result = pipeline.run(graph)
        rewrite_log = rule_module.REWRITE_LOG or []
    finally:
        rule_module.REWRITE_LOG = None
    t2 = time.perf_counter()
    pass_s = t2 - t1
    result.save(out)
    save_s = time.perf_counter() - t2
    verify_lines: list[str] = []
    verify_failed: str | None = None
    t3 = time.perf_counter()
    if feeds is not None:
        with _stdout_to_stderr():
            verify_lines, verify_failed = _verify(src, out, feeds, args)
    verify_s = time.perf_counter() - t3
    summary = {
        "input": str(src), "output": str(out), "rounds": result.rounds,
        "converged": result.converged, "notes": result.notes,
        "passes": [dataclasses.asdict(s) for s in result.stats],
        "load_seconds": load_s, "passes_seconds": pass_s, "save_seconds": save_s,
        "verify_seconds": verify_s, "total_seconds": time.perf_counter() - t0,
        "verify": verify_lines,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        _print_table(result.stats, result.rounds,
                     {"load": load_s, "passes": pass_s, "save": save_s,
                      **({"verify": verify_s} if feeds is not None else {}),
                      "total": time.perf_counter() - t0})
        for line in verify_lines:
            print(f"verify {line}")
        print(f"wrote {out}")
    if args.report:
        _write_report(args, src, out, pipeline, result, summary, verify_failed, rewrite_log)
        if not args.json:
            print(f"wrote {args.report}")
    if verify_failed:
        print(f"onnxpass: error: {out}: outputs differ from {src} beyond {verify_failed}; "
              "output removed", file=sys.stderr)
        _remove_output(out)
        return EXIT_VERIFY_FAILED
    return 0


def _write_report(args: argparse.Namespace, src: Path, out: Path, pipeline: Pipeline,
                  result: Any, summary: dict[str, Any], verify_failed: str | None,
                  log: list[Any]) -> None:
    """--report: the HTML page of onnxpass/report.py, from the run's result, the input and
    output as written, and the pattern passes' near misses on the input (as match shows them)."""
    from onnxpass.passes.base import PatternPass
    from onnxpass.passes.manager import first_pass_view
    from onnxpass.report import write_report

    near: list[dict[str, Any]] = []
    with _stdout_to_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        view = first_pass_view(_load(str(src)), pipeline.passes)
        for p in pipeline.passes:
            if isinstance(p, PatternPass) and p.name != "canonical":  # canonical: no fusion
                near += [e for e in _pass_entries(p, view, misses=True) if not e["matched"]]
    near.sort(key=lambda m: (tuple(-x for x in _progress(m)), str(m["pass"]), str(m["node"])))
    write_report(
        args.report, source=str(src), output=str(out),
        before=onnx.load(str(src), load_external_data=False),
        after=onnx.load(str(out), load_external_data=False), stats=result.stats,
        notes=result.notes, passes=pipeline.labels, rounds=result.rounds,
        seconds={k.replace("_seconds", ""): v for k, v in summary.items()
                 if k.endswith("_seconds")},
        verify=summary["verify"] if args.verify else None, verify_ok=verify_failed is None,
        near_misses=near[:50], log=log)


def _verify(src: Path, out: Path, feeds: dict[str, np.ndarray], args: argparse.Namespace
            ) -> tuple[list[str], str | None]:
    """Compare the input file (never overwritten) with the output just written, at the
    tolerance of the precision the output computes in unless --rtol/--atol say otherwise.
    Returns the per-output lines and, when one differs, the tolerance in words. Removes the
    output when anything goes wrong."""
    from onnxpass.errors import VerificationError
    from onnxpass.verify import compute_precision, run, tolerance_text, verify_stats

    try:
        precision = compute_precision(load_model(out))
        want = run(str(src), feeds)
        if precision == "bfloat16":  # ONNX Runtime's CPU provider has no bfloat16 arithmetic
            from onnxpass.debug_precision import simulate_float16

            got = run(simulate_float16(onnx.load(str(out))), feeds)
        else:
            got = run(str(out), feeds)
        missing = sorted(set(want) - set(got))
        if missing:
            raise VerificationError(f"{out}: lacks outputs {missing} of {src}")
        stats = [verify_stats(k, want[k], got[k], precision, args.rtol, args.atol) for k in want]
    except BaseException:
        _remove_output(out)
        raise
    ok = all(s.within for s in stats)
    return [s.line() for s in stats], None if ok else tolerance_text(precision, args.rtol,
                                                                       args.atol)


def _check_writable(out: Path, src: Path, graph: Graph | None = None) -> None:
    """Refuse, before any work, an output that cannot be written, that is not a regular file or
    absent, or that would overwrite the input ``src`` or (given its ``graph``) a file it reads."""
    from onnxpass.modelio import check_output, referenced_files

    reads = referenced_files(graph.model, graph.base_dir) if graph is not None else []
    check_output(out, src, reads)
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OnnxpassError(f"{out}: cannot write: {parent} is not a writable directory")


def _check_report(report: Path, src: Path, out: Path, graph: Graph) -> None:
    """--report's path, refused before any work like -o's, and never the output model."""
    if report.is_dir():
        raise OnnxpassError(f"--report {report}: is a directory; --report takes the HTML "
                            "file's path")
    if report.resolve() == out.resolve():
        raise OnnxpassError(f"--report {report}: is the output model's path (-o)")
    try:
        _check_writable(report, src, graph)
    except OnnxpassError as e:
        raise OnnxpassError(f"--report {e}") from None


def _remove_output(out: Path) -> None:
    """Remove an output model and its data file, whatever name save_model gave that."""
    from onnxpass.modelio import remove_model

    remove_model(out)


def _parse_dims(items: list[str]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value.strip().isdigit():
            raise OnnxpassError(f"--dim {item!r}: expected NAME=N")
        dims[name.strip()] = int(value)
    return dims


def _parse_floats(flag: str, text: str | None) -> list[float] | None:
    try:
        return None if text is None else [float(v) for v in text.split(",")]
    except ValueError:
        raise OnnxpassError(f"{flag} {text!r}: expected comma-separated numbers, "
                            "e.g. 0.5,0.5,0.5") from None


def _print_table(stats, rounds: int = 0,  # type: ignore[no-untyped-def]
                 stages: dict[str, float] | None = None) -> None:
    """Per pass: rewrites, nodes before and after its first run (the first round, down the
    rows), runs of ``rounds`` (a pass with nothing new to see is skipped), seconds and the part
    of them spent checking after it. Then the run's stages."""
    rows = [("pass", "matches", "nodes before", "nodes after", "runs", "time (s)", "check (s)")]
    rows += [(s.name, str(s.matches), str(s.nodes_before), str(s.nodes_after),
              f"{s.runs}/{len(s.rounds)}", f"{s.seconds:.3f}", f"{s.check_seconds:.3f}")
             for s in stats]
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(r, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    if stages:
        print(f"{rounds} round{'s' if rounds != 1 else ''}; " +
              ", ".join(f"{name} {sec:.3f} s" for name, sec in stages.items()))


def cmd_list(args: argparse.Namespace) -> int:
    from onnxpass.passes.base import pipelines, registry
    from onnxpass.targets import table as target_table

    passes = registry()
    if args.json:
        print(json.dumps({
            "passes": {n: {"summary": c.summary, "forms": list(c.forms),
                           "default_form": c.default_form} for n, c in sorted(passes.items())},
            "pipelines": pipelines(), "default_target": DEFAULT_TARGET,
            "targets": [{"target": n, "max_opset": o, "native": v.split(", ") if v != "-" else []}
                        for n, o, v in target_table()]}, indent=2))
        return 0
    width = max(len(n) for n in passes)
    for name, cls in sorted(passes.items()):
        marked = (f + ("*" if f == cls.default_form else "") for f in cls.forms)
        forms = f"  [forms: {', '.join(marked)}]" \
            if cls.forms else ""
        print(f"{name.ljust(width)}  {cls.summary}{forms}")
    print()
    for name, specs in sorted(pipelines().items()):
        print(f"pipeline {name}: {','.join(specs)}")
    print()
    print(f"targets (--target; default {DEFAULT_TARGET}): highest opset, standard ops onnxpass "
          f"emits that TensorRT imports natively (sources: onnxpass/targets.py)")
    for name, opset, native in target_table():
        print(f"  {name.ljust(9)} opset {opset:>2}  {native}")
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    with _stdout_to_stderr():
        report = _match_report(args)
    matches = [e for e in report if e["matched"]]
    misses = sorted((e for e in report if not e["matched"]),
                    key=lambda e: (tuple(-x for x in _progress(e)), str(e["pass"]),
                                   str(e["node"])))
    top = misses if args.top is None else misses[:max(0, args.top)]
    if args.json:
        print(json.dumps({"matches": matches, "near_misses": top,
                          "summary": _match_summary(matches, misses)}, indent=2))
        return 0
    for e in matches:
        need, have = e["opset"], e["model_opset"]
        raise_to = (f"; raises the opset to {need}" if isinstance(need, int)
                    and isinstance(have, int) and need > have else "")
        print(f"{e['pass']}/{e['rule']}: {e['ops_matched']} ops ending at {e['op']} "
              f"{e['node']!r}{raise_to}")
    if args.explain:
        if top:
            print(f"\nnear misses, furthest first ({len(top)} of {len(misses)}; --top N):")
        for e in top:
            at = f" at {e['stopped_at']!r}" if e["stopped_at"] else ""
            print(f"{e['pass']}/{e['rule']} at {e['op']} {e['node']!r}: stopped after "
                  f"{e['ops_matched']}/{e['pattern_ops']} ops{at}: {e['reason']}")
        print()
        for r in _match_summary(matches, misses):
            furthest = (f"; furthest miss {r['furthest']}/{r['pattern_ops']} ops: {r['why']}"
                        if r["misses"] else "")
            print(f"{r['pass']}/{r['rule']}: {r['matches']} match(es), {r['misses']} "
                  f"place(s) tried without one{furthest}")
    if not report:
        print("no matches" if not args.explain else "no place to try these passes")
    elif not matches and not args.explain:
        print("no matches (--explain says why)")
    return 0


def _progress(e: dict[str, Any]) -> tuple[int, float]:
    """How far an attempt got: pattern ops matched, then the share of the pattern."""
    return int(e["ops_matched"]), int(e["ops_matched"]) / max(1, int(e["pattern_ops"]))


def _match_summary(matches: list[dict[str, Any]], misses: list[dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    """Per pass and rule: matched instances, places tried without a match, the furthest miss."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for e in [*matches, *misses]:
        r = rows.setdefault((e["pass"], e["rule"]), {
            "pass": e["pass"], "rule": e["rule"], "matches": 0, "misses": 0, "furthest": -1,
            "pattern_ops": e["pattern_ops"], "why": ""})
        if e["matched"]:
            r["matches"] += 1
        else:
            r["misses"] += 1
            if int(e["ops_matched"]) > r["furthest"]:
                r["furthest"], r["why"] = int(e["ops_matched"]), e["reason"]
    return list(rows.values())


def _load_passes(sources: list[str]) -> None:
    """--load: import each file or module that registers passes (one-line errors)."""
    if sources:
        from onnxpass.passes.graphsurgeon import load_passes

        for s in sources:
            load_passes(s)


def _match_report(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Where the passes match (and with --explain, where and why they stop)."""
    from onnxpass.passes.base import PatternPass
    from onnxpass.passes.manager import first_pass_view

    _load_passes(args.load)
    passes = _parse_passes(args.passes)
    # what `run` hands the first pass: dead code dropped, types inferred, canonical forms
    graph = first_pass_view(_load(args.model), passes)
    report: list[dict[str, Any]] = []
    for p in passes:
        if isinstance(p, PatternPass):
            report += _pass_entries(p, graph, misses=args.explain)
    return report


def _pass_entries(p: Any, graph: Graph, misses: bool) -> list[dict[str, Any]]:
    """What ``match`` reports for one pattern pass: one entry per instance (a match inside a
    bigger one of the same pass is that one: a LayerNorm matches at its Div, Mul and last Add,
    and the Add's 9 ops are the instance); with ``misses``, every attempt that did not match,
    rooted outside the matches (a root inside a match is not a near miss)."""
    attempts = p.explain(graph)  # the opset decision `run` makes, and its refusals
    out: list[dict[str, Any]] = []
    seen: list[set[int]] = []
    for a in sorted((a for a in attempts if a.matched), key=lambda a: -a.depth):
        ids = {id(n) for n in a.nodes}
        if any(ids <= s for s in seen):
            continue
        seen.append(ids)
        out.append(_attempt_entry(p.label, a, graph.opset()))
    if misses:
        covered = set().union(*seen) if seen else set()
        out += [_attempt_entry(p.label, a, graph.opset()) for a in attempts
                if not a.matched and id(a.node) not in covered]
    return out


def _attempt_entry(label: str, a: Any, model_opset: int) -> dict[str, Any]:
    def name(n: Any) -> str:
        return n.name or n.outputs[0]

    e: dict[str, Any] = {
        "pass": label, "rule": a.rule, "node": name(a.node), "model_opset": model_opset,
        "op": a.node.op_type, "matched": a.matched, "ops_matched": a.depth,
        "pattern_ops": a.size, "reason": a.reason, "opset": a.opset,
        "stopped_at": name(a.at) if a.at is not None else None}
    if a.matched:
        e["nodes"] = [name(n) for n in a.nodes]
    return e


def cmd_plugins(args: argparse.Namespace) -> int:
    from onnxpass.plugins import NAMESPACE, all_plugins

    if args.action == "check":
        if not args.model:
            raise OnnxpassError("plugins check needs MODEL")
        _prepare_device(args.device)  # before anything imports Triton
        from onnxpass.plugins.gpu_check import check
        from onnxpass.verify import check_same_inputs

        model = _read_data(_load(args.model), args.model)
        original = _read_data(_load(args.original), args.original) if args.original else None
        if original is not None:
            check_same_inputs(original, model, args.original, args.model)
        with _stdout_to_stderr():
            r = check(model, original, device=args.device, rtol=args.rtol, atol=args.atol)
        if args.json:
            print(json.dumps({"ok": r.ok, "ran": r.ran, "segments": r.segments,
                              "outputs": [s.__dict__ for s in r.outputs]}))
        else:
            print("\n".join(r.lines()))
        return 0 if r.ok else EXIT_VERIFY_FAILED
    from onnxpass.plugins.kernels import implementations

    rows = [{"name": s.name, "id": f"{NAMESPACE}::{s.name}", "version": s.version,
             "inputs": list(s.inputs), "outputs": list(s.outputs), "dtypes": list(s.dtypes),
             "attributes": [{"name": a.name, "kind": a.kind, "default": a.default, "doc": a.doc}
                            for a in s.attributes],
             "implementations": {i: why or "ok" for i, why in implementations(s)}}
            for s in all_plugins()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        ins, outs = ", ".join(r["inputs"]), ", ".join(r["outputs"])
        print(f"{r['id']} v{r['version']}  ({ins}) -> ({outs})  T: {', '.join(r['dtypes'])}")
        for a in r["attributes"]:
            print(f"    {a['name']}: {a['kind']} = {a['default']!r}  {a['doc']}".rstrip())
        print("    implementations: " + ", ".join(
            i if why == "ok" else f"{i} ({why})" for i, why in r["implementations"].items()))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Exit 0 when every output is within --atol/--rtol, 1 when one is not."""
    from onnxpass.compare import compare

    mean, std = _parse_floats("--mean", args.mean), _parse_floats("--std", args.std)
    dims = _parse_dims(args.dim)
    with _stdout_to_stderr():
        rows = compare(args.a, args.b, inputs=args.inputs, seed=args.seed, dims=dims,
                       rtol=args.rtol, atol=args.atol, mean=mean, std=std,
                       load=lambda path: _load(path).model)
    ok = all(r.stats.within for r in rows)
    if args.json:
        print(json.dumps({"ok": ok, "rtol": args.rtol, "atol": args.atol,
                          "outputs": [r.to_dict() for r in rows]}, indent=2))
    else:
        print("\n".join(r.line() for r in rows))
    return 0 if ok else EXIT_VERIFY_FAILED


def cmd_debug(args: argparse.Namespace) -> int:
    from onnxpass.debug_precision import debug_precision

    src = Path(args.model)
    out = Path(args.output) if args.output else src.with_name(src.stem + f".{args.dtype}pins.txt")
    graph = _load(str(src))
    _check_writable(out, src, graph)  # the pin list never replaces the model or its data
    dims = _parse_dims(args.dim)
    quantized = args.dtype in ("int8", "fp8")
    options = _calibration_options(args)
    if not quantized and any(v is not None for v in options.values()):
        raise OnnxpassError(f"--calibration flags are for --dtype int8 or fp8, not {args.dtype}")
    if quantized and not args.calibration:
        raise OnnxpassError(f"--dtype {args.dtype} needs --calibration DIR_OR_NPZ (a folder of "
                            "images, an .npz of feeds, or random)")
    model = _read_data(graph, str(src))
    feeds, data = None, None
    if quantized:
        from onnxpass.calibration import calibration_data

        data = calibration_data(args.calibration, model, **_image_options(options))
        if not args.inputs:
            feeds = next(iter(data))
    if feeds is None:
        feeds = _feeds(graph.model, args.inputs, args.seed, dims)
    progress = None if args.json else (lambda msg: print(msg, file=sys.stderr))
    with _stdout_to_stderr():
        r = debug_precision(src, args.tol, out, feeds, args.form, progress, args.runner,
                            args.dtype, model=model, calibration=data if quantized else None,
                            method=args.calibration_method or "max")
    if args.json:
        print(json.dumps({"ok": r.ok, "pins": r.pins, "runs": r.runs, "worst": r.worst,
                          "output": str(out)}, indent=2))
    else:
        kept = "leave unquantized" if quantized else "keep float32"
        print(f"{len(r.pins)} node(s) to {kept} ({r.runs} runs): {', '.join(r.pins) or '-'}")
        print("; ".join(f"{k}: max error {v:.3g} of max |ref|" for k, v in r.worst.items()))
        print(f"wrote {out}" + ("" if r.ok else " (tolerance not reached even all float32)"))
        if r.ok and quantized:
            print(f"use it: onnxpass run {src} --passes default,{args.dtype} --calibration "
                  f"{args.calibration} --pins {out}")
        elif r.ok:
            print(f"use it: onnxpass build {src} --precision {args.dtype} --pins {out}  (or "
                  f"onnxpass run {src} --passes {args.dtype} --pins {out})")
    return 0 if r.ok else EXIT_VERIFY_FAILED


if __name__ == "__main__":
    sys.exit(main())


