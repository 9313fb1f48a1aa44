"""`maskwatch batch` on real shared videos: the same per-frame results as `detect` across chunk borders,
resuming after SIGKILL, a real local Ray cluster, statistics in the event store."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_cluster import local_ray_cluster

CLIP = "Gituatu_face-mask-detection__video.mp4"  # 111 frames, 30 fps: two faces, then a mask is put on
MASKWATCH = str(Path(sys.executable).with_name("maskwatch"))


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([MASKWATCH, *args], capture_output=True, text=True, timeout=300, check=True, **kw)


def _frames(path: Path) -> list[dict]:
    """The JSON lines without timings (the only field that differs between runs)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        del r["timings_ms"]
    return rows


@pytest.fixture(scope="module")
def clip(shared_data: Path) -> Path:
    return shared_data / "videos" / CLIP


@pytest.fixture(scope="module")
def models(yunet_path: Path) -> list[str]:
    return ["--detector", "yunet", "--yunet", str(yunet_path)]


def every2_args(clip: Path, out: Path, models: list[str], *where: str) -> list[str]:
    """`batch` on `clip` into `out`, every 2nd frame, 0.5 s chunks; `where`: workers, Ray, store."""
    return [
        "batch",
        str(clip),
        "--out",
        str(out),
        "--every-nth",
        "2",
        "--chunk-seconds",
        "0.5",
        *where,
        *models,
    ]


@pytest.fixture(scope="module")
def every2(tmp_path_factory, clip: Path, models: list[str]) -> Path:
    """An uninterrupted local run, every 2nd frame, 0.5 s chunks, with the statistics in a store."""
    out = tmp_path_factory.mktemp("every2")
    db = out / "stats.db"
    _run(
        *every2_args(
            clip,
            out,
            models,
            "--workers",
            "2",
            "--store",
            f"sqlite:///{db}",
            "--start",
            "2026-03-01T12:00:30",
        )
    )
    return out


def test_batch_equals_detect(tmp_path: Path, clip: Path, models: list[str]) -> None:
    detect_json = tmp_path / "detect.jsonl"
    _run("detect", str(clip), "--json", str(detect_json), *models)
    out = tmp_path / "batch"
    done = _run("batch", str(clip), "--out", str(out), "--chunk-seconds", "1", "--workers", "2", *models)
    assert json.loads(done.stdout)["frames"] == 111
    assert len(list((out / ".chunks").glob("*/*.jsonl"))) == 4  # 3 chunk borders
    batch, reference = _frames(out / f"{clip.stem}.jsonl"), _frames(detect_json)
    assert batch == reference  # boxes, track ids, labels and confidences, every frame
    ids_per_chunk = [{f["track_id"] for r in batch[i : i + 30] for f in r["faces"]} for i in (0, 30, 60, 90)]
    assert all(a & b for a, b in zip(ids_per_chunk, ids_per_chunk[1:], strict=False))  # ids run across
    rows = list(csv.DictReader((out / f"{clip.stem}.csv").open()))
    assert rows[0]["minute"] == "0" and int(rows[0]["people"]) >= 2


def test_resume_after_kill(tmp_path: Path, clip: Path, models: list[str], every2: Path) -> None:
    out = tmp_path / "killed"
    args = [MASKWATCH, *every2_args(clip, out, models, "--workers", "1")]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob(".chunks/*/*.jsonl"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.glob(".chunks/*/*.jsonl")}
    assert 3 <= len(finished) < 8 and not (out / f"{clip.stem}.jsonl").exists()
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True)
    assert f"resuming: {len(finished)} finished chunk(s) skipped" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not recomputed
    assert _frames(out / f"{clip.stem}.jsonl") == _frames(every2 / f"{clip.stem}.jsonl")


def test_store_statistics(every2: Path, clip: Path) -> None:
    from datetime import UTC, datetime

    from maskwatch.store import Store

    store = Store(f"sqlite:///{every2 / 'stats.db'}", snapshots_dir=every2)
    stats = store.stats(camera=f"batch:{clip.stem}", bucket="minute")
    store.close()
    rows = list(csv.DictReader((every2 / f"{clip.stem}.csv").open()))
    assert rows[0]["start_utc"] == datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC).isoformat()
    assert [b["t"] for b in stats["buckets"]] == ["2026-03-01T12:00:00+00:00"]  # 3.7 s from 12:00:30
    assert stats["totals"]["people"] == int(rows[0]["people"]) >= 2
    assert stats["totals"]["masked"] == int(rows[0]["masked"])


@pytest.mark.slow
def test_batch_on_ray(tmp_path: Path, clip: Path, models: list[str], every2: Path) -> None:
    out = tmp_path / "ray"
    with local_ray_cluster(tmp_path, nodes=2, cpus_per_node=1) as cluster:
        _run(*every2_args(clip, out, models, "--ray", cluster.address))
    assert _frames(out / f"{clip.stem}.jsonl") == _frames(every2 / f"{clip.stem}.jsonl")
