"""Shared fixtures. Real-model exports live in tests/models.py."""

import os

# Real-model tests build transformers models from configs; nothing is ever downloaded.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
