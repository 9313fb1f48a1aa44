"""Shared fixtures. Tests that need ../shared (real data, the YuNet copy) skip with a reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MASKWATCH_SHARED", ROOT.parent / "shared"))


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
    """Never touch the user's real data directory or cache from a test."""
    monkeypatch.setenv("MASKWATCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MASKWATCH_CONFIG", raising=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = SHARED / "data"
    if not d.is_dir():
        pytest.skip(f"real data not present at {d} (set MASKWATCH_SHARED)")
    return d


@pytest.fixture(scope="session")
def yunet_path() -> Path:
    p = SHARED / "models" / "face_detection_yunet.onnx"
    if not p.is_file():
        pytest.skip(f"YuNet copy not present at {p}")
    return p


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny colour-based stand-in attribute model (vision_helpers.make_tiny_model), one per module."""
    from vision_helpers import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models"))
