"""Shared fixtures. Real-model exports live in tests/models.py."""

import os

# Real-model tests build transformers models from configs; nothing is ever downloaded.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---- real-model exports, each made once per session ---------------------------------------------

import pytest


@pytest.fixture(scope="session")
def real_models(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Small random-weight transformers models, each built, counted and exported once per
    session (see tests/models.py)."""
    from tests.models import ExportCache

    return ExportCache(tmp_path_factory.mktemp("real_models"))


@pytest.fixture(scope="session")
def anchordetr(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The AnchorDETR-style model (tests/models_anchordetr.py), its counts and exports."""
    from tests.models_anchordetr import AnchorDETRExports

    return AnchorDETRExports(tmp_path_factory.mktemp("anchordetr"))


@pytest.fixture(scope="session")
def mstpp_exports(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The tiny MST++ (tests/models_mstpp.py) and ``exporter -> path``."""
    from tests.models import lazy_exports
    from tests.models_mstpp import mstpp

    built = mstpp()
    return built, lazy_exports(built, tmp_path_factory.mktemp("mstpp"), "mstpp")


@pytest.fixture(scope="session")
def deit_exports(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``exporter -> path`` of the DeiT of tests/models_attention.py."""
    from tests.models import lazy_exports
    from tests.models_attention import deit

    return lazy_exports(deit(), tmp_path_factory.mktemp("deit"), "deit")


@pytest.fixture(scope="session")
def heldout_exports(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Held-out architectures (GPT-2, T5 encoder, Llama, Qwen2, Mask2Former, Whisper, BEiT):
    each export, torch count and pipeline rewrite made once per session and shared by
    test_heldout_exports, test_modern_exports and test_plugin_opset (tests/models_heldout.py)."""
    from tests.models_heldout import HeldoutExports

    return HeldoutExports(tmp_path_factory.mktemp("heldout"))
