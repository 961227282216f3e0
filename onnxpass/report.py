"""The rewrite report: ``onnxpass run ... --report report.html``, one self-contained HTML page.

What it holds, in order:
- the run: passes, rounds, time, and the numeric check when ``--verify`` ran;
- the summary table (per pass: matches, nodes before and after, time);
- per pass and rule, every rewrite with the names of the input model's nodes it replaced (the
  ``onnxpass.replaced`` provenance every made node carries);
- a drawing of each distinct rewrite: the replaced subgraph of the input and what stands in its
  place in the output, as SVG. Graphviz lays them out (``dot``, through the ``graphviz``
  package) where it is installed; otherwise a small layered layout here does;
- the near misses of the pattern passes on the input, furthest first (``onnxpass match
  --explain``'s ranking);
- op-type counts before and after.

A script at the end of the page counts the drawings the browser rendered (a non-empty box) into
``document.body.dataset.svgsRendered``: tests/test_report.py reads it from headless Chromium.
"""

from __future__ import annotations

import html
import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

PROVENANCE = ("onnxpass.pass", "onnxpass.rule", "onnxpass.replaced")
MAX_DRAWN_NODES = 60  # a rewrite bigger than this is listed, not drawn


@dataclass
class Rewrite:
    """One rewrite in the output: the nodes it made (sharing pass, rule and replaced list)."""

    pass_name: str
    rule: str
    replaced: list[str]
    made: list[onnx.NodeProto] = field(default_factory=list)


def rewrites(output: onnx.ModelProto) -> list[Rewrite]:
    """The rewrites whose nodes are in ``output``, grouped by their provenance."""
    groups: dict[tuple[str, str, str], Rewrite] = {}
    for n in output.graph.node:
        md = {p.key: p.value for p in n.metadata_props}
        if "onnxpass.pass" not in md:
            continue
        key = (md["onnxpass.pass"], md.get("onnxpass.rule", ""), md.get("onnxpass.replaced", ""))
        r = groups.setdefault(key, Rewrite(key[0], key[1], [x for x in key[2].split(",") if x]))
        r.made.append(n)
    return list(groups.values())


# ---- drawing -------------------------------------------------------------------------------

def _subgraph(nodes: Sequence[onnx.NodeProto]) -> tuple[list[tuple[str, str, str]],
                                                         list[tuple[str, str, str]]]:
    """Boxes (id, label, kind) and edges (from, to, label) of ``nodes`` with their boundary
    values as small ovals: inputs made outside the subgraph, outputs used outside it."""
    made = {o: f"n{k}" for k, n in enumerate(nodes) for o in n.output if o}
    used = {i for n in nodes for i in n.input}
    boxes = [(f"n{k}", n.op_type + ("" if not n.domain or n.domain == "ai.onnx" else
                                     f"\n({n.domain})"), "op") for k, n in enumerate(nodes)]
    edges: list[tuple[str, str, str]] = []
    outside: dict[str, str] = {}
    for k, n in enumerate(nodes):
        for i in n.input:
            if not i:
                continue
            if i in made:
                edges.append((made[i], f"n{k}", ""))
            else:
                vid = outside.setdefault(i, f"v{len(outside)}")
                edges.append((vid, f"n{k}", ""))
    for o, nid in made.items():
        if o not in used:
            vid = outside.setdefault(o, f"v{len(outside)}")
            edges.append((nid, vid, ""))
    boxes += [(vid, _short(v), "value") for v, vid in outside.items()]
    return boxes, edges


def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else "..." + name[-(n - 3):]


def svg(nodes: Sequence[onnx.NodeProto]) -> str:
    """An SVG drawing of ``nodes`` (graphviz's dot when installed, else a layered layout)."""
    boxes, edges = _subgraph(nodes)
    if shutil.which("dot"):
        try:
            return _svg_graphviz(boxes, edges)
        except Exception:  # a broken graphviz install: the layout below still draws it
            pass
    return _svg_layered(boxes, edges)


def _svg_graphviz(boxes: list[tuple[str, str, str]], edges: list[tuple[str, str, str]]) -> str:
    import graphviz

    g = graphviz.Digraph(graph_attr={"rankdir": "TB", "bgcolor": "transparent"},
                         node_attr={"fontname": "Helvetica", "fontsize": "11"})
    for bid, label, kind in boxes:
        if kind == "op":
            g.node(bid, label, shape="box", style="rounded,filled", fillcolor="#dbe8fb")
        else:
            g.node(bid, label, shape="ellipse", fontsize="9", color="#888888")
    for a, b, label in edges:
        g.edge(a, b, label)
    out = g.pipe(format="svg").decode()
    return out[out.index("<svg"):]  # drop the XML prologue and doctype: inline in HTML


