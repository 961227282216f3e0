"""Pin lists: the file that names what a low-precision pass keeps float32.

One entry a line: ``op:TYPE``, ``node:NAME`` (``*``, ``?`` and ``[...]`` match as in shell globs),
``pattern:PASS`` or a bare node name; ``#`` starts a comment. ``onnxpass debug precision`` writes
them; ``onnxpass run/build --pins FILE`` (or ``ONNXPASS_FP16_PINS``) reads them.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import NamedTuple

from onnxpass.errors import OnnxpassError
from onnxpass.graph import Node

PINS_ENV = "ONNXPASS_FP16_PINS"
"""The environment variable naming a pin list every low-precision pass reads."""


class PinList(NamedTuple):
    """What a pin-list file names: op types, node names or globs, pattern pass names."""

    ops: set[str]
    nodes: set[str]
    patterns: set[str]


def read_pins(path: str | os.PathLike[str]) -> PinList:
    """Parse the pin-list file at ``path``; an unreadable file is a one-line error."""
    ops: set[str] = set()
    nodes: set[str] = set()
    patterns: set[str] = set()
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise OnnxpassError(f"{path}: cannot read the pin list: "
                            f"{getattr(e, 'strerror', None) or e}") from None
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        kind, sep, value = entry.partition(":")
        if not entry:
            continue
        if sep and kind in ("op", "pattern"):
            (ops if kind == "op" else patterns).add(value.strip())
        else:
            nodes.add(value.strip() if sep and kind == "node" else entry)
    return PinList(ops, nodes, patterns)


def node_key(n: Node) -> str:
    """How a pin list names a node: its name, or its first output when it has none."""
    return n.name or n.outputs[0]


class NodePins:
    """Which nodes ``keep_ops`` (op types) and ``keep_nodes`` (names, first outputs, or shell
    globs of names) pin: the node half of a pin list, as every low-precision pass reads it."""

    def __init__(self, keep_ops: set[str], keep_nodes: set[str]) -> None:
        self.ops, self.nodes = keep_ops, keep_nodes
        self.globs = [k for k in keep_nodes if any(c in k for c in "*?[")]

    def __call__(self, n: Node) -> bool:
        return (n.op_type in self.ops or node_key(n) in self.nodes or n.name in self.nodes
                or any(fnmatch.fnmatchcase(n.name or node_key(n), k) for k in self.globs))
