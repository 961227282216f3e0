"""softplus: log(1 + exp(x)) -> Softplus(x). The example pass of docs/writing-a-pass.md."""

from onnxpass.passes import PatternPass, register
from onnxpass.patterns import Match, MatchFailure, Rule


def softplus_pattern(op, x):
    return op.Log(op.Add(op.Exp(x), 1.0))  # Add is commutative: 1 + exp(x) matches too


def check_softplus(m: Match) -> MatchFailure | None:
    if m.dtype("x") is None:
        return MatchFailure("dtype of x unknown")
    return None


@register
class Softplus(PatternPass):
    name = "softplus"
    summary = "log(1 + exp(x)) -> Softplus"

    def rules(self) -> list[Rule]:
        return [Rule(name="softplus", pattern=softplus_pattern, check=check_softplus,
                     rewrite=lambda op, m: op.Softplus(m["x"]))]