def _svg_layered(boxes: list[tuple[str, str, str]], edges: list[tuple[str, str, str]]) -> str:
    """Layers by longest path from the sources, boxes side by side in a layer, straight edges."""
    preds: dict[str, list[str]] = {b[0]: [] for b in boxes}
    for a, b, _ in edges:
        preds[b].append(a)
    layer: dict[str, int] = {}

    def depth(v: str, seen: frozenset[str] = frozenset()) -> int:
        if v not in layer:
            layer[v] = 0 if not preds[v] or v in seen else \
                1 + max(depth(p, seen | {v}) for p in preds[v])
        return layer[v]

    for b in boxes:
        depth(b[0])
    rows: dict[int, list[tuple[str, str, str]]] = {}
    for b in boxes:
        rows.setdefault(layer[b[0]], []).append(b)
    w, h, gap_x, gap_y = 150, 34, 20, 36
    width = max(len(r) for r in rows.values()) * (w + gap_x) + gap_x
    height = len(rows) * (h + gap_y) + gap_y
    pos: dict[str, tuple[float, float]] = {}
    parts = []
    for y, row in sorted(rows.items()):
        for x, (bid, label, kind) in enumerate(row):
            px, py = gap_x + x * (w + gap_x), gap_y / 2 + y * (h + gap_y)
            pos[bid] = (px + w / 2, py)
            style = ('rx="6" fill="#dbe8fb" stroke="#335"' if kind == "op"
                     else 'rx="16" fill="none" stroke="#888"')
            parts.append(f'<rect x="{px}" y="{py}" width="{w}" height="{h}" {style}/>')
            parts.append(f'<text x="{px + w / 2}" y="{py + h / 2 + 4}" text-anchor="middle" '
                         f'font-size="{11 if kind == "op" else 9}" font-family="Helvetica">'
                         f'{html.escape(label.splitlines()[0])}</text>')
    for a, b, _ in edges:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        parts.insert(0, f'<line x1="{x1}" y1="{y1 + h}" x2="{x2}" y2="{y2}" stroke="#666" '
                        f'marker-end="url(#arrow)"/>')
    defs = ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
            'markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#666"/></marker>'
            '</defs>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{defs}{"".join(parts)}</svg>')


# ---- the page ------------------------------------------------------------------------------

def _drawings(out: list[str], pname: str, rule: str, rs: Sequence[Rewrite],
              by_name: dict[str, onnx.NodeProto],
              log: Sequence[tuple[str, str, list[onnx.NodeProto], list[onnx.NodeProto]]]) -> int:
    """Append one before/after drawing per distinct rewrite of (pass, rule); returns the SVGs
    drawn. From the rewrite log where it has them (what the rule matched, at the time), else
    from the input nodes the output's provenance names."""
    label = pname.partition("=")[0]
    cases = [(b, a) for p, r, b, a in log if p == label and r == rule]
    if not cases:
        cases = [([by_name[n] for n in x.replaced if n in by_name], x.made) for x in rs]
    kinds: dict[tuple[Any, ...], list[tuple[list[onnx.NodeProto], list[onnx.NodeProto]]]] = {}
    for b, a in cases:
        key = (tuple(sorted(n.op_type for n in b)), tuple(sorted(n.op_type for n in a)))
        kinds.setdefault(key, []).append((b, a))
    e, drawn = html.escape, 0
    for same in kinds.values():
        old, made = same[0]
        if len(old) + len(made) > MAX_DRAWN_NODES:
            out.append(f"<p class=small>{len(old)} nodes -> {len(made)}: too big to draw</p>")
            continue
        name = made[0].name if made else "(nodes removed)"
        out.append(f"<p class=small>{len(same)} like this one, e.g. <code>{e(name)}</code>:</p>"
                   f"<div class=pair><div><b>before</b> ({len(old)} nodes)<br>"
                   f"{svg(old) if old else ''}</div><div><b>after</b> ({len(made)} nodes)<br>"
                   f"{svg(made) if made else ''}</div></div>")
        drawn += bool(old) + bool(made)
    return drawn


