"""The pattern language: write what to match in the op vocabulary, say what replaces it.

    def pattern(op, x):
        return op.Mul(x, op.Sigmoid(x))          # x and op are supplied; x becomes Var("x")

    Rule("silu", pattern, rewrite=lambda op, m: op.Swish(m["x"]))

See docs/writing-a-pass.md.
"""

from onnxpass.patterns.ir import IRRELEVANT, Alt, Attr, Const, PValue, Var
from onnxpass.patterns.matcher import MatchFailure
from onnxpass.patterns.rule import Attempt, Match, RewriteBuilder, Rule, apply_rules, explain

__all__ = ["IRRELEVANT", "Alt", "Attempt", "Attr", "Const", "Match", "MatchFailure", "PValue",
           "RewriteBuilder", "Rule", "Var", "apply_rules", "explain"]
