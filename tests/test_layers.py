"""onnxpass's modules form layers without import cycles, counting imports inside functions and
under ``TYPE_CHECKING`` (a lazy import is still a dependency: it only moves the failure to run
time).

A module may import modules of its own layer and of the layers below it (docs/design.md, "Layers",
says what each holds). ``python -m pytest -q tests/test_layers.py`` prints every cycle and every
upward import it finds. Also here: every dependency pyproject.toml declares is imported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "onnxpass"
# distribution name -> the module onnxpass imports, where the two differ
IMPORT_NAMES = {"onnx-graphsurgeon": "onnx_graphsurgeon", "protobuf": "google.protobuf"}

# Lowest first: onnxpass.<first component> -> its layer. A module not listed fails the test: add
# it to the layer of what it imports, and to the README's layout table.
LAYERS: list[set[str]] = [
    {"errors"},
    {"tensorrt_available", "loadcheck", "wire", "targets"},
    {"modelio"},
    {"verify", "images", "calibration"},
    {"graph", "opset"},
    {"plugins"},  # specs and kernels: what a plugin node is, below the rules that emit one
    {"patterns"},
    {"passes"},
    {"trt_build", "compare", "report"},
    {"api"},
    {"debug_precision"},
    {"testing"},
    {"cli"},
    {"onnxpass"},  # the package's __init__: the public names
]

# Imports being removed elsewhere (issue 10, points 1, 2 and 5): each listed edge is left out of
# the graph, so a new cycle or upward import still fails; an edge that no longer exists fails too,
# so these lists only shrink. Delete an entry once its import is gone.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()
KNOWN_UPWARD_EDGES: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the onnxpass modules it imports anywhere in its body. ``from a import b`` is an
    edge to ``a.b`` when that is a module, else to ``a``; the implicit imports of parent packages
    are not edges (every module would then depend on ``onnxpass/__init__``)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: climb level - 1 packages above this one
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    if target in files:
                        edges.add(target)
                    elif base in files:
                        edges.add(base)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """One shortest cycle through each module that lies on one, rotated to start at its smallest
    name so that the same cycle found from two modules is reported once."""
    found: set[tuple[str, ...]] = set()
    for start in sorted(graph):
        # breadth-first from start's imports back to start: the shortest cycle through it
        parent: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in parent:
            nxt = []
            for m in frontier:
                for dep in sorted(graph.get(m, ())):
                    if dep not in parent:
                        parent[dep] = m
                        nxt.append(dep)
            frontier = nxt
        if start not in parent:
            continue
        path = [start]
        while parent[path[-1]] != start:
            path.append(parent[path[-1]])
        path.reverse()  # start -> ... -> the module importing start
        i = path.index(min(path))
        found.add(tuple(path[i:] + path[:i]))
    return sorted(found)


def show(cycle: tuple[str, ...]) -> str:
    return " -> ".join([*cycle, cycle[0]])


def layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else parts[0]
    return next((i for i, names in enumerate(LAYERS) if top in names), -1)


def test_the_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    # imported inside a function only: the walk must see it
    assert "onnxpass.trt_build" in graph["onnxpass.debug_precision"]


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in import_graph() if layer(m) < 0)
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def test_known_edges_still_exist() -> None:
    graph = import_graph()
    gone = sorted((a, b) for a, b in KNOWN_CYCLE_EDGES | KNOWN_UPWARD_EDGES
                  if b not in graph.get(a, ()))
    assert not gone, ("imports listed as known no longer occur; delete them from "
                      "KNOWN_CYCLE_EDGES / KNOWN_UPWARD_EDGES:\n  "
                      + "\n  ".join(f"{a} -> {b}" for a, b in gone))


def test_no_import_cycles() -> None:
    graph = {m: {d for d in deps if (m, d) not in KNOWN_CYCLE_EDGES}
             for m, deps in import_graph().items()}
    found = cycles(graph)
    assert not found, "import cycles among onnxpass modules:\n  " + "\n  ".join(map(show, found))


def test_no_upward_imports() -> None:
    graph = import_graph()
    upward = sorted((m, d) for m, deps in graph.items() for d in deps
                    if layer(d) > layer(m) and (m, d) not in KNOWN_UPWARD_EDGES)
    assert not upward, ("imports of a higher layer (see LAYERS):\n  "
                        + "\n  ".join(f"{m} -> {d}" for m, d in upward))


def test_every_dependency_is_imported() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    imported: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module)
    unused = []
    for requirement in project["dependencies"]:
        dist = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)  # type: ignore[union-attr]
        module = IMPORT_NAMES.get(dist, dist)
        if not any(m == module or m.startswith(module + ".") for m in imported):
            unused.append(dist)
    assert not unused, f"declared in pyproject.toml but imported by no onnxpass module: {unused}"
