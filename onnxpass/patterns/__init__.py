"""The pattern language: write what to match in the op vocabulary, say what replaces it.

    def pattern(op, x):
        return op.Mul(x, op.Sigmoid(x))          # x and op are supplied; x becomes Var("x")

    Rule(name="silu", pattern=pattern, rewrite=lambda op, m: op.Swish(m["x"]))  # all keywords

See docs/writing-a-pass.md.
"""

from onnxpass.patterns.ir import IRRELEVANT, Alt, Attr, Const, PValue, Var
from onnxpass.patterns.matcher import MatchFailure
from onnxpass.patterns.protocols import PatternOps, RewriteOps
from onnxpass.patterns.rule import (
    Attempt,
    Found,
    Match,
    RewriteBuilder,
    Rule,
    apply_rules,
    explain,
    find_matches,
)

__all__ = ["IRRELEVANT", "Alt", "Attempt", "Attr", "Const", "Found", "Match", "MatchFailure",
           "PValue", "PatternOps", "RewriteBuilder", "RewriteOps", "Rule", "Var", "apply_rules",
           "explain", "find_matches"]
