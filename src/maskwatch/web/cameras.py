"""Server-side camera workers: one thread per configured camera, latest annotated JPEG for viewers.

Each worker reads its source (`open_source`, reconnecting), runs its own Pipeline, hands the result to
the alert engine, draws the overlay and keeps the latest JPEG + counters. Viewers (MJPEG streams, the
live page's counters) only read that latest state, so any number of viewers cost one encode per frame.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from maskwatch.config import CameraSettings
from maskwatch.web.analysis import counts, encode_jpeg

log = logging.getLogger(__name__)

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact_source(source: str) -> str:
    """A camera source fit to show: credentials in URLs replaced by ***."""
    return _CREDENTIALS.sub("***@", source)


def placeholder_jpeg(text: str, size: tuple[int, int] = (640, 360)) -> bytes:
    w, h = size
    img = np.full((h, w, 3), 40, np.uint8)
    cv2.putText(img, text[:48], (20, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (220, 220, 220), 2, cv2.LINE_AA)
    return encode_jpeg(img, 70)


@dataclass
class CameraState:
    name: str
    source: str
    state: str = "starting"  # starting | running | reconnecting | error | stopped | disabled
    error: str | None = None
    fps: float = 0.0
    frames: int = 0
    seq: int = 0
    jpeg: bytes | None = None
    counts: dict[str, int] = field(default_factory=dict)
    last_frame_at: float | None = None
    latency_ms: float | None = None

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": redact_source(self.source),
            "state": self.state,
            "error": self.error,
            "fps": round(self.fps, 1),
            "frames": self.frames,
            "counts": self.counts,
            "last_frame_at": self.last_frame_at,
            "processing_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
        }


class CameraWorker(threading.Thread):
    """Reads one camera until stopped. `process(image, index, ts)` -> (result, annotated) is injected."""

    def __init__(
        self,
        cam: CameraSettings,
        *,
        make_processor: Callable[[str], Callable[[np.ndarray, int, float], tuple[Any, np.ndarray]]],
        gender: Callable[[], bool],
        open_source: Callable[..., Any] | None = None,
        retry_s: float = 5.0,
    ) -> None:
        super().__init__(name=f"camera-{cam.name}", daemon=True)
        self.cam = cam
        self.state = CameraState(name=cam.name, source=cam.source)
        self._make_processor = make_processor
        self._gender = gender
        self._open_source = open_source
        self._retry_s = retry_s
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def stop(self) -> None:
        self._halt.set()

    @property
    def stopped(self) -> bool:
        return self._halt.is_set()

    def subscribe(self) -> asyncio.Event:
        """An event (of the running loop) set whenever a new frame is published; `unsubscribe` it."""
        event = asyncio.Event()
        with self._lock:
            self._subscribers.add((asyncio.get_running_loop(), event))
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        with self._lock:
            self._subscribers = {s for s in self._subscribers if s[1] is not event}

    def _notify(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, event in subscribers:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed
                self.unsubscribe(event)

    def latest(self) -> tuple[int, bytes | None]:
        with self._lock:
            return self.state.seq, self.state.jpeg

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.state.public()

    def _set(self, **kw: Any) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.state, k, v)

    def _opener(self) -> Callable[..., Any]:
        if self._open_source is not None:
            return self._open_source
        from maskwatch.sources import open_source

        return open_source

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            wait = self._retry_s
            try:
                if self._run_once():  # a file ended: play it again (at most once a second)
                    wait = max(0.0, 1.0 - (time.monotonic() - started))
            except Exception as exc:  # noqa: BLE001 - a camera must never take the server down
                log.warning("camera %s: %s", self.cam.name, exc)
                with self._lock:
                    self.state.state, self.state.error = "error", str(exc)
                    self.state.jpeg = placeholder_jpeg(f"{self.cam.name}: offline")
                    self.state.seq += 1
                self._notify()
            self._halt.wait(wait)
        self._set(state="stopped")

    def _run_once(self) -> bool:
        """Read the source until it ends; True when it was a file (or images) that simply ended."""
        source = self._opener()(self.cam.source, reconnect=True)
        process = self._make_processor(self.cam.name)
        t_wall0 = ts0 = None
        last = time.monotonic()
        try:
            self._set(state="running", error=None)
            for frame in source:
                if self._halt.is_set():
                    break
                ts = float(frame.timestamp)
                if ts < 1e9:  # a file: timestamps are positions; play at the file's own speed
                    if t_wall0 is None:
                        t_wall0, ts0 = time.monotonic(), ts
                    delay = (t_wall0 + (ts - ts0)) - time.monotonic()
                    if delay > 0 and self._halt.wait(min(delay, 1.0)):
                        break
                t0 = time.perf_counter()
                result, drawn = process(frame.image, int(frame.index), ts)
                jpeg = encode_jpeg(drawn, 75)
                now = time.monotonic()
                dt = max(now - last, 1e-6)
                last = now
                with self._lock:
                    st = self.state
                    st.fps = 1.0 / dt if st.fps == 0 else 0.9 * st.fps + 0.1 / dt
                    st.frames += 1
                    st.seq += 1
                    st.jpeg = jpeg
                    st.counts = counts(result, gender=self._gender())
                    st.last_frame_at = time.time()
                    st.latency_ms = (time.perf_counter() - t0) * 1000
                    st.state = "running"
                self._notify()
        finally:
            close = getattr(source, "close", None)
            if close:
                close()
        if self._halt.is_set():
            return False
        if getattr(source, "is_live", False):
            self._set(state="reconnecting")
            return False
        return True


class CameraManager:
    """Starts, stops and reconciles the camera workers with the current settings."""

    def __init__(self, factory: Callable[[CameraSettings], CameraWorker]) -> None:
        self._factory = factory
        self._workers: dict[str, CameraWorker] = {}
        self._configs: dict[str, CameraSettings] = {}
        self._lock = threading.Lock()
        self.started = False

    def reconcile(self, cameras: list[CameraSettings], *, restart_all: bool = False) -> None:
        """Make the running workers match `cameras` (changed ones restart)."""
        wanted = {c.name: c for c in cameras}
        with self._lock:
            self._configs = wanted
            if not self.started:
                return
            for name in list(self._workers):
                if restart_all or name not in wanted or wanted[name] != self._workers[name].cam:
                    self._workers.pop(name).stop()
            for name, cam in wanted.items():
                if cam.enabled and name not in self._workers:
                    worker = self._factory(cam)
                    self._workers[name] = worker
                    worker.start()

    def start(self, cameras: list[CameraSettings]) -> None:
        self.started = True
        self.reconcile(cameras)

    def stop(self) -> None:
        with self._lock:
            self.started = False
            workers = list(self._workers.values())
            self._workers.clear()
        for w in workers:
            w.stop()
        for w in workers:
            w.join(timeout=3)

    def get(self, name: str) -> CameraWorker | None:
        with self._lock:
            return self._workers.get(name)

    def describe(self) -> list[dict[str, Any]]:
        """Every configured camera with its live state (disabled ones included)."""
        with self._lock:
            configs = list(self._configs.values())
            workers = dict(self._workers)
        out = []
        for cam in configs:
            w = workers.get(cam.name)
            if w is not None:
                d = w.snapshot()
            else:
                d = CameraState(
                    name=cam.name, source=cam.source, state="disabled" if not cam.enabled else "stopped"
                ).public()
            d["enabled"] = cam.enabled
            d["quiet_hours"] = cam.quiet_hours
            out.append(d)
        return out
