"""A camera inside a Ray actor: the monitor's reader, session and stream, with one vision thread.

The actor keeps the tracker state of its camera; the head keeps everything that must survive the actor
(alert rules and their cooldowns, statistics, events, the outbox). What the actor hands over are
*sightings*: each frame's result (boxes, track ids, labels; no picture), numbered. The head pulls them
with `drain(ack)`, acknowledging what it has stored, so a reply lost with a dying node is never lost
silently: unacknowledged sightings are sent again, and the head skips the numbers it already has.

Pictures stay on the node. The actor runs the same alert rules as the head on the same frames, only
to know which frames the head will turn into an alert: exactly those carry a JPEG for the snapshot. A
live frame (the newest one, encoded on request) travels only when the head asks for it, which it does
only while someone watches the camera.

This module does not import Ray: `ray.remote(CameraActor)` is applied by `maskwatch.cluster.head`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from maskwatch.alerts.rules import AlertRules
from maskwatch.config import CameraSettings, Settings
from maskwatch.monitor.models import Models
from maskwatch.monitor.reader import FrameReader
from maskwatch.monitor.session import StreamSession
from maskwatch.monitor.stream import CameraStream, FrameDone, encode_jpeg
from maskwatch.store import Event
from maskwatch.types import FrameResult

log = logging.getLogger(__name__)

MAX_UNACKED = 3000  # sightings kept for a head that does not drain (100 s at 30 fps); older ones go
MAX_BATCH = 600  # sightings per drain reply
SNAPSHOT_QUALITY = 90


@dataclass(frozen=True)
class Sighting:
    """One processed frame, as the head receives it."""

    seq: int  # 1, 2, ... per actor incarnation
    result: FrameResult
    latency_s: float
    detected: bool
    classified: int
    snapshot_jpeg: bytes | None  # the frame, when the alert rules fire on it


class CameraActor:
    """One camera: `drain` is the head's only regular call."""

    def __init__(self, cam: CameraSettings, settings: Settings) -> None:
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "threads;1")
        cv2.setNumThreads(1)
        self.incarnation = uuid.uuid4().hex
        self.node = _node_id()
        self.settings = settings
        self.models = Models(settings, threads=1)
        self.rules = AlertRules(settings.alerts)
        self._lock = threading.Lock()
        self._unacked: deque[Sighting] = deque()
        self._seq = 0
        self._lost = 0
        self._wake = threading.Event()
        self._stopped = threading.Event()
        reader = FrameReader(
            cam.name, cam.source, on_frame=self._wake.set, stall_after_s=settings.monitor.stall_after_s
        )
        session = StreamSession(
            cam.name, self.models, self._sighted, max_detect_interval=settings.monitor.max_detect_interval
        )
        self.stream = CameraStream(
            cam,
            reader,
            session,
            stall_after_s=settings.monitor.stall_after_s,
            gender=lambda: bool(self.settings.privacy.gender_enabled),
            annotate=lambda image, result, gender: self.models.annotate(image, result, gender=gender),
            observer=self._observed,
        )
        self._frame: np.ndarray | None = None  # the frame being processed (for the snapshot)
        self._thread = threading.Thread(target=self._run, name=f"vision-{cam.name}", daemon=True)
        self._thread.start()
        reader.start()

    # -- the head's calls
    def drain(self, ack: int, frame_after: int | None = None) -> dict[str, Any]:
        """Sightings after `ack` (those up to it are dropped: the head has them), the camera's health,
        and, when `frame_after` is given, the newest annotated JPEG if newer than that frame number."""
        with self._lock:
            while self._unacked and self._unacked[0].seq <= ack:
                self._unacked.popleft()
            sightings = [s for _, s in zip(range(MAX_BATCH), self._unacked, strict=False)]
        health = self.stream.snapshot()
        health.update(node=self.node, incarnation=self.incarnation, sightings_lost=self._lost)
        frame = None
        if frame_after is not None:
            seq, jpeg = self.stream.latest()
            if jpeg is not None and seq > frame_after:
                frame = (seq, jpeg)
        return {"incarnation": self.incarnation, "sightings": sightings, "health": health, "frame": frame}

    def update_settings(self, settings: Settings) -> None:
        self.settings = settings
        self.models.update_settings(settings)
        self.rules.update_settings(settings.alerts)

    def ready(self) -> str:
        """The node this actor runs on, once its models are loaded (raises if they cannot be)."""
        error = self.models.warm()
        if error:
            raise RuntimeError(error)
        return self.node

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self.stream.stop()
        self._thread.join(timeout=5)
        self.stream.join(timeout=3)

    # -- the vision thread
    def _run(self) -> None:
        cv2.setNumThreads(1)
        self.models.warm()
        stream = self.stream
        while not self._stopped.is_set():
            now = time.perf_counter()
            if not stream.due(now):
                self._wake.wait(max(0.001, min(0.05, stream.next_due - now)))
                self._wake.clear()
                continue
            frame = stream.reader.take()
            if frame is None:
                continue
            stream.busy = True
            try:
                stream.process(frame)
            except Exception as exc:  # noqa: BLE001 - a bad frame must not stop the camera
                stream.error = f"{type(exc).__name__}: {exc}"
                log.warning("camera %s: %s", stream.name, stream.error)
            finally:
                stream.busy = False

    def _sighted(self, key: str, result: FrameResult, image: np.ndarray) -> list[Event]:
        """The session's alert hand-off: remember whether this frame will be an alert on the head."""
        fired = bool(self.settings.alerts.enabled and self.rules.update(key, result.timestamp, result.faces))
        self._frame = image if fired else None
        return []

    def _observed(self, done: FrameDone) -> None:
        """The stream's per-frame hook (after `_sighted`): queue the sighting for the head."""
        jpeg = encode_jpeg(self._frame, SNAPSHOT_QUALITY) if self._frame is not None else None
        self._frame = None
        with self._lock:
            self._seq += 1
            self._unacked.append(
                Sighting(self._seq, done.result, done.latency_s, done.detected, done.classified, jpeg)
            )
            if len(self._unacked) > MAX_UNACKED:
                self._unacked.popleft()
                self._lost += 1


def _node_id() -> str:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - outside Ray (tests of the actor class itself)
        return "local"
