"""The ``onnxpass`` command line: run, list, match, plugins, build, bench.

User mistakes print one line (``onnxpass: error: ...``) and exit 2, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from onnxpass.errors import OnnxpassError
from onnxpass.graph import Graph, check_model, load_model, save_model

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
    p = argparse.ArgumentParser(prog="onnxpass", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="rewrite a model with a pipeline of passes")
    r.add_argument("model", help="input .onnx file (never overwritten)")
    r.add_argument("--passes", default="default",
                   help="comma-separated passes or pipelines, NAME[=FORM] (default: default)")
    r.add_argument("-o", "--output", help="output .onnx (default: MODEL.onnxpass.onnx beside it)")
    r.add_argument("--verify", action="store_true",
                   help="run original and rewritten model in ONNX Runtime and compare outputs")
    r.add_argument("--inputs", help=".npz of inputs for --verify (default: random)")
    r.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="value of a symbolic input dim for random inputs (default 2)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--rtol", type=float, default=1e-4)
    r.add_argument("--atol", type=float, default=1e-5)
    r.add_argument("--fp16-pins", metavar="FILE",
                   help="pin list for the fp16 pass (as onnxpass debug precision writes it)")
    r.add_argument("--dump-dir", help="write the graph after each pass that changed it")
    r.add_argument("--no-check", action="store_true",
                   help="skip onnx.checker after each pass (shape inference still runs)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="list passes, their forms and pipelines")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    m = sub.add_parser("match", help="show where passes match, and with --explain why not")
    m.add_argument("model")
    m.add_argument("--passes", required=True)
    m.add_argument("--explain", action="store_true",
                   help="list every place a pass was tried, how far it got and why it stopped")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_match)

    pl = sub.add_parser("plugins", help="plugin ops: attributes and implementations")
    pl.add_argument("action", choices=["list", "check"],
                    help="check MODEL: plugin nodes on Triton, the rest on ONNX Runtime, "
                         "against ONNX Runtime on --original (default: MODEL's functions)")
    pl.add_argument("model", nargs="?")
    pl.add_argument("--original")
    pl.add_argument("--device", default="cuda", help="cuda, or cpu (Triton's interpreter)")
    pl.add_argument("--rtol", type=float)
    pl.add_argument("--atol", type=float)
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)

    c = sub.add_parser("compare", help="run two models on the same inputs and compare outputs")
    c.add_argument("a", help="reference model (.onnx)")
    c.add_argument("b", help="model to compare with it (.onnx)")
    c.add_argument("--inputs", help=".npz of inputs or a folder of images (default: random)")
    c.add_argument("--mean", help="per-channel mean for --inputs DIR, e.g. 0.5,0.5,0.5 "
                                  "(default: ImageNet's; 0.5 for 1 channel)")
    c.add_argument("--std", help="per-channel std for --inputs DIR (default: ImageNet's; 0.5)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="value of a symbolic input dim for random inputs (default 2)")
    c.add_argument("--rtol", type=float, default=1e-3)
    c.add_argument("--atol", type=float, default=1e-4)
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
    d.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16",
                   help="the pass the pins are for (default: fp16; pin list MODEL.DTYPEpins.txt)")
    d.add_argument("--inputs", help=".npz of inputs (default: random)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--dim", action="append", default=[], metavar="NAME=N")
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


def _load(path: str) -> Graph:
    model = load_model(path)
    check_model(model, path)
    return Graph(model, str(Path(path).resolve().parent))


def _default_output(model: Path) -> Path:
    stem = model.name[:-5] if model.name.endswith(".onnx") else model.name
    return model.with_name(f"{stem}.onnxpass.onnx")


def cmd_run(args: argparse.Namespace) -> int:
    from onnxpass.passes.base import parse_passes
    from onnxpass.passes.fp16 import apply_pins
    from onnxpass.passes.manager import PassManager

    src = Path(args.model)
    out = Path(args.output) if args.output else _default_output(src)
    if src.exists() and out.exists() and src.resolve() == out.resolve():
        raise OnnxpassError(f"{out}: output would overwrite the input model")
    _check_writable(out)
    passes = parse_passes(args.passes)  # fail on unknown names before reading anything big
    apply_pins(passes, args.fp16_pins, "--fp16-pins")
    dims = _parse_dims(args.dim)
    feeds = None
    if args.verify and args.inputs:
        from onnxpass.verify import load_inputs

        feeds = load_inputs(args.inputs)
    t0 = time.perf_counter()
    graph = _load(str(src))
    load_s = time.perf_counter() - t0
    progress = None if args.quiet or args.json else (lambda msg: print(msg, file=sys.stderr))
    result = PassManager(passes, check=not args.no_check, dump_dir=args.dump_dir,
                         progress=progress).run(graph)
    model = result.graph.to_model()
    t1 = time.perf_counter()
    save_model(model, out, graph.base_dir)
    save_s = time.perf_counter() - t1
    verify_lines: list[str] = []
    if args.verify:
        verify_lines = _verify(src, out, feeds, dims, args)
    summary = {
        "input": str(src), "output": str(out), "rounds": result.rounds, "notes": result.notes,
        "passes": [s.__dict__ for s in result.stats],
        "load_seconds": load_s, "save_seconds": save_s, "verify": verify_lines,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        _print_table(result.stats)
        for line in verify_lines:
            print(f"verify {line}")
        print(f"wrote {out}")
    if verify_lines and not all(line.endswith("ok") for line in verify_lines):
        print(f"onnxpass: error: {out}: outputs differ from {src} beyond rtol={args.rtol} "
              f"atol={args.atol}; output removed", file=sys.stderr)
        _remove_output(out)
        return EXIT_VERIFY_FAILED
    return 0


def _verify(src: Path, out: Path, feeds, dims, args) -> list[str]:  # type: ignore[no-untyped-def]
    """Compare the input file (never overwritten) with the output just written."""
    from onnxpass.verify import compare_models, random_inputs

    original = str(src)
    if feeds is None:
        feeds = random_inputs(load_model(src), args.seed, dims)
    try:
        stats = compare_models(original, str(out), feeds, args.rtol, args.atol)
    except OnnxpassError:
        _remove_output(out)
        raise
    return [s.line() for s in stats]


def _check_writable(out: Path) -> None:
    """Refuse an output path that cannot be written before doing any work."""
    if out.is_dir():
        raise OnnxpassError(f"{out}: is a directory; -o takes the output file's path")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OnnxpassError(f"{out}: cannot write: {parent} is not a writable directory")


def _remove_output(out: Path) -> None:
    for p in (out, out.with_name(out.name + ".data")):
        if p.exists():
            p.unlink()


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


def _print_table(stats) -> None:  # type: ignore[no-untyped-def]
    rows = [("pass", "matches", "nodes before", "nodes after", "time (s)")]
    rows += [(s.name, str(s.matches), str(s.nodes_before), str(s.nodes_after), f"{s.seconds:.3f}")
             for s in stats]
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(r, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def cmd_list(args: argparse.Namespace) -> int:
    from onnxpass.passes.base import pipelines, registry

    passes = registry()
    if args.json:
        print(json.dumps({
            "passes": {n: {"summary": c.summary, "forms": list(c.forms),
                           "default_form": c.default_form} for n, c in sorted(passes.items())},
            "pipelines": pipelines()}, indent=2))
        return 0
    width = max(len(n) for n in passes)
    for name, cls in sorted(passes.items()):
        forms = f"  [forms: {', '.join(f + ('*' if f == cls.default_form else '') for f in cls.forms)}]" \
            if cls.forms else ""
        print(f"{name.ljust(width)}  {cls.summary}{forms}")
    print()
    for name, specs in sorted(pipelines().items()):
        print(f"pipeline {name}: {','.join(specs)}")
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    from onnxpass.passes.base import PatternPass, parse_passes
    from onnxpass.patterns.rule import explain

    passes = parse_passes(args.passes)
    graph = _load(args.model)
    graph.refresh_types()
    report = []
    for p in passes:
        if not isinstance(p, PatternPass):
            continue
        for a in explain(graph, p.rules()):
            if not args.explain and not a.matched:
                continue
            where = a.node.name or a.node.outputs[0]
            entry = {"pass": p.label, "rule": a.rule, "node": where, "op": a.node.op_type,
                     "matched": a.matched, "ops_matched": a.depth, "pattern_ops": a.size,
                     "reason": a.reason,
                     "stopped_at": (a.at.name or a.at.outputs[0]) if a.at is not None else None}
            report.append(entry)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for e in report:
        head = f"{e['pass']}/{e['rule']} at {e['op']} {e['node']!r}:"
        if e["matched"]:
            print(f"{head} matched ({e['ops_matched']} ops)")
        else:
            at = f" at {e['stopped_at']!r}" if e["stopped_at"] else ""
            print(f"{head} stopped after {e['ops_matched']}/{e['pattern_ops']} ops{at}: "
                  f"{e['reason']}")
    if not report:
        print("no matches" if not args.explain else "no place to try these passes")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from onnxpass.plugins import NAMESPACE, all_plugins
    from onnxpass.plugins.kernels import implementations

    if args.action == "check":
        from onnxpass.plugins.gpu_check import check

        if not args.model:
            raise OnnxpassError("plugins check needs MODEL")
        r = check(load_model(args.model), args.original and load_model(args.original),
                  device=args.device, rtol=args.rtol, atol=args.atol)
        if args.json:
            print(json.dumps({"ok": r.ok, "ran": r.ran, "segments": r.segments,
                              "outputs": [s.__dict__ for s in r.outputs]}))
        else:
            print("\n".join(r.lines()))
        return 0 if r.ok else EXIT_VERIFY_FAILED
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
    rows = compare(args.a, args.b, inputs=args.inputs, seed=args.seed, dims=_parse_dims(args.dim),
                   rtol=args.rtol, atol=args.atol, mean=mean, std=std)
    ok = all(r.stats.within for r in rows)
    if args.json:
        print(json.dumps({"ok": ok, "rtol": args.rtol, "atol": args.atol,
                          "outputs": [r.to_dict() for r in rows]}, indent=2))
    else:
        print("\n".join(r.line() for r in rows))
    return 0 if ok else EXIT_VERIFY_FAILED


def cmd_debug(args: argparse.Namespace) -> int:
    from onnxpass.debug_precision import debug_precision
    from onnxpass.verify import load_inputs, random_inputs

    src = Path(args.model)
    out = Path(args.output) if args.output else src.with_name(src.stem + f".{args.dtype}pins.txt")
    model = _load(str(src)).model
    feeds = load_inputs(args.inputs) if args.inputs else random_inputs(
        model, args.seed, _parse_dims(args.dim))
    progress = None if args.json else (lambda msg: print(msg, file=sys.stderr))
    r = debug_precision(src, args.tol, out, feeds, args.form, progress, args.runner, args.dtype)
    if args.json:
        print(json.dumps({"ok": r.ok, "pins": r.pins, "runs": r.runs, "worst": r.worst,
                          "output": str(out)}, indent=2))
    else:
        print(f"{len(r.pins)} node(s) to keep float32 ({r.runs} runs): {', '.join(r.pins) or '-'}")
        print("; ".join(f"{k}: max error {v:.3g} of max |ref|" for k, v in r.worst.items()))
        print(f"wrote {out}" + ("" if r.ok else " (tolerance not reached even all float32)"))
        if r.ok:
            print(f"use it: onnxpass build {src} --precision {args.dtype} --fp16-pins {out}  (or "
                  f"onnxpass run {src} --passes {args.dtype} --fp16-pins {out})")
    return 0 if r.ok else EXIT_VERIFY_FAILED


if __name__ == "__main__":
    sys.exit(main())


