"""Shared fixtures. Real-model exports live in tests/models.py."""

import os

# Real-model tests build transformers models from configs; nothing is ever downloaded.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---- real-model exports (tests/test_real_models.py) ---------------------------------------------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def real_models(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Small random-weight transformers models, each built, counted and exported once per
    session (see tests/models.py)."""
    from tests.models import ExportCache

    return ExportCache(tmp_path_factory.mktemp("real_models"))
