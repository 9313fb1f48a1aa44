"""A configured camera: its reader, its session, its health, and the latest annotated frame for viewers.

Viewers (the Live page's socket, MJPEG streams) only read the latest state, and a frame is annotated and
JPEG-encoded only while someone subscribes, so any number of viewers cost at most one encode per frame
and no viewer costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from maskwatch.config import CameraSettings
from maskwatch.monitor.reader import RESUMED_AFTER_S, Captured, FrameReader
from maskwatch.monitor.session import StreamSession
from maskwatch.sources import redact_source
from maskwatch.store import Event
from maskwatch.types import FrameResult

log = logging.getLogger(__name__)

LATENCY_WINDOW = 300  # frames kept for the latency percentiles
FPS_WINDOW_S = 2.0  # processed fps: frames finished in the last 2 s
FPS_WINDOW_FRAMES = 256


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def placeholder_jpeg(text: str, size: tuple[int, int] = (640, 360)) -> bytes:
    w, h = size
    img = np.full((h, w, 3), 40, np.uint8)
    cv2.putText(img, text[:48], (20, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (220, 220, 220), 2, cv2.LINE_AA)
    return encode_jpeg(img, 70)


def idle_health(cam: CameraSettings, state: str) -> dict[str, Any]:
    """The public state of a camera that has no frames yet (starting, stopped, disabled)."""
    return {
        "name": cam.name,
        "source": redact_source(cam.source),
        "state": state,
        "error": None,
        "fps": 0.0,
        "frames": 0,
        "dropped": 0,
        "counts": {},
    }


def counts(result: FrameResult, *, gender: bool) -> dict[str, int]:
    """Live counters for one frame."""
    c = Counter(f.mask.label for f in result.faces)
    out = {
        "people": len(result.faces),
        "masked": c["mask"],
        "unmasked": c["no_mask"],
        "incorrect": c["incorrect"],
        "uncertain": c["uncertain"],
    }
    if gender:
        g = Counter(f.gender.label for f in result.faces)
        out.update(man=g["man"], woman=g["woman"], gender_uncertain=g["uncertain"])
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


class Camera(Protocol):
    """What the monitor's reconcile and the web app use of a camera: a `CameraStream` here, a
    `cluster.head.RemoteCamera` when the camera runs on a Ray cluster."""

    cam: CameraSettings

    @property
    def name(self) -> str: ...
    @property
    def stopped(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...
    def subscribe(self) -> asyncio.Event: ...
    def unsubscribe(self, event: asyncio.Event) -> None: ...
    def latest(self) -> tuple[int, bytes | None]: ...
    def snapshot(self) -> dict[str, Any]: ...


class Subscribers:
    """The viewers waiting for a camera's next frame: asyncio events of any running loop, set from the
    thread that publishes the frame."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def __bool__(self) -> bool:
        return bool(self._events)

    def subscribe(self) -> asyncio.Event:
        """An event (of the running loop) set whenever a new frame is published; `unsubscribe` it."""
        event = asyncio.Event()
        with self._lock:
            self._events.add((asyncio.get_running_loop(), event))
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        with self._lock:
            self._events = {s for s in self._events if s[1] is not event}

    def notify(self) -> None:
        with self._lock:
            events = list(self._events)
        for loop, event in events:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed
                self.unsubscribe(event)


@dataclass(frozen=True)
class FrameDone:
    """One finished camera frame, for a `FrameObserver` (the web app's /metrics, the bench)."""

    camera: str
    result: FrameResult
    events: list[Event]  # the alert events this frame raised
    latency_s: float  # capture (the reader receiving the frame) to result
    detected: bool  # the detector ran on this frame (else its faces were tracked)
    classified: int  # faces the attribute model ran on


FrameObserver = Callable[[FrameDone], None]


