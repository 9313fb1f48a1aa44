"""Alert-path load simulation (a development tool; needs the dev extra for aiosmtpd).

    python tools/simulate_alerts.py [--people 50 --sightings 10000 --minutes 10 --cap N
                                     --no-outage --no-restart] [--video CLIP.mp4 --yunet YUNET.onnx]

prints JSON figures: expected emails vs received, lost, duplicates (and, with --video, the video-loop
frame time with alerts off vs on).

- `simulate_sightings`: N people walking in and out of a camera without masks for a stretch of video
  time; checks every expected alert arrives by email exactly once, through an SMTP outage and a restart.
- `video_results`: real frames of a video with YuNet detections and an IoU tracker, every face labelled
  with one given mask label (for clips whose ground truth is known, e.g. a no-mask clip).
- `bench_frame_time`: video-loop frame time with alerts off vs on over the same frames.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskwatch.config import Settings
from maskwatch.sources import open_source
from maskwatch.types import Attribute, Face, FrameResult
from maskwatch.vision.detect import YuNetDetector
from maskwatch.vision.track import IouTracker
from smtp_sink import SmtpSink

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------- sightings simulation


@dataclass
class _Visit:
    person: int
    start: int  # frame index
    frames: int
    track_id: int


def _schedule(people: int, sightings: int, seconds: float, fps: float, rng: random.Random) -> list[_Visit]:
    """Visits (2-5 per person, >= 1 s apart) totalling exactly `sightings` no-mask frames."""
    n_frames, gap = int(seconds * fps), int(fps)
    visits, track = [], 0
    for p in range(people):
        total = sightings // people + (1 if p < sightings % people else 0)
        k = rng.randint(2, 5)
        cuts = sorted(rng.sample(range(1, total), k - 1))
        lengths = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
        free = n_frames - total - k * gap
        offsets = sorted(rng.randint(0, free) for _ in range(k))
        done = 0
        for j, (length, off) in enumerate(zip(lengths, offsets, strict=True)):
            track += 1
            visits.append(_Visit(p, off + done + j * gap, length, track))
            done += length
    return visits


def _expected_alerts(visits: list[_Visit], fps: float, s) -> dict[int, int]:
    """Reference: per visit (track id) whether it alerts, from the true identity of people."""
    need = max(s.min_frames, int(np.ceil(s.min_seconds * fps - 1e-9)) + 1)
    last: dict[int, float] = {}
    alerts = {}
    for v in sorted(visits, key=lambda v: v.start):
        count = 0
        for i in range(need - 1, v.frames):
            t = (v.start + i) / fps
            if last.get(v.person) is None or t - last[v.person] >= s.cooldown_s - 1e-6:
                last[v.person] = t
                count += 1
        alerts[v.track_id] = count
    return alerts


def simulate_sightings(
    *,
    people: int = 50,
    sightings: int = 10_000,
    seconds: float = 600.0,
    fps: float = 10.0,
    seed: int = 1,
    max_emails_per_hour: int = 10_000,
    outage: tuple[float, float] | None = (0.3, 0.6),
    restart_at: float | None = 0.5,
    workdir: Path,
) -> dict:
    """Run the alert engine over simulated no-mask sightings and deliver through a real SMTP server.

    `outage` (fractions of the run) stops the SMTP server for that stretch; `restart_at` replaces the
    Store and MailWorker by new ones on the same database at that point (a restart). Returns figures."""
    from maskwatch.alerts.engine import AlertEngine
    from maskwatch.alerts.mail import MailWorker
    from maskwatch.store import Store

    rng = random.Random(seed)
    workdir = Path(workdir)
    sink = SmtpSink().start()
    settings = Settings(
        data_dir=workdir,
        smtp={
            "host": "127.0.0.1",
            "port": sink.port,
            "security": "none",
            "recipients": ["admin@example.org"],
            "retry_initial_s": 0.05,
            "retry_max_s": 0.2,
            "max_attempts": 1000,
        },
        alerts={"max_emails_per_hour": max_emails_per_hour},
    )
    visits = _schedule(people, sightings, seconds, fps, rng)
    expected = _expected_alerts(visits, fps, settings.alerts)
    by_frame: dict[int, list[tuple[_Visit, int]]] = {}
    for v in visits:
        for i in range(v.frames):
            by_frame.setdefault(v.start + i, []).append((v, i))
    frame = np.full((720, 1280, 3), 90, np.uint8)
    cols = 10

    def box(p: int) -> tuple[float, float, float, float]:
        x, y = 40 + (p % cols) * 124, 40 + (p // cols) * 130
        return (x, y, x + 60, y + 70)

    t0 = time.time()
    clock_t = [t0]
    store = Store.from_settings(settings)
    engine = AlertEngine(settings, store, clock=lambda: clock_t[0])
    worker = MailWorker(settings, store, poll_s=0.05)
    worker.start()
    n_frames = int(seconds * fps)
    observe_ms, seen = [], 0
    phases = {"outage": False, "restarted": False}
    for fi in range(n_frames):
        frac = fi / n_frames
        if outage and not phases["outage"] and frac >= outage[0]:
            sink.stop()
            phases["outage"] = True
        if outage and phases["outage"] and sink._controller is None and frac >= outage[1]:
            sink.start()
        if restart_at is not None and not phases["restarted"] and frac >= restart_at:
            engine.stop()
            worker.stop()
            store.close()
            store = Store.from_settings(settings)
            rules = engine.rules  # the video loop goes on: keep who is on screen (new store and mailer)
            engine = AlertEngine(settings, store, clock=lambda: clock_t[0])
            engine.rules = rules
            worker = MailWorker(settings, store, poll_s=0.05)
            worker.start()
            phases["restarted"] = True
        clock_t[0] = t0 + fi / fps
        faces = []
        for v, _i in by_frame.get(fi, ()):
            conf = 0.85 + 0.14 * rng.random()
            gender = Attribute("man" if v.person % 2 else "woman", 0.9)
            faces.append(
                Face(
                    box=box(v.person),
                    score=0.9,
                    track_id=v.track_id,
                    mask=Attribute("no_mask", conf),
                    gender=gender,
                )
            )
        seen += len(faces)
        result = FrameResult(
            source="sim", frame_index=fi, timestamp=fi / fps, faces=tuple(faces), frame_size=(1280, 720)
        )
        a = time.perf_counter()
        engine.observe("sim-door", result, frame)
        observe_ms.append((time.perf_counter() - a) * 1000)
    if sink._controller is None:
        sink.start()
    engine.flush(timeout=60)
    n_expected = sum(expected.values())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        worker.wake()
        if store.list_outbox(status="queued")[1] == 0 and store.list_outbox(status="sending")[1] == 0:
            break
        time.sleep(0.05)
    worker.stop()
    events, n_events = store.list_events(limit=1_000_000)
    outbox, _ = store.list_outbox(limit=1_000_000)
    engine.stop()
    store.close()
    sink.stop()

    received: Counter = Counter()
    for msg in sink.messages:
        for eid in (msg["X-Maskwatch-Events"] or "").split(","):
            if eid:
                received[int(eid)] += 1
    event_track = {e.id: e.track_id for e in events}
    alerted_tracks = Counter(e.track_id for e in events)
    capped = [e for e in events if e.mail_status == "capped"]
    mailed_events = [e for e in events if e.mail_status != "capped"]
    lost_events = [e.id for e in mailed_events if received[e.id] == 0]
    duplicate_emails = sum(c - 1 for c in received.values() if c > 1)
    wrong = sum(abs(alerted_tracks[t] - n) for t, n in expected.items())
    return {
        "people": people,
        "sightings": seen,
        "video_seconds": seconds,
        "fps": fps,
        "cooldown_s": settings.alerts.cooldown_s,
        "max_emails_per_hour": max_emails_per_hour,
        "expected_alerts": n_expected,
        "events_stored": n_events,
        "events_capped": len(capped),
        "emails_expected": len(mailed_events),
        "emails_received": len(sink.messages),
        "events_not_matching_reference": wrong,
        "lost": len(lost_events) + max(0, n_expected - n_events),
        "duplicates": duplicate_emails + sum(1 for i in received if i not in event_track),
        "outbox": dict(Counter(m.status for m in outbox)),
        "delivery_attempts": sum(m.attempts for m in outbox),
        "failed_errors": [m.last_error for m in outbox if m.status == "failed"],
        "smtp_outage": outage is not None,
        "restart": restart_at is not None,
        "observe_ms_p50": round(float(np.percentile(observe_ms, 50)), 3),
        "observe_ms_p95": round(float(np.percentile(observe_ms, 95)), 3),
        "observe_ms_max": round(float(np.max(observe_ms)), 3),
    }


# -------------------------------------------------------------------------------------- real video


class LabelledTracker:
    """The app's YuNet detector (at the frame's native size) and IoU tracker; every face gets the one
    given mask label (a stand-in for the classifier on clips whose ground truth is known)."""

    def __init__(
        self, yunet: Path, *, mask: Attribute = Attribute("no_mask", 0.95), score_threshold: float = 0.6
    ):
        self.detector = YuNetDetector(yunet, score_threshold=score_threshold, min_side=0, top_k=50)
        self.tracker = IouTracker(ids=itertools.count(1))
        self.mask = mask

    def process(self, frame: np.ndarray, index: int, timestamp: float, source: str = "") -> FrameResult:
        a = time.perf_counter()
        faces = self.detector.detect(frame)
        tracks = self.tracker.update([f.box for f in faces])
        faces = [f.with_(track_id=t.id, mask=self.mask) for f, t in zip(faces, tracks, strict=True)]
        ms = (time.perf_counter() - a) * 1000
        h, w = frame.shape[:2]
        return FrameResult(
            source=source,
            frame_index=index,
            timestamp=timestamp,
            faces=tuple(faces),
            timings_ms={"detect": ms},
            frame_size=(w, h),
        )


def read_frames(video: Path, max_frames: int | None = None) -> tuple[list[np.ndarray], float]:
    """The first `max_frames` frames of `video` (all when None) and its frame rate."""
    with open_source(video, reconnect=False) as src:
        frames = [f.image for f in itertools.islice(src, max_frames)]
        return frames, src.fps or 25.0


def video_results(
    video: Path, yunet: Path, *, mask: Attribute = Attribute("no_mask", 0.95), max_frames: int | None = None
) -> Iterator[tuple[np.ndarray, FrameResult, float]]:
    """(frame, result, detect_ms) for real frames of `video` (see LabelledTracker)."""
    frames, fps = read_frames(video, max_frames)
    tracker = LabelledTracker(yunet, mask=mask)
    for i, frame in enumerate(frames):
        r = tracker.process(frame, i, i / fps, str(video))
        yield frame, r, r.timings_ms["detect"]


def bench_frame_time(video: Path, yunet: Path, *, workdir: Path, frames: int = 200, rounds: int = 2):
    """Video-loop frame time with alerts off vs on, paired: each decoded frame goes through the loop body
    once without the engine (detect + track) and once with it (detect + track + observe), back to back, so
    both see the same load. `rounds` passes over the clip. Returns figures in ms."""
    from maskwatch.alerts.engine import AlertEngine
    from maskwatch.store import Store

    workdir = Path(workdir)
    clip, fps = read_frames(video, frames)
    times: dict[str, list[float]] = {"off": [], "on": []}
    observe: list[float] = []
    n_events = 0
    for r in range(rounds):
        settings = Settings(data_dir=workdir / f"r{r}")
        store = Store.from_settings(settings)
        engine = AlertEngine(settings, store)
        off, on = LabelledTracker(yunet), LabelledTracker(yunet)
        for i, frame in enumerate(clip):
            a = time.perf_counter()
            off.process(frame, i, i / fps, "bench")
            times["off"].append((time.perf_counter() - a) * 1000)
            a = time.perf_counter()
            result = on.process(frame, i, i / fps, "bench")
            b = time.perf_counter()
            n_events += len(engine.observe("bench", result, frame))
            c = time.perf_counter()
            times["on"].append((c - a) * 1000)
            observe.append((c - b) * 1000)
        engine.stop()
        store.close()
    p95 = {m: float(np.percentile(v, 95)) for m, v in times.items()}
    return {
        "video": Path(video).name,
        "frames_per_pass": len(clip),
        "rounds": rounds,
        "alert_events": n_events,
        "frame_ms_p95_off": round(p95["off"], 2),
        "frame_ms_p95_on": round(p95["on"], 2),
        "ratio_p95_on_off": round(p95["on"] / p95["off"], 3),
        "frame_ms_p50_off": round(float(np.percentile(times["off"], 50)), 2),
        "frame_ms_p50_on": round(float(np.percentile(times["on"], 50)), 2),
        "observe_ms_p50": round(float(np.percentile(observe, 50)), 3),
        "observe_ms_p95": round(float(np.percentile(observe, 95)), 3),
        "observe_ms_max": round(float(np.max(observe)), 3),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=50)
    ap.add_argument("--sightings", type=int, default=10_000)
    ap.add_argument("--minutes", type=float, default=10.0, help="video time (default 10)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cap", type=int, default=10_000, help="max_emails_per_hour for the run")
    ap.add_argument(
        "--outage",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="kill the SMTP server from 30%% to 60%% of the run (default on)",
    )
    ap.add_argument(
        "--restart",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="replace the store and mail worker halfway, a restart of the mail side (default on)",
    )
    ap.add_argument("--video", type=Path, help="also measure frame time alerts off vs on (needs --yunet)")
    ap.add_argument("--yunet", type=Path, help="the YuNet ONNX file")
    ap.add_argument("--frames", type=int, default=200, help="frames per pass for the frame-time bench")
    args = ap.parse_args(argv)
    if args.video and not args.yunet:
        ap.error("--video needs --yunet PATH (the YuNet ONNX file)")
    with tempfile.TemporaryDirectory(prefix="maskwatch-sim-") as workdir:  # databases of the runs
        out: dict = simulate_sightings(
            people=args.people,
            sightings=args.sightings,
            seconds=args.minutes * 60,
            seed=args.seed,
            max_emails_per_hour=args.cap,
            outage=(0.3, 0.6) if args.outage else None,
            restart_at=0.5 if args.restart else None,
            workdir=Path(workdir) / "sightings",
        )
        if args.video:
            frame_time = bench_frame_time(
                args.video, args.yunet, frames=args.frames, workdir=Path(workdir) / "bench"
            )
            out = {"sightings": out, "frame_time": frame_time}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
