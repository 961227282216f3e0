"""Testing helpers for passes: golden-graph files and their pytest plugin."""

from onnxpass.testing.golden import GoldenCase, GoldenMismatch, canonical_text, check_golden

__all__ = ["GoldenCase", "GoldenMismatch", "canonical_text", "check_golden"]
