"""The two builders a pass is written against, as typing Protocols.

A pattern function is ``def pattern(op: PatternOps, x: PValue) -> PValue``; a rewrite is
``def rewrite(op: RewriteOps, m: Match[F]) -> str | Sequence[str] | None``. The concrete classes
are :class:`~onnxpass.patterns.ir.OpBuilder` and :class:`~onnxpass.patterns.rule.RewriteBuilder`;
the assignments at the bottom of this module make pyright check that they satisfy these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from onnxpass.patterns.ir import OpBuilder
    from onnxpass.patterns.rule import RewriteBuilder


class PatternOps(Protocol):
    """The ``op`` a pattern function receives: every attribute is an op type, and calling it builds
    a pattern node, ``op.Mul(x, op.Sigmoid(x))``. The call returns the node's output (a
    :class:`~onnxpass.patterns.ir.PValue`), or a tuple of them with ``_outputs=n``; keywords are
    attributes to match, plus ``_domain``, ``_outputs`` and ``_any_attrs``."""

    def __getattr__(self, op_type: str) -> Callable[..., Any]: ...


class RewriteOps(Protocol):
    """The ``op`` a rewrite receives: ``op.LayerNormalization(x, g, b, axis=-1)`` records a new
    node and returns its output name (or a tuple of names with ``_outputs=n``)."""

    def __getattr__(self, op_type: str) -> Callable[..., Any]: ...

    def node(self, op_type: str, inputs: Sequence[str], attrs: dict[str, Any], *, domain: str = "",
             num_outputs: int = 1) -> Any: ...

    def const(self, value: Any, dtype: Any = None, hint: str = "const") -> str: ...

    def dtype(self, value: str) -> int | None: ...

    def plugin(self, name: str, *inputs: str, **attrs: Any) -> str: ...


if TYPE_CHECKING:  # the concrete builders satisfy the protocols
    def _pattern_ops(b: OpBuilder) -> PatternOps:
        return b

    def _rewrite_ops(b: RewriteBuilder) -> RewriteOps:
        return b
