"""Shared fixtures. Tests that need ../shared (real data, the YuNet copy) skip with a reason when absent."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
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


def _as_user() -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as `nobody` then."""
    return ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def pg_url():
    """A throwaway PostgreSQL server (initdb / pg_ctl in a temp folder) for the module; its URL."""
    pytest.importorskip("psycopg")
    from smtp_sink import free_port

    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) not on PATH")
    d = Path(tempfile.mkdtemp(prefix="maskwatch-pg-"))
    d.chmod(0o777)
    data, port = d / "data", free_port()
    run = _as_user()
    r = subprocess.run(
        [*run, "initdb", "-D", str(data), "-U", "mw", "-A", "trust"], capture_output=True, timeout=120
    )
    if r.returncode != 0:
        pytest.skip(f"initdb failed: {r.stderr.decode()[-300:]}")
    opts = f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off"
    r = subprocess.run(
        [*run, "pg_ctl", "-D", str(data), "-o", opts, "-l", str(d / "log"), "-w", "start"],
        capture_output=True,
        timeout=120,
    )
    if r.returncode != 0:
        pytest.skip(f"PostgreSQL did not start: {r.stderr.decode()[-300:]}")
    try:
        yield f"postgresql+psycopg://mw@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)
