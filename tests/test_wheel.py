"""The wheel installs anywhere (issue 14 item 4): `python -m build` makes a wheel holding every file of the
package (models, templates, static files, train recipes, Alembic env + revisions); installed with its
runtime dependencies into a fresh virtualenv outside the repository, `maskwatch serve` answers health,
serves pages and labels a real photo through `/api/detect`, and `maskwatch detect` reports a face.

Nothing comes from the repository at run time: cwd and data live in a temporary directory, PYTHONPATH is
unset, and `maskwatch.__file__` must lie in the new virtualenv. The face detector is res10 (bundled with a
dependency), so nothing is downloaded."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from smtp_sink import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "maskwatch"
MASKED = "mask/chandrikadeb7/with_mask/0129.jpg"  # one masked face
BARE = "mask/chandrikadeb7/without_mask/0.jpg"  # one bare face


def package_files(root: Path) -> set[str]:
    """Every file of the source package under root, as wheel paths (caches left out)."""
    package = root / "src" / "maskwatch"
    return {
        "maskwatch/" + p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The working tree as a fresh checkout would have it: the files git tracks or would track, without
    the ignored ones (a stale src/maskwatch.egg-info/SOURCES.txt would hide a missing package-data rule)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    out = tmp_path_factory.mktemp("source")
    for name in filter(None, (n.decode() for n in listed)):
        src = ROOT / name
        if src.is_file() and not src.is_symlink():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / name)
    return out


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (whl,) = out.glob("maskwatch-*.whl")
    print(f"\nbuild: {time.perf_counter() - t0:.1f} s, wheel {whl.stat().st_size / 1e6:.2f} MB")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """(bin dir, environment, cwd) of a fresh virtualenv outside the repository with the wheel installed."""
    base = tmp_path_factory.mktemp("installed")
    assert not base.resolve().is_relative_to(ROOT)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("MASKWATCH_")
    }
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, env=env, timeout=120)
    bin_dir = base / "venv" / "bin"
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        MASKWATCH_DATA_DIR=str(base / "data"),
        XDG_CACHE_HOME=str(base / "cache"),
        MASKWATCH_DETECTOR__BACKEND="res10",
        PYTHONUNBUFFERED="1",
    )
    cwd = base / "run"
    cwd.mkdir()
    t0 = time.perf_counter()
    r = subprocess.run(
        [str(bin_dir / "pip"), "install", str(wheel)], capture_output=True, text=True, env=env, cwd=cwd
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"\npip install of the wheel and its dependencies: {time.perf_counter() - t0:.1f} s")
    return bin_dir, env, cwd


def test_wheel_holds_every_package_file(wheel, source):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = package_files(source) - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    for required in (
        "maskwatch/models/attributes.onnx",
        "maskwatch/models/attributes.json",
        "maskwatch/web/templates/base.html",
        "maskwatch/web/static/app.css",
        "maskwatch/train/recipes/base.toml",
        "maskwatch/store/alembic/env.py",
        "maskwatch/store/alembic/script.py.mako",
        "maskwatch/store/alembic/versions/r0001_baseline.py",
    ):
        assert required in names


def run(venv, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    bin_dir, env, cwd = venv
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_installed_package_is_the_wheel(venv):
    code = "import json, sys, maskwatch; print(json.dumps([maskwatch.__file__, sys.path]))"
    r = run(venv, "python", "-c", code)
    assert r.returncode == 0, r.stderr
    file, path = json.loads(r.stdout)
    assert Path(file).is_relative_to(venv[0].parent), file
    assert not [p for p in path if p and Path(p).resolve().is_relative_to(ROOT)], path


def test_installed_serve_and_detect(venv, shared_data):
    r = run(venv, "maskwatch", "users", "add", "admin", "--password-stdin", stdin="wheel-test-pass\n" * 2)
    assert r.returncode == 0, r.stderr
    r = run(venv, "maskwatch", "users", "token", "admin", "--label", "wheel")
    assert r.returncode == 0, r.stderr
    token = r.stdout.split()[-1]
    assert token.startswith("mw_")

    # the schema came from the installed Alembic revisions
    texts = [p.read_text() for p in (PACKAGE / "store/alembic/versions").glob("*.py")]
    ids = {m for t in texts for m in re.findall(r'^revision = "(\w+)"', t, re.M)}
    downs = {m for t in texts for m in re.findall(r'^down_revision = "(\w+)"', t, re.M)}
    db = sqlite3.connect(Path(venv[1]["MASKWATCH_DATA_DIR"]) / "maskwatch.db")
    assert [db.execute("SELECT version_num FROM alembic_version").fetchone()[0]] == sorted(ids - downs)
    db.close()

    bin_dir, env, cwd = venv
    port = free_port()
    log = open(cwd / "serve.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(bin_dir / "maskwatch"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.time() + 90
            while True:
                assert proc.poll() is None, (cwd / "serve.log").read_text()
                try:
                    if client.get("/api/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.time() < deadline, "serve did not answer /api/health"
                time.sleep(0.3)
            assert client.get("/login").status_code == 200  # templates
            assert client.get("/static/app.css").status_code == 200  # static files
            photo = (shared_data / MASKED).read_bytes()
            r = client.post(
                "/api/detect",
                headers={"Authorization": f"Bearer {token}"},
                files={"file": ("masked.jpg", photo, "image/jpeg")},
            )
            assert r.status_code == 200, r.text
            faces = r.json()["faces"]
            assert [f["mask"]["label"] for f in faces] == ["mask"], faces
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()

    r = run(venv, "maskwatch", "detect", str(shared_data / BARE), "--json", "-")
    assert r.returncode == 0, r.stderr
    frame = json.loads(r.stdout.splitlines()[0])
    assert [f["mask"]["label"] for f in frame["faces"]] == ["no_mask"], frame