def write_report(path: str | Path, *, source: str, output: str, before: onnx.ModelProto,
                 after: onnx.ModelProto, stats: Sequence[Any], notes: Sequence[str],
                 passes: Sequence[str], rounds: int, seconds: dict[str, float],
                 verify: Sequence[str] | None, verify_ok: bool,
                 near_misses: Sequence[dict[str, Any]],
                 log: Sequence[tuple[str, str, list[onnx.NodeProto], list[onnx.NodeProto]]] = ()
                 ) -> None:
    """Write the report page (module docstring) to ``path``. ``log``: every pattern rewrite as
    it happened (pass, rule, matched nodes, made nodes: onnxpass.patterns.rule.REWRITE_LOG);
    the drawings come from it, or for other passes from the output's provenance."""
    by_name = {n.name: n for n in before.graph.node if n.name}
    found = rewrites(after)
    e = html.escape
    out: list[str] = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>onnxpass report: {e(Path(source).name)}</title>",
        "<style>body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222}"
        "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:left}th{background:#f0f0f0}.num{text-align:right}"
        ".pair{display:flex;gap:24px;align-items:flex-start;overflow-x:auto}"
        ".pair>div{border:1px solid #ddd;padding:6px}code{font-size:12px}"
        "h3{margin-top:28px}.small{font-size:12px;color:#555}</style></head><body>",
        f"<h1>onnxpass: {e(Path(source).name)}</h1>",
        f"<p>{e(source)} &rarr; {e(output)}<br>passes: <code>{e(','.join(passes))}</code>; "
        f"{rounds} round(s); " + ", ".join(f"{k} {v:.3f} s" for k, v in seconds.items()) + "</p>",
    ]
    if notes:
        out.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    if verify is not None:
        out.append(f"<h2>Numeric check (--verify): {'ok' if verify_ok else 'MISMATCH'}</h2><ul>"
                   + "".join(f"<li><code>{e(line)}</code></li>" for line in verify) + "</ul>")
    out.append("<h2>Summary</h2><table><tr><th>pass</th><th>matches</th><th>nodes before</th>"
               "<th>nodes after</th><th>runs</th><th>time (s)</th></tr>")
    for s in stats:
        out.append(f"<tr><td>{e(s.name)}</td><td class=num>{s.matches}</td>"
                   f"<td class=num>{s.nodes_before}</td><td class=num>{s.nodes_after}</td>"
                   f"<td class=num>{len(s.rounds)}</td><td class=num>{s.seconds:.3f}</td></tr>")
    out.append("</table>")

    out.append("<h2>Rewrites</h2>")
    groups: dict[tuple[str, str], list[Rewrite]] = {}
    for r in found:
        groups.setdefault((r.pass_name, r.rule), []).append(r)
    if not groups:
        out.append("<p>No pass changed the graph.</p>")
    drawn = 0
    for (pname, rule), rs in sorted(groups.items()):
        out.append(f"<h3>{e(pname)} / {e(rule)}: {len(rs)} rewrite(s)</h3>")
        out.append("<table><tr><th>made</th><th>replaced (input model's nodes)</th></tr>")
        for r in rs:
            made = ", ".join(f"{n.op_type} <code>{e(n.name)}</code>" for n in r.made)
            out.append(f"<tr><td>{made}</td><td class=small>"
                       f"{e(', '.join(r.replaced)) or '(none: inserted)'}</td></tr>")
        out.append("</table>")
        drawn += _drawings(out, pname, rule, rs, by_name, log)

    out.append(f"<h2>Near misses (furthest first, {len(near_misses)})</h2>")
    if near_misses:
        out.append("<table><tr><th>pass / rule</th><th>root</th><th>got</th><th>stopped at</th>"
                   "<th>why</th></tr>")
        for m in near_misses:
            out.append(f"<tr><td>{e(m['pass'])} / {e(m['rule'])}</td><td>{e(m['op'])} "
                       f"<code>{e(m['node'])}</code></td><td class=num>{m['ops_matched']}/"
                       f"{m['pattern_ops']}</td><td><code>{e(m['stopped_at'] or '')}</code></td>"
                       f"<td>{e(m['reason'])}</td></tr>")
        out.append("</table>")

    b = Counter(n.op_type for n in before.graph.node)
    a = Counter(n.op_type for n in after.graph.node)
    out.append("<h2>Op types</h2><table><tr><th>op</th><th>before</th><th>after</th></tr>")
    for op in sorted(set(b) | set(a), key=lambda o: (-(a[o] - b[o]) ** 2, o)):
        out.append(f"<tr><td>{e(op)}</td><td class=num>{b[op]}</td><td class=num>{a[op]}</td>"
                   "</tr>")
    out.append("</table>")
    out.append(f"<script>document.body.dataset.svgsExpected = {json.dumps(drawn)};"
               "document.body.dataset.svgsRendered = Array.from("
               "document.querySelectorAll('.pair svg')).filter(s => {const r = "
               "s.getBoundingClientRect(); return r.width > 0 && r.height > 0;}).length;"
               "</script></body></html>")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text("\n".join(out))
    tmp.replace(path)