class CameraStream:
    """One camera. The monitor's workers call `process(frame)`; viewers call `latest`, `snapshot`,
    `subscribe`."""

    def __init__(
        self,
        cam: CameraSettings,
        reader: FrameReader,
        session: StreamSession,
        *,
        stall_after_s: float,
        gender: Callable[[], bool],
        annotate: Callable[[np.ndarray, FrameResult, bool], np.ndarray],
        observer: FrameObserver | None = None,
    ) -> None:
        self.cam = cam
        self._observer = observer
        self.reader = reader
        self.session = session
        self.stall_after_s = stall_after_s
        self._gender = gender
        self._annotate = annotate
        self._busy = False  # a worker is processing it (guarded by the monitor's condition)
        self.next_due = 0.0  # perf_counter time before which its fps cap keeps it waiting
        self.last_served = 0.0
        self._lock = threading.Lock()
        self._subscribers = Subscribers()
        self.seq = 0
        self.frames = 0
        self._done: deque[float] = deque(maxlen=FPS_WINDOW_FRAMES)  # when the last frames were finished
        self._jpeg: bytes | None = None
        self._jpeg_seq = -1
        self._last: tuple[np.ndarray, FrameResult, bool] | None = None  # for encoding on request
        self._counts: dict[str, int] = {}
        self._latency: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._work_ms: float | None = None
        self.error: str | None = None

    @property
    def name(self) -> str:
        return self.cam.name

    @property
    def busy(self) -> bool:
        return self._busy

    @busy.setter
    def busy(self, value: bool) -> None:
        self._busy = self.reader.consumer_busy = value

    # -- the worker side
    def due(self, now: float) -> bool:
        return not self.busy and self.reader.has_frame and now >= self.next_due

    def process(self, frame: Captured, *, may_detect: bool = True) -> None:
        t0 = time.perf_counter()
        if self.cam.max_fps:
            self.next_due = t0 + 1.0 / self.cam.max_fps
        result, events = self.session.process(frame.image, frame.captured_at, may_detect=may_detect)
        gender = bool(self._gender())
        jpeg = None
        if self._subscribers:
            jpeg = encode_jpeg(self._annotate(frame.image, result, gender), 75)
        done = time.perf_counter()
        latency = (done - frame.captured_mono) * 1000
        with self._lock:
            self._done.append(done)
            self.frames += 1
            self.seq += 1
            if jpeg is not None:
                self._jpeg, self._jpeg_seq = jpeg, self.seq
            self._last = (frame.image, result, gender)
            self._counts = counts(result, gender=gender)
            self._latency.append(latency)
            self._work_ms = (done - t0) * 1000
            self.error = None
        self._subscribers.notify()
        if self._observer is not None:
            pipe = self.session.pipeline
            self._observe(
                FrameDone(self.name, result, events, latency / 1000, pipe.detected_last, pipe.classified_last)
            )

    def _observe(self, done: FrameDone) -> None:
        try:
            if self._observer is not None:
                self._observer(done)
        except Exception as exc:  # noqa: BLE001 - an observer (metrics) must never stop the video loop
            log.warning("camera %s: frame observer failed: %s", self.name, exc)

    # -- the viewer side
    def subscribe(self) -> asyncio.Event:
        return self._subscribers.subscribe()

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._subscribers.unsubscribe(event)

    # -- the reader's lifecycle (the monitor's reconcile / stop)
    def start(self) -> None:
        self.reader.start()

    def stop(self) -> None:
        self.reader.stop()

    def join(self, timeout: float | None = None) -> None:
        self.reader.join(timeout=timeout)

    @property
    def stopped(self) -> bool:
        return self.reader.stopped

    def latest(self) -> tuple[int, bytes | None]:
        """(seq, the latest annotated JPEG); encoded here if no subscriber made the worker encode it."""
        with self._lock:
            seq, jpeg, last = self.seq, self._jpeg, self._last
            stale = self._jpeg_seq != seq
        if jpeg is None and last is None and self.state in ("reconnecting", "down", "stalled"):
            return seq, placeholder_jpeg(f"{self.name}: {self.state}")
        if stale and last is not None:
            image, result, gender = last
            jpeg = encode_jpeg(self._annotate(image, result, gender), 75)
            with self._lock:
                if self._jpeg_seq < seq:
                    self._jpeg, self._jpeg_seq = jpeg, seq
        return seq, jpeg

    @property
    def fps(self) -> float:
        """Frames processed per second over the last `FPS_WINDOW_S` (0 while the source is away)."""
        if self.reader.state in ("reconnecting", "down", "stopped"):
            return 0.0
        now = time.perf_counter()
        with self._lock:
            recent = [t for t in self._done if now - t <= FPS_WINDOW_S]
            first = self._done[0] if self._done else now
        if len(recent) < 2:
            return 0.0
        # a whole window once there is one (a burst of frames cannot inflate it), else the span so far
        return (
            len(recent) / FPS_WINDOW_S if now - first >= FPS_WINDOW_S else (len(recent) - 1) / (now - first)
        )

    @property
    def state(self) -> str:
        r = self.reader
        if r.state != "running" or r.last_frame_mono is None:
            return r.state
        now = time.perf_counter()
        stale = now - r.last_frame_mono > self.stall_after_s
        resuming = r.resumed_mono is not None and now - r.resumed_mono < RESUMED_AFTER_S
        return "stalled" if stale or resuming else "running"

    def snapshot(self) -> dict[str, Any]:
        """The camera's public state (the API and the Live page)."""
        r = self.reader
        fps = self.fps
        with self._lock:
            lat = list(self._latency)
            age = None if r.last_frame_mono is None else time.perf_counter() - r.last_frame_mono
            p50, p95 = percentile(lat, 50), percentile(lat, 95)
            return {
                "name": self.name,
                "source": redact_source(self.cam.source),
                "state": self.state,
                "error": r.error if self.state in ("reconnecting", "down") else self.error,
                "fps": round(fps, 1),
                "frames": self.frames,
                "frames_read": r.frames_read,
                "dropped": r.dropped,
                "reconnects": r.reconnects,
                "counts": dict(self._counts),
                "last_frame_at": r.last_frame_at,
                "last_frame_age_s": None if age is None else round(age, 2),
                "latency_ms": None if p50 is None else {"p50": round(p50, 1), "p95": round(p95 or p50, 1)},
                "processing_ms": None if self._work_ms is None else round(self._work_ms, 1),
                "detect_interval": self.session.detect_interval,
            }
