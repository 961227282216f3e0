"""onnxpass run --report: one self-contained HTML page (onnxpass/report.py), checked as a file
here and rendered in headless Chromium where Debian's chromium is installed (.ci/run installs it
when it can; the browser tests skip with the reason otherwise)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest

from onnxpass.report import _subgraph, _svg_layered, rewrites

ROOT = Path(__file__).resolve().parent.parent
VIT = ROOT / "examples" / "vit_tiny.onnx"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _report(src: Path, tmp_path: Path, *args: str) -> tuple[str, Path]:
    html_path, out = tmp_path / "report.html", tmp_path / "out.onnx"
    p = subprocess.run([sys.executable, "-m", "onnxpass.cli", "run", str(src), "-o", str(out),
                        "--report", str(html_path), "-q", *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return html_path.read_text(), out


def test_vit_report_has_every_part(tmp_path: Path) -> None:
    page, out = _report(VIT, tmp_path, "--verify")
    assert page.startswith("<!doctype html>") and "http" not in page.replace(
        "http://www.w3.org", "")  # self-contained: nothing fetched
    assert "Numeric check (--verify): ok" in page and "last_hidden_state" in page
    assert "<h2>Summary</h2>" in page and ">layernorm=std<" in page
    for section in ("layernorm / layernorm: 5 rewrite(s)", "gelu / gelu: 2 rewrite(s)",
                    "attention / attention: 2 rewrite(s)"):
        assert section in page, section
    # every fused node of the written model is listed with the input nodes it replaced
    model = onnx.load(str(out))
    for r in rewrites(model):
        for n in r.made:
            assert n.name in page
        for name in r.replaced:
            assert name in page
    # a before and an after drawing per distinct rewrite kind
    pairs = page.count("<div class=pair>")
    assert pairs >= 4 and page.count("<svg") >= 2 * pairs - 1
    assert "Near misses (furthest first" in page and "expected" in page
    assert "<h2>Op types</h2>" in page and "<td>LayerNormalization</td><td class=num>0</td>" \
        "<td class=num>5</td>" in page


def test_layered_layout_without_graphviz() -> None:
    """Where graphviz's dot is not installed the page still draws: every box and edge."""
    model = onnx.load(str(VIT))
    nodes = [n for n in model.graph.node if "/layers.0/layernorm_before/" in n.name]
    boxes, edges = _subgraph(nodes)
    svg = _svg_layered(boxes, edges)
    assert svg.startswith("<svg") and svg.count("<rect") == len(boxes)
    assert svg.count("<line") == len(edges) and "ReduceMean" in svg


def _chromium(args: list[str], url: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", *args, url], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium (Debian) "
                                             "to render the report in a headless browser")
@pytest.mark.parametrize("model", ["vit", "gpt2"])
def test_report_renders_in_headless_chromium(model: str, tmp_path: Path,
                                             heldout_exports: Any) -> None:
    """The page in a real browser: every drawing rendered with a non-empty box (the page's own
    count, read back from the DOM), and a screenshot (kept under the test's tmp dir; the one
    taken when this was written was looked at by hand)."""
    if model == "vit":
        src = VIT
    else:
        src = heldout_exports.export("gpt2", "ts14")
        assert isinstance(src, Path), src
    page, _ = _report(src, tmp_path)
    path = tmp_path / "report.html"
    dom = _chromium(["--dump-dom"], path.as_uri()).stdout
    expected = re.search(r'data-svgs-expected="(\d+)"', dom)
    rendered = re.search(r'data-svgs-rendered="(\d+)"', dom)
    assert expected and rendered, dom[-500:]
    assert int(expected.group(1)) >= 4 and rendered.group(1) == expected.group(1)
    shot = tmp_path / "report.png"
    _chromium([f"--screenshot={shot}", "--window-size=1300,2000"], path.as_uri())
    assert shot.stat().st_size > 20_000  # a page with drawings, not a blank one


@pytest.mark.parametrize("where,message", [
    ("input", "output would overwrite the input model"),
    ("output", "is the output model's path (-o)"),
    ("folder", "is a directory; --report takes the HTML file's path"),
])
def test_bad_report_path_is_one_line_and_writes_nothing(where: str, message: str,
                                                        tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    shutil.copy(VIT, src)
    before = src.read_bytes()
    out = tmp_path / "out.onnx"
    report = {"input": src, "output": out, "folder": tmp_path}[where]
    p = subprocess.run([sys.executable, "-m", "onnxpass.cli", "run", str(src), "-o", str(out),
                        "--report", str(report), "-q"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert src.read_bytes() == before and not out.exists()
