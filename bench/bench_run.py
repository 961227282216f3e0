"""Benchmark: ``onnxpass run`` against plain onnx.load + onnx.save and against its peers (ONNX
Runtime's transformers optimizer, onnxscript's optimize_for_ort), on CLIP ViT-B/32 or on a >2 GB
external-data ViT-H/14.

Targets (issue 12): ``onnxpass run`` (the ``default`` pipeline) takes at most 1.25x the time of
``onnx.load`` + ``onnx.save`` of the same file, ``--passes layernorm,gelu,attention`` at most
1.15x, on the CLIP export, measured side by side on the same disk; on the >2 GB model peak memory
stays within 256 MiB plus the weights a pass reads.

Models (random weights, nothing downloaded; exported once into the cache folder and reused, see
bench_run_models.py):

- default: transformers' ``CLIPVisionModel(CLIPVisionConfig())``, ViT-B/32, 88M parameters,
  TorchScript exporter at opset 14, one inline ~333 MB .onnx. The default config uses
  ``quick_gelu`` (x * sigmoid(1.702 x)), which onnxpass's gelu pass deliberately leaves alone;
  ``--hidden-act gelu`` exports the same model with erf GELU.
- ``--large``: transformers' ``ViTModel`` at ViT-H/14 size (632M parameters, 2.35 GiB of float32
  weights), TorchScript exporter at opset 17, stored as ``.onnx`` + one ``.onnx.data``; the first
  run builds it (about a minute and 5 GB of memory here) and prints how long it took.

Variants (bench_run_variants.py; ``--variants`` picks, ``--passes`` adds onnxpass pipelines),
each timed end to end -- load, work, save -- as a user calls it, and each writing the layout of
its input (inline, or external data in ``OUT.data``):

- ``onnx``: ``onnx.save(onnx.load(src), out)``, the baseline of every ratio;
- ``onnxpass:default`` and ``onnxpass:layernorm,gelu,attention``: ``onnxpass.cli.main(["run",
  "--passes", P, src, "-o", out, "-q"])``, the whole command (load, checker, passes, shape
  inference, save);
- ``ort``: ``onnxruntime.transformers.optimizer.optimize_model(src, model_type="clip" (CLIP) or
  "vit" (ViT), num_heads=0, hidden_size=0, opt_level=0)`` then ``save_model_to_file``: its Python
  fusions, offline, on CPU. ``--ort-opt-level default`` (or ``0,default``: both) adds what
  ``python -m onnxruntime.transformers.optimizer`` does by default for these types, opt_level 1:
  an ONNX Runtime session's basic optimizations (constant folding) first; the same fusions here,
  fewer nodes, more time, and on the >2 GB model a peak of ~17 GB (~12 GB at opt_level 0);
- ``onnxscript``: ``onnx_ir.load``, ``onnxscript.rewriter.ort_fusions.optimize_for_ort``,
  ``onnx_ir.save``.

Timing: after one untimed warm-up run of each variant (disk cache, imports, registries; its
output gives the op counts), every variant runs in this process ``--repeat`` times, interleaved
and in rotating order (so drift in disk cache, CPU clock or neighbours' load hits all alike),
after an ``os.sync()`` outside the timed region (so no run pays for writing back the previous
run's output). The table shows the median, the minimum, the ratios to load + save of the medians
("x load+save", what the targets read) and of the minimums ("min x"), and the process CPU time
(ONNX Runtime's threads included). Each timed run writes a new output file (the old one is
deleted untimed), as a run to a fresh path does: on ext4, replacing an existing 333 MB file by
rename (onnxpass's atomic save) costs noticeably more than truncating it in place (onnx.save), a
file-system cost of re-runs that ``--overwrite`` measures. When the cache is on tmpfs, each
output is deleted once timed, so that outputs do not fill memory.

Memory (on by default; ``--no-memory`` skips it): each variant runs once more in a fresh
interpreter, which reports its VmHWM (peak resident set) after importing the variant's modules
("start") and after the run ("peak").

``--fresh`` (the default with ``--large``, where the peers would leave this process holding
~10 GB it cannot give back): the warm-up and every timed run each start a fresh interpreter,
which imports the variant's modules, then times the variant's call alone (wall and CPU) and reads
its VmHWM; the table shows the largest "start" and "peak" over the timed runs, and no separate
memory runs are needed.

The second table describes each warm-up output: the size of its .onnx and of its external data
("inline": none), the node count, the ai.onnx opset, and every op type whose count rose over the
input's (the fused ops: LayerNormalization, Attention, ms:SkipLayerNormalization, ms:QuickGelu,
...; ``ms:`` is com.microsoft). ``--verify`` runs onnx.checker on each output and compares it with
the input in ONNX Runtime (ONNX Runtime's optimizer writes LayerNormalization under opset 14,
which ONNX Runtime runs and onnx.checker rejects).

The header names the file system the cache folder is on: the positional argument decides the disk.
Outputs go to ``CACHE/out/<model>/<variant>.onnx`` (+ ``.data``); the models stay cached.

    python bench/bench_run.py                          # CLIP, cache on /tmp (ext4 here)
    python bench/bench_run.py /dev/shm/onnxpass-bench  # on tmpfs: no disk write-back noise
    python bench/bench_run.py --large                  # the >2 GB external-data ViT-H/14
    python bench/bench_run.py --fresh                  # CLIP, each run in a fresh interpreter
    python bench/bench_run.py --variants onnx,onnxpass:default --repeat 9
    python bench/bench_run.py --passes layernorm=plugin,gelu=plugin   # one more onnxpass variant
    python bench/bench_run.py --verify           # + checker and ONNX Runtime comparison of outputs
    python bench/bench_run.py --profile          # + cProfile of one onnxpass run, top costs

On a shared 2-core machine the disk's write-back of 333 MB makes any single save take 0.7 s or
1.6 s at random, for onnx.save and onnxpass alike; on tmpfs the table measures the CPU work.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_run_models import export_clip, export_vit_huge
from bench_run_variants import (
    filesystem,
    fresh_run,
    fstype,
    has_external_data,
    label,
    model_bytes,
    op_counts,
    out_path,
    remove_output,
    run_variant,
    weight_bytes,
)

BASE = "onnx"
DEFAULT = "onnxpass:default"
LGA = "onnxpass:layernorm,gelu,attention"
TARGETS = {DEFAULT: 1.25, LGA: 1.15}  # at most this times load + save (issue 12)
MEMORY_BUDGET_MIB = 256  # plus the weights a pass reads (issue 12)


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in
                        enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _error(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]


# ---- checks -------------------------------------------------------------------------------------

def verify(src: Path, keys: list[str], outdir: Path, external: bool, discard: bool) -> bool:
    import onnx

    from onnxpass.verify import compare_models, random_inputs

    feeds = random_inputs(onnx.load(str(src), load_external_data=False), seed=0)
    ok = True
    for key in keys:
        out = out_path(outdir, key)
        if not out.exists():  # deleted once timed (tmpfs): write it again
            run_variant(key, src, out, external)
        try:  # a peer's output the checker rejects or ONNX Runtime cannot run is a finding
            onnx.checker.check_model(str(out))
        except Exception as e:
            print(f"verify {label(key)}: onnx.checker FAILED: {_error(e)}")
            ok = False
        try:
            for s in compare_models(str(src), str(out), feeds, rtol=1e-4, atol=1e-5):
                print(f"verify {label(key)}: {s.line()}")
                ok &= s.within
        except Exception as e:
            print(f"verify {label(key)}: ONNX Runtime FAILED: {_error(e)}")
            ok = False
        if discard:
            remove_output(out)
    return ok


def profile(key: str, src: Path, out: Path, external: bool, top: int) -> None:
    prof = cProfile.Profile()
    gc.collect()
    prof.enable()
    run_variant(key, src, out, external)
    prof.disable()
    for sort in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(sort).print_stats(top)
        text = buf.getvalue()
        print(f"\n--- cProfile of {label(key)}, top {top} by {sort} ---")
        print((text[text.index("   ncalls"):] if "   ncalls" in text else text).rstrip())


# ---- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("cache", nargs="?", default="/tmp/onnxpass-bench",
                    help="folder for the exported model and outputs; its file system is the disk "
                         "measured (default /tmp/onnxpass-bench)")
    ap.add_argument("--large", action="store_true",
                    help="the >2 GB external-data ViT-H/14 instead of CLIP ViT-B/32")
    ap.add_argument("--repeat", "-n", type=int, default=None,
                    help="timed runs per variant, median (default 5; 3 with --large)")
    ap.add_argument("--hidden-act", default="quick_gelu",
                    help="CLIP activation: quick_gelu (the default config) or gelu")
    ap.add_argument("--variants", default=f"{BASE},{DEFAULT},{LGA},ort,onnxscript",
                    help="comma-separated: onnx, onnxpass:default, "
                         "onnxpass:layernorm,gelu,attention, ort, onnxscript (default: all; "
                         "onnx, the baseline, is always run)")
    ap.add_argument("--passes", action="append", default=[], metavar="PASSES",
                    help="one more onnxpass variant with these passes (repeatable)")
    ap.add_argument("--ort-model-type", default=None,
                    help="model_type for ONNX Runtime's optimizer (default: clip for CLIP, "
                         "vit for --large)")
    ap.add_argument("--ort-opt-level", default="0",
                    help="opt_level for ONNX Runtime's optimizer: 0, 1, 2 or default (the model "
                         "type's, 1 for clip and vit); a comma-separated list runs one variant "
                         "for each (default: 0)")
    ap.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=None,
                    help="run every warm-up and timed run in a fresh interpreter, timing the "
                         "variant's call and reading each run's peak RSS (default: with --large; "
                         "keeps this process small)")
    ap.add_argument("--no-memory", action="store_true",
                    help="without --fresh: skip the peak-RSS runs (one fresh process per variant)")
    ap.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)  # now the default
    ap.add_argument("--verify", action="store_true",
                    help="check outputs with onnx.checker and compare them in ONNX Runtime")
    ap.add_argument("--profile", action="store_true", help="cProfile one onnxpass run")
    ap.add_argument("--top", type=int, default=25, help="rows of the profile to print")
    ap.add_argument("--overwrite", action="store_true",
                    help="let each run overwrite the last run's output instead of writing anew")
    args = ap.parse_args(argv)
    repeat = args.repeat or (3 if args.large else 5)

    # the variants: --variants splits on commas outside onnxpass:PASSES's own commas
    keys: list[str] = []
    for part in args.variants.split(","):
        if keys and keys[-1].startswith("onnxpass:") and part and ":" not in part and \
                part not in ("onnx", "ort", "onnxscript"):
            keys[-1] += "," + part
        elif part:
            keys.append(part)
    keys += [f"onnxpass:{p}" for p in args.passes]
    ort_type = args.ort_model_type or ("vit" if args.large else "clip")
    levels = [lv for lv in args.ort_opt_level.split(",") if lv]
    if not levels or any(lv not in ("0", "1", "2", "default") for lv in levels):
        ap.error(f"--ort-opt-level: 0, 1, 2 or default, not {args.ort_opt_level!r}")
    keys = [x for k in keys for x in ([f"ort:{ort_type}:{lv}" for lv in levels]
                                      if k == "ort" else [k])]
    keys = [BASE, *dict.fromkeys(k for k in keys if k != BASE)]
    for k in keys:
        label(k)  # unknown names fail here, before the export

    cache = Path(args.cache)
    t0 = time.perf_counter()
    src = export_vit_huge(cache) if args.large else export_clip(cache, args.hidden_act)
    built = time.perf_counter() - t0
    outdir = cache / "out" / src.stem  # the outputs, one folder per model
    outdir.mkdir(parents=True, exist_ok=True)
    external = has_external_data(src)
    onnx_size, data_size = model_bytes(src)
    weights = weight_bytes(src)
    base_counts, base_nodes, base_opset = op_counts(src)
    tmpfs = fstype(cache) == "tmpfs"
    discard = tmpfs and not args.overwrite

    print(f"model: {src} ({onnx_size / 2**20:.1f} MiB"
          + (f" + {data_size / 2**30:.2f} GiB external data" if external else ", inline")
          + f"; weights {weights / 2**20:.0f} MiB; {base_nodes} nodes; opset {base_opset})"
          + (f"; built in {built:.0f}s" if built > 5 else ""), flush=True)

    fresh = args.fresh if args.fresh is not None else args.large
    print(f"cache: {cache} on {filesystem(cache)}", flush=True)
    print("runs: " + ("each in a fresh interpreter, timing the variant's call (imports excluded) "
                      "and reading its peak RSS" if fresh else
                      "in this process" + ("" if args.no_memory else
                                           ", then once each in a fresh one for peak RSS")),
          flush=True)

    failed: dict[str, str] = {}
    counts: dict[str, tuple] = {}
    rss: dict[str, tuple[float, float]] = {}  # (MiB after imports, peak MiB)

    def run(key: str, out: Path) -> tuple[float, float]:
        """Run ``key`` once, as --fresh says; (wall s, CPU s). Raises what the variant raises."""
        if fresh:
            start, peak, wall, c = fresh_run(key, src, out, external)
            rss[key] = (max(start, rss.get(key, (0, 0))[0]), max(peak, rss.get(key, (0, 0))[1]))
            return wall, c
        gc.collect()
        t1, c1 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stderr(io.StringIO()):  # notes: shown in the warm-up
            run_variant(key, src, out, external)
        return time.perf_counter() - t1, time.process_time() - c1

    for key in keys:  # warm-up: disk cache, imports, pass registry; and the op counts
        out = out_path(outdir, key)
        remove_output(out)
        t1 = time.perf_counter()
        try:
            if fresh:
                fresh_run(key, src, out, external)
            else:
                run_variant(key, src, out, external)  # its notes reach the terminal, once
            counts[key] = (*op_counts(out), model_bytes(out))
        except Exception as e:
            failed[key] = _error(e)
            print(f"warm-up {label(key)}: FAILED: {failed[key]}", flush=True)
            continue
        finally:
            if discard:
                remove_output(out)
        print(f"warm-up {label(key)}: {time.perf_counter() - t1:.1f}s", file=sys.stderr,
              flush=True)
    if BASE in failed:
        print("the baseline failed: no ratios")
        return 1

    active = [k for k in keys if k not in failed]
    times: dict[str, list[float]] = {k: [] for k in active}
    cpu: dict[str, list[float]] = {k: [] for k in active}
    for r in range(repeat):
        order = [active[(r + j) % len(active)] for j in range(len(active))]  # rotate: no variant
        for key in order:                                                    # always first/last
            if key in failed:
                continue
            out = out_path(outdir, key)
            if not args.overwrite:
                remove_output(out)  # every run writes a new file (see the docstring)
            os.sync()  # the last run's dirty pages: written back now, not in this run
            try:
                wall, c = run(key, out)
            except Exception as e:
                failed[key] = _error(e)
                print(f"{label(key)}: FAILED in run {r + 1}: {failed[key]}", flush=True)
                continue
            finally:
                if discard:
                    remove_output(out)
            times[key].append(wall)
            cpu[key].append(c)
    active = [k for k in active if k not in failed]

    if not args.no_memory and not fresh:
        for key in active:
            out = out_path(outdir, key)
            remove_output(out)
            try:
                rss[key] = fresh_run(key, src, out, external)[:2]
            except RuntimeError as e:
                print(f"memory {label(key)}: {_error(e)}", flush=True)
            if discard:
                remove_output(out)

    base = statistics.median(times[BASE])
    cpu_base = statistics.median(cpu[BASE])
    print(f"\nmedian of {repeat} timed runs per variant, interleaved; python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs")
    header = ["variant", "median s", "min s", "x load+save", "min x", "CPU s", "CPU x"]
    if rss:
        header += ["start MiB", "peak RSS MiB"]
    rows = [header]
    for key in keys:
        if key not in active:
            rows.append([label(key), "failed", *[""] * (len(header) - 2)])
            continue
        med, c = statistics.median(times[key]), statistics.median(cpu[key])
        row = [label(key), f"{med:.3f}", f"{min(times[key]):.3f}",
               "1" if key == BASE else f"{med / base:.2f}",
               "1" if key == BASE else f"{min(times[key]) / min(times[BASE]):.2f}", f"{c:.3f}",
               "1" if key == BASE else f"{c / cpu_base:.2f}"]
        if rss:
            row += [f"{rss[key][0]:.0f}", f"{rss[key][1]:.0f}"] if key in rss else ["?", "?"]
        rows.append(row)
    _table(rows)
    for key, name in failed.items():
        print(f"failed: {label(key)}: {name}")

    print()
    for key, target in TARGETS.items():
        if key in active:
            ratio = statistics.median(times[key]) / base
            print(f"target {label(key)}: {ratio:.2f}x load+save vs <= {target:.2f}x: "
                  f"{'met' if ratio <= target else 'MISSED'}")
        elif key in keys:
            print(f"target {label(key)}: failed, not measured")
    if rss:
        print(f"memory: weights {weights / 2**20:.0f} MiB; budget {MEMORY_BUDGET_MIB} MiB plus "
              f"the weights a pass reads")
        for key in active:
            if key not in rss:
                continue
            over = rss[key][1] - MEMORY_BUDGET_MIB
            print(f"  {label(key)}: peak {rss[key][1]:.0f} MiB = {MEMORY_BUDGET_MIB} MiB "
                  + (f"+ {over:.0f} MiB ({over / (weights / 2**20):.0%} of the weights)"
                     if over > 0 else f"- {-over:.0f} MiB"))

    # op counts: every op type whose count rose over the input's in some output
    shown = [k for k in keys if k in counts]
    rose = list(dict.fromkeys(op for k in shown for op, n in counts[k][0].items()
                              if n > base_counts.get(op, 0)))
    print("\noutputs of the warm-up runs: size of the .onnx and of its external data, and the "
          "op types whose count rose over the input's (ms: com.microsoft)")
    def layout(sizes: tuple[int, int]) -> list[str]:
        return [f"{sizes[0] / 2**20:.1f}", f"{sizes[1] / 2**20:.0f}" if sizes[1] else "inline"]

    rows = [["variant", ".onnx MiB", "data MiB", "nodes", "opset", *rose]]
    rows.append(["input", *layout((onnx_size, data_size)), str(base_nodes), str(base_opset),
                 *(str(base_counts.get(op, 0)) for op in rose)])
    for key in shown:
        c, n, o, sizes = counts[key]
        rows.append([label(key), *layout(sizes), str(n), str(o),
                     *(str(c.get(op, 0)) for op in rose)])
    _table(rows)

    ok = True
    if args.verify:
        print()
        ok = verify(src, [k for k in active if k != BASE], outdir, external, discard)
        print("verify:", "all outputs pass onnx.checker and are within rtol 1e-4" if ok else
              "FAILED (see above)")
    if args.profile:
        key = next((k for k in keys if k.startswith("onnxpass:")), DEFAULT)
        out = out_path(outdir, key)
        profile(key, src, out, external, args.top)
        if discard:
            remove_output(out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
