"""Running a batch: chunks on local processes or Ray tasks, resumably; then, per video, the replay and
its reports (JSON lines, per-minute CSV, optional annotated video, optional event store rows).

Each finished chunk is written atomically (temporary file + rename) to
`OUT/.chunks/NAME-KEY/NNNN.jsonl`; a later run with the same inputs and settings skips it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from maskwatch.batch.chunks import Chunk, Video, analyse, analysis_key, find_videos, load_models, plan
from maskwatch.batch.replay import replay
from maskwatch.config import Settings
from maskwatch.store.minutes import COUNT_KEYS, MinuteAccumulator, with_compliance
from maskwatch.types import FrameResult

log = logging.getLogger(__name__)


@dataclass
class BatchOptions:
    out: Path
    every_nth: int = 1
    chunk_seconds: float = 60.0
    workers: int = 0  # 0: one per core
    ray_address: str | None = None
    annotate: bool = False
    store_url: str | None = None
    start: datetime | None = None  # None: each file's modification time


def probe(path: str, name: str, settings: Settings, opts: BatchOptions) -> tuple[Video, int]:
    """The video and its chunk length in frames."""
    import cv2

    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise ValueError(f"cannot open video {path} (corrupt or unsupported format)")
    frames, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), cap.get(cv2.CAP_PROP_FPS) or 25.0
    pixels = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0) * int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    cap.release()
    chunk_frames = max(1, round(opts.chunk_seconds * fps))
    key = analysis_key(path, settings, opts.every_nth, chunk_frames)
    return Video(path, name, max(frames, 0), fps, key, pixels), chunk_frames


class Progress:
    """A progress line on stderr: frames analysed, frames/s of this run, ETA."""

    def __init__(self, total: int, done: int) -> None:
        self.total, self.done, self.t0, self.fresh = max(total, 1), done, time.monotonic(), 0
        self.tty = sys.stderr.isatty()

    def add(self, frames: int) -> None:
        self.done += frames
        self.fresh += frames
        rate = self.fresh / max(time.monotonic() - self.t0, 1e-6)
        left = max(self.total - self.done, 0) / rate if rate else 0.0
        share = min(self.done / self.total, 1.0)
        bar = "#" * int(share * 30)
        eta = f"{int(left // 60)}:{int(left % 60):02d}"
        line = f"[{bar:<30}] {share:4.0%} {self.done}/{self.total} frames {rate:.1f} frames/s ETA {eta}"
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _single_threaded() -> None:
    """Worker process start: OpenCV and ONNX Runtime on one thread (the worker is one core)."""
    os.environ["MASKWATCH_ORT_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"


def _local(
    settings: Settings, workers: int
) -> tuple[Callable[[list[Chunk]], Iterator[tuple[Chunk, str]]], Any]:
    import multiprocessing

    pool = ProcessPoolExecutor(
        max_workers=workers or os.cpu_count() or 1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_single_threaded,
    )

    def run(chunks: list[Chunk]) -> Iterator[tuple[Chunk, str]]:
        futures = {pool.submit(analyse, c, settings): c for c in chunks}
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for fut in done:
                yield futures.pop(fut), fut.result()

    return run, pool.shutdown


def _ray(
    settings: Settings, address: str
) -> tuple[Callable[[list[Chunk]], Iterator[tuple[Chunk, str]]], Any]:
    import ray  # only here: a single-machine user has no Ray

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    task = ray.remote(num_cpus=1, max_retries=3)(analyse)

    def run(chunks: list[Chunk]) -> Iterator[tuple[Chunk, str]]:
        refs = {task.remote(c, settings): c for c in chunks}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                yield refs.pop(ref), ray.get(ref)

    return run, ray.shutdown


def run_batch(inputs: list[str], settings: Settings, opts: BatchOptions) -> dict[str, Any]:
    """Analyse every video of `inputs`, write its reports into `opts.out`; returns a summary."""
    found = find_videos(inputs)
    if not found:
        raise ValueError("no video files in the inputs")
    chunk_root = opts.out / ".chunks"
    plans: list[tuple[Video, list[Chunk]]] = []
    for path, name in found:
        video, chunk_frames = probe(path, name, settings, opts)
        plans.append((video, plan(video, chunk_frames, opts.every_nth)))
    todo = [c for _, chunks in plans for c in chunks if not c.file(chunk_root).is_file()]
    # longest first: the workers then finish together instead of one waiting on a long last chunk
    todo.sort(key=lambda c: c.cost, reverse=True)
    total = sum(c.analysed for _, chunks in plans for c in chunks)
    skipped = sum(len(chunks) for _, chunks in plans) - len(todo)
    if skipped:
        log.warning("resuming: %d finished chunk(s) skipped, %d to do", skipped, len(todo))
        print(f"resuming: {skipped} finished chunk(s) skipped, {len(todo)} to do", file=sys.stderr)
    _, classifier = load_models(settings)
    t0 = time.monotonic()
    run, close = _ray(settings, opts.ray_address) if opts.ray_address else _local(settings, opts.workers)
    pending = set(todo)
    left = {v.key: sum(1 for c in chunks if c in pending) for v, chunks in plans}
    progress = Progress(total, total - sum(c.analysed for c in todo))
    reports = {}
    try:
        for video, chunks in plans:
            if not left[video.key]:
                reports[video.name] = write_reports(video, chunks, settings, classifier, opts)
        for chunk, text in run(todo):
            _write_atomic(chunk.file(chunk_root), text)
            progress.add(text.count("\n"))
            left[chunk.video.key] -= 1
            if not left[chunk.video.key]:
                video, chunks = next(p for p in plans if p[0].key == chunk.video.key)
                reports[video.name] = write_reports(video, chunks, settings, classifier, opts)
    finally:
        close()
        progress.close()
    elapsed = time.monotonic() - t0
    frames = sum(r["frames"] for r in reports.values())
    fresh = sum(c.analysed for c in todo)
    return {
        "videos": len(reports),
        "frames": frames,
        "seconds": round(elapsed, 2),
        "frames_per_s": round(fresh / elapsed, 1) if fresh else None,
        "reports": reports,
    }


def write_reports(
    video: Video, chunks: list[Chunk], settings: Settings, classifier, opts: BatchOptions
) -> dict[str, Any]:
    """NAME.jsonl (detect --json's lines, stitched ids), NAME.csv (per minute of video), optionally
    NAME.annotated.mp4 and the video's minutes in the event store (camera `batch:NAME`)."""
    gender = settings.privacy.gender_enabled
    base = opts.out / video.name
    base.parent.mkdir(parents=True, exist_ok=True)
    files = [c.file(opts.out / ".chunks") for c in chunks]
    start = opts.start or datetime.fromtimestamp(os.stat(video.path).st_mtime, UTC)
    per_minute: dict[int, MinuteAccumulator] = {}
    wall: dict[datetime, MinuteAccumulator] = {}
    results: list[FrameResult] = []
    frames = 0
    tmp = base.with_name(f".{base.name}.jsonl.tmp-{os.getpid()}")
    with open(tmp, "w") as out:
        for r in replay(video.path, files, settings, classifier):
            out.write(json.dumps(r.to_dict(gender=gender)) + "\n")
            frames += 1
            per_minute.setdefault(int(r.timestamp // 60), MinuteAccumulator()).add(r)
            at = (start + timedelta(seconds=r.timestamp)).replace(second=0, microsecond=0)
            wall.setdefault(at, MinuteAccumulator()).add(r)
            if opts.annotate:
                results.append(r)
    os.replace(tmp, base.with_suffix(".jsonl"))
    keys = [k for k in COUNT_KEYS if gender or k not in ("man", "woman")]
    with open(base.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["minute", "start_utc", *keys, "compliance"])
        for minute, acc in sorted(per_minute.items()):
            c = with_compliance({k: acc.counts()[k] for k in COUNT_KEYS})
            when = (start + timedelta(minutes=minute)).isoformat()
            comp = "" if c["compliance"] is None else f"{c['compliance']:.3f}"
            w.writerow([minute, when, *(c[k] for k in keys), comp])
    if opts.annotate:
        annotate_video(video, results, base.with_name(base.name + ".annotated.mp4"), gender)
    if opts.store_url:
        from maskwatch.batch.store import replace_minutes

        replace_minutes(opts.store_url, f"batch:{video.name}", {m: a.counts() for m, a in wall.items()})
    return {"frames": frames, "minutes": len(per_minute)}


def annotate_video(video: Video, results: list[FrameResult], dest: Path, gender: bool) -> None:
    """The video with the results drawn on (frames that were not analysed show the last result)."""
    import cv2

    from maskwatch.vision.draw import annotate

    cap = cv2.VideoCapture(video.path, cv2.CAP_FFMPEG)
    writer = None
    by_index = {r.frame_index: r for r in results}
    last: FrameResult | None = None
    index = 0
    try:
        while True:
            ok, img = cap.read()
            if not ok:
                break
            last = by_index.get(index, last)
            shown = annotate(img, last, gender=gender) if last is not None else img
            if writer is None:
                h, w = img.shape[:2]
                writer = cv2.VideoWriter(str(dest), cv2.VideoWriter.fourcc(*"mp4v"), video.fps, (w, h))
            writer.write(shown)
            index += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
