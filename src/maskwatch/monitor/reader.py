"""One reader thread per stream: it opens the source, reconnects it, and keeps only the newest frame.

Live sources (cameras, RTSP/HTTP) are read as fast as they deliver, so nothing piles up in the decoder:
a frame the workers did not take before the next one arrived is dropped and counted. Video files and
image folders play at their own pace (their timestamps or fps, as if they were cameras) and start again
when they end. The reader's `state` is `starting` (opened, no frame yet), `running`, `reconnecting`
(the source dropped or cannot be opened; retried with backoff) or `down` (it failed
`DOWN_AFTER_FAILURES` times in a row; still retried). `stalled` is derived by the monitor from the age
of the last frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from maskwatch.sources import FrameSource, SourceError, open_source, redact_source

log = logging.getLogger(__name__)

DOWN_AFTER_FAILURES = 3
RESUMED_AFTER_S = 0.5
IMAGE_FOLDER_FPS = 1.0  # an image folder configured as a camera shows one image a second
Opener = Callable[..., FrameSource]


@dataclass(frozen=True)
class Captured:
    """A frame as the reader got it: `captured_at` wall time, `captured_mono` for latency."""

    image: np.ndarray
    index: int
    captured_at: float
    captured_mono: float


class FrameReader(threading.Thread):
    """Reads `spec` until `stop()`; `take()` returns the newest frame not yet taken (or None).

    `on_frame` is called (from this thread) after each new frame, e.g. to wake the workers."""

    def __init__(
        self,
        name: str,
        spec: str,
        *,
        on_frame: Callable[[], None] = lambda: None,
        opener: Opener | None = None,
        retry_max_s: float = 8.0,
        stall_after_s: float = 3.0,
    ) -> None:
        super().__init__(name=f"reader-{name}", daemon=True)
        self.spec = spec
        self._on_frame = on_frame
        self._opener = opener or open_source
        self._retry_max_s = retry_max_s
        self._stall_after_s = stall_after_s
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._slot: Captured | None = None
        self.state = "starting"
        self.error: str | None = None
        self.live: bool | None = None  # known once opened
        self.frames_read = 0
        self.dropped = 0
        # of those, dropped while no worker was on this stream (the workers were all busy elsewhere:
        # the overload signal; the others came while its own last frame was still being processed)
        self.dropped_waiting = 0
        self.consumer_busy = False
        self.last_frame_at: float | None = None  # wall time
        self.last_frame_mono: float | None = None
        self.resumed_mono: float | None = None  # when frames came again after a stall
        self._connected_mono = 0.0  # when the source was last opened
        self.reconnects = 0

    # -- consumer side
    def take(self) -> Captured | None:
        with self._lock:
            frame, self._slot = self._slot, None
            return frame

    @property
    def has_frame(self) -> bool:
        return self._slot is not None

    def stop(self) -> None:
        self._halt.set()

    @property
    def stopped(self) -> bool:
        return self._halt.is_set()

    # -- reader side
    def _publish(self, image: np.ndarray) -> None:
        now, mono = time.time(), time.perf_counter()
        last = self.last_frame_mono
        if last is not None and last >= self._connected_mono and mono - last > self._stall_after_s:
            # frames after a stall may be old ones the decoder or the socket still held (a frozen stream
            # that then closes delivers them at once): the stream counts as back only once frames keep
            # coming for RESUMED_AFTER_S (see CameraStream.state)
            self.resumed_mono = mono
        with self._lock:
            if self._slot is not None:
                self.dropped += 1
                self.dropped_waiting += not self.consumer_busy
            self._slot = Captured(image, self.frames_read, now, mono)
            self.frames_read += 1
            self.last_frame_at, self.last_frame_mono = now, mono
            self.state, self.error = "running", None
        self._on_frame()

    def run(self) -> None:
        failures = 0
        while not self._halt.is_set():
            started = time.monotonic()
            try:
                source = self._opener(self.spec, reconnect=False)
            except (SourceError, OSError) as exc:
                failures += 1
                self._failed(str(exc), failures)
                continue
            self.live = bool(source.is_live)
            self._connected_mono = time.perf_counter()
            if self.state != "running":
                self.state = "starting"
            try:
                got = self._read(source)
            except SourceError as exc:
                failures += 1
                self._failed(str(exc), failures)
                continue
            finally:
                source.close()
            if self._halt.is_set():
                break
            if self.live or not got:
                failures = 0 if got else failures + 1
                self.reconnects += 1
                self._failed(f"{self.spec}: the stream ended" if got else f"{self.spec}: no frames", failures)
            else:  # a file ended: play it again (at most once a second)
                self._halt.wait(max(0.0, 1.0 - (time.monotonic() - started)))
        self.state = "stopped"

    def _failed(self, message: str, failures: int) -> None:
        message = redact_source(message)  # errors name the source: never with its credentials
        self.state = "down" if failures >= DOWN_AFTER_FAILURES else "reconnecting"
        self.error = message
        delay = min(self._retry_max_s, 0.5 * 2 ** max(0, failures - 1))
        log.warning("source %s: %s; retrying in %.1f s", self.name, message, delay)
        self._halt.wait(delay)

    def _read(self, source: FrameSource) -> bool:
        """Read `source` until it ends or `stop()`; files are paced by their timestamps. True if it gave
        at least one frame."""
        got = False
        t_wall0 = ts0 = None
        step = 1.0 / IMAGE_FOLDER_FPS if not source.is_sequence else None
        for n, frame in enumerate(source):
            if self._halt.is_set():
                break
            if not self.live:
                ts = n * step if step is not None else float(frame.timestamp)
                if t_wall0 is None or ts0 is None:
                    t_wall0, ts0 = time.monotonic(), ts
                delay = (t_wall0 + (ts - ts0)) - time.monotonic()
                if delay > 0 and self._halt.wait(delay):
                    break
            self._publish(frame.image)
            got = True
        return got
