"""The monitor: every stream of the process, one thread budget, one alert hand-off.

    reader thread per camera ─ newest frame ─▶ worker pool (`monitor.workers` threads, one per core)
         (reconnects, paces files)              picks the due camera served longest ago, runs its
                                                session (detect → track → classify → vote), alerts,
                                                annotates + encodes only for viewers
    browser webcams: `open_session()` sessions run by the web app's request threads (same models)
    alerts: `observe()` → AlertEngine (statistics, rules, events, outbox) → MailWorker (SMTP)

Scheduling instead of luck: the workers are the only threads doing vision work for cameras, and
OpenCV and ONNX Runtime run single-threaded inside them, so four cameras never fight over two cores
with sixteen threads. The detector is shared: at most `workers - 1` detections run at once, and a
camera whose turn to detect comes while the detector is busy tracks one more frame instead of waiting.
Every second the controller looks at the last second: if cameras dropped frames while waiting for a
worker (not while their own previous frame was still being processed), it raises the
detection interval of every camera by one (up to `monitor.max_detect_interval`: detect every Nth frame,
track in between), and lowers it again after 10 s with idle workers and no drops, so under overload
every camera degrades evenly and latency stays about one frame.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from maskwatch.alerts.engine import AlertEngine
from maskwatch.alerts.mail import MailWorker
from maskwatch.config import CameraSettings, Settings, apply_overrides
from maskwatch.monitor.models import Models
from maskwatch.monitor.reader import FrameReader, Opener
from maskwatch.monitor.session import StreamSession
from maskwatch.monitor.stream import Camera, CameraStream, FrameObserver, idle_health
from maskwatch.store import Event, Store
from maskwatch.types import FrameResult

if TYPE_CHECKING:
    from maskwatch.integrations.mqtt import MqttPublisher
    from maskwatch.integrations.webhooks import WebhookWorker

log = logging.getLogger(__name__)

CONTROL_EVERY_S = 1.0
DROP_TOLERANCE = 0.01  # more of the frames read than this dropped in a second: detect less often
BUSY_LOW = 0.55  # workers less busy than this, without drops ...
CALM_BEFORE_LOWER_S = 10.0  # ... for this long: detect more often again


def effective_settings(file_settings: Settings, store: Store) -> Settings:
    """The file/env settings with the overrides saved from the settings page applied (bad saved
    overrides are logged and ignored, so they cannot lock the administrator out)."""
    try:
        overrides = store.get_setting_overrides() or {}
        return apply_overrides(file_settings, overrides) if overrides else file_settings
    except Exception as exc:  # noqa: BLE001
        log.error("ignoring saved settings overrides: %s", exc)
        return file_settings


def worker_count(settings: Settings) -> int:
    return settings.monitor.workers or max(1, os.cpu_count() or 1)


class Monitor:
    """Owns the camera streams, their readers and sessions, the worker pool, the alert engine and the
    mail worker. `settings` must already be the effective settings (`effective_settings`)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        models: Models | None = None,
        alerts: AlertEngine | None = None,
        mailer: MailWorker | None = None,
        opener: Opener | None = None,
        run_mail: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self.models = models or Models(settings, threads=1)
        self.alerts = alerts or AlertEngine(settings, store)
        self.mailer = mailer if mailer is not None else (MailWorker(settings, store) if run_mail else None)
        self._opener = opener
        self._observe_lock = threading.Lock()
        self._cond = threading.Condition()
        self._streams: dict[str, Camera] = {}
        self._configs: dict[str, CameraSettings] = {}
        self._workers: list[threading.Thread] = []
        self._running = False
        self._session_ids = itertools.count(1)
        self.detect_interval = settings.detector.detect_every
        self._busy_s = 0.0  # worker time spent processing since the last control step
        self._last_control = time.perf_counter()
        self._dropped_at_control = 0
        self._read_at_control = 0
        self._calm_s = 0.0
        self._detector_slots = threading.BoundedSemaphore(1)
        self.mqtt: MqttPublisher | None = None  # when mqtt.url is set (maskwatch.integrations.mqtt)
        self.webhooks: WebhookWorker | None = None  # when [[webhooks]] are set (integrations.webhooks)
        self.frame_observer: FrameObserver | None = None  # every finished camera frame (/metrics, the bench)
        # the workers' settings apply to the collaborators too, also those built from file settings
        self.update_settings(settings, reconcile=False)

    # -- settings
    @property
    def gender_enabled(self) -> bool:
        return bool(self.settings.privacy.gender_enabled)

    def update_settings(self, settings: Settings, *, reconcile: bool = True) -> None:
        """Apply `settings` everywhere: models, alert engine and rules, mail worker, cameras."""
        old = self.settings
        self.settings = settings
        for part in (self.models, self.alerts, self.mailer):
            if part is None:
                continue
            try:
                part.update_settings(settings)
            except Exception as exc:  # noqa: BLE001 - one part failing must not stop the others
                log.error("applying settings to %s failed: %s", type(part).__name__, exc)
        self._apply_mqtt(settings)
        self._apply_webhooks(settings)
        if reconcile:
            restart = old.detector != settings.detector or old.monitor != settings.monitor
            self.reconcile(settings.cameras, restart_all=restart)

    def _apply_mqtt(self, settings: Settings) -> None:
        """Create, reconfigure or stop the MQTT publisher (its module is imported only when configured)."""
        try:
            if settings.mqtt.url and self.mqtt is None:
                from maskwatch.integrations.mqtt import MqttPublisher

                self.mqtt = MqttPublisher(settings, self.describe, snapshots_dir=self.store.snapshots_dir)
                self.alerts.on_stored.append(self.mqtt.on_event)
                if self._running:
                    self.mqtt.start()
            elif settings.mqtt.url and self.mqtt is not None:
                self.mqtt.update_settings(settings)
            elif self.mqtt is not None:
                publisher, self.mqtt = self.mqtt, None
                self.alerts.on_stored.remove(publisher.on_event)
                publisher.stop()
        except Exception as exc:  # noqa: BLE001 - MQTT must not stop the cameras
            log.error("MQTT: %s", exc)

    def _apply_webhooks(self, settings: Settings) -> None:
        """Create, reconfigure or stop the webhook worker (when `settings.webhooks` is not empty)."""
        try:
            if settings.webhooks and self.webhooks is None:
                from maskwatch.integrations.webhooks import WebhookWorker

                self.webhooks = WebhookWorker(settings, self.store)
                self.alerts.on_stored.append(self.webhooks.on_event)
                if self._running:
                    self.webhooks.start()
            elif settings.webhooks and self.webhooks is not None:
                self.webhooks.update_settings(settings)
            elif self.webhooks is not None:
                worker, self.webhooks = self.webhooks, None
                self.alerts.on_stored.remove(worker.on_event)
                worker.stop()
        except Exception as exc:  # noqa: BLE001 - webhooks must not stop the cameras
            log.error("webhooks: %s", exc)

    # -- alerts (every stream, cameras and webcams)
    def observe(self, key: str, result: FrameResult, image: np.ndarray | None) -> list[Event]:
        """Hand a frame's result to the alert engine; never raises. Calls are serialised (it is fast)."""
        try:
            with self._observe_lock:
                return list(self.alerts.observe(key, result, image) or [])
        except Exception as exc:  # noqa: BLE001
            log.error("alert engine failed on %s: %s", key, exc)
            return []

    def open_session(self, prefix: str) -> StreamSession:
        """A new stream outside the camera list (a browser webcam connection): its key is `prefix#N`,
        unique in the process, so two tabs of one user are two streams with their own alerts."""
        return StreamSession(
            f"{prefix}#{next(self._session_ids)}",
            self.models,
            self.observe,
            max_detect_interval=self.settings.monitor.max_detect_interval,
        )

    # -- cameras
    def _make_stream(self, cam: CameraSettings) -> Camera:
        def wake() -> None:
            with self._cond:
                self._cond.notify()

        reader = FrameReader(
            cam.name,
            cam.source,
            on_frame=wake,
            opener=self._opener,
            stall_after_s=self.settings.monitor.stall_after_s,
        )
        session = StreamSession(
            cam.name, self.models, self.observe, max_detect_interval=self.settings.monitor.max_detect_interval
        )
        session.detect_interval = self.detect_interval
        return CameraStream(
            cam,
            reader,
            session,
            stall_after_s=self.settings.monitor.stall_after_s,
            gender=lambda: self.gender_enabled,
            annotate=lambda image, result, gender: self.models.annotate(image, result, gender=gender),
            observer=lambda done: self.frame_observer(done) if self.frame_observer is not None else None,
        )

    def reconcile(self, cameras: list[CameraSettings], *, restart_all: bool = False) -> None:
        """Make the running streams match `cameras` (changed ones restart; their alert state stays)."""
        wanted = {c.name: c for c in cameras}
        stopped = []
        with self._cond:
            self._configs = wanted
            if not self._running:
                return
            for name in list(self._streams):
                if restart_all or name not in wanted or wanted[name] != self._streams[name].cam:
                    stream = self._streams.pop(name)
                    stream.stop()
                    stopped.append(stream)
            for name, cam in wanted.items():
                if cam.enabled and name not in self._streams:
                    stream = self._make_stream(cam)
                    self._streams[name] = stream
                    stream.start()
        for s in stopped:
            s.join(timeout=3)

    def get(self, name: str) -> Camera | None:
        with self._cond:
            return self._streams.get(name)

    def streams(self) -> list[Camera]:
        with self._cond:
            return list(self._streams.values())

    def describe(self) -> list[dict[str, Any]]:
        """Every configured camera with its health (disabled ones included)."""
        with self._cond:
            configs = list(self._configs.values())
            streams = dict(self._streams)
        out = []
        for cam in configs:
            stream = streams.get(cam.name)
            if stream is not None:
                d = stream.snapshot()
            else:
                d = idle_health(cam, "disabled" if not cam.enabled else "stopped")
            d["enabled"] = cam.enabled
            d["quiet_hours"] = cam.quiet_hours
            out.append(d)
        return out

    # -- the worker pool
    def _local_streams(self) -> list[CameraStream]:
        """The cameras this process runs (called with the condition held)."""
        return [s for s in self._streams.values() if isinstance(s, CameraStream)]

    def _next_stream(self) -> CameraStream | None:
        """The due stream served longest ago (called with the condition held)."""
        now = time.perf_counter()
        due = [s for s in self._local_streams() if s.due(now)]
        return min(due, key=lambda s: s.last_served) if due else None

    def _work(self) -> None:
        cv2.setNumThreads(1)
        while True:
            with self._cond:
                stream = None
                while self._running:
                    stream = self._next_stream()
                    if stream is not None:
                        break
                    self._cond.wait(timeout=0.05)
                if stream is None:
                    return
                stream.busy = True
                stream.last_served = time.perf_counter()
                frame = stream.reader.take()
            t0 = time.perf_counter()
            detector = self._detector_slots.acquire(blocking=False)
            try:
                if frame is not None:
                    stream.process(frame, may_detect=detector)
            except Exception as exc:  # noqa: BLE001 - one camera's bad frame must not stop the others
                stream.error = f"{type(exc).__name__}: {exc}"
                log.warning("camera %s: %s", stream.name, stream.error)
            finally:
                if detector:
                    self._detector_slots.release()
                with self._cond:
                    stream.busy = False
                    self._busy_s += time.perf_counter() - t0
                    self._cond.notify()
            self._control()

    def _control(self) -> None:
        """Once a second: adapt the detection interval of every camera to the load (see module doc)."""
        now = time.perf_counter()
        with self._cond:
            window = now - self._last_control
            if window < CONTROL_EVERY_S:
                return
            busy = self._busy_s / (window * max(1, len(self._workers)))
            local = self._local_streams()
            read = sum(s.reader.frames_read for s in local)
            dropped = sum(s.reader.dropped_waiting for s in local)
            new_read, new_drops = read - self._read_at_control, dropped - self._dropped_at_control
            self._busy_s, self._last_control = 0.0, now
            self._read_at_control, self._dropped_at_control = read, dropped
            s = self.settings
            lo, hi = s.detector.detect_every, max(s.detector.detect_every, s.monitor.max_detect_interval)
            interval = self.detect_interval
            self._calm_s = self._calm_s + window if busy < BUSY_LOW and new_drops == 0 else 0.0
            if new_drops > DROP_TOLERANCE * max(new_read, 1):
                interval = min(hi, interval + 1)  # frames lost waiting for a worker: overloaded
            elif self._calm_s >= CALM_BEFORE_LOWER_S:
                interval, self._calm_s = max(lo, interval - 1), 0.0
            if interval != self.detect_interval:
                log.info(
                    "detection every %d frame(s) (workers %.0f %% busy, %d of %d frames dropped)",
                    interval,
                    busy * 100,
                    new_drops,
                    new_read,
                )
                self.detect_interval = interval
            for stream in local:
                stream.session.detect_interval = interval

    # -- lifecycle
    def start(self) -> None:
        """Start the mail worker, the readers and the worker pool (the models load in the background)."""
        self._start_services()
        self._start_workers()
        self.reconcile(self.settings.cameras)

    def _start_services(self) -> None:
        """What every monitor runs besides its cameras: mail, MQTT, webhooks, the models' warm-up."""
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "threads;1")  # decoding: one core per stream
        for part in (self.mailer, self.mqtt, self.webhooks):
            if part is not None:
                part.start()
        threading.Thread(target=self.models.warm, name="warm-models", daemon=True).start()

    def _start_workers(self) -> None:
        with self._cond:
            self._running = True
            self._last_control = time.perf_counter()
            n = worker_count(self.settings)
            # the detector is the big cost (tens of ms a frame): with 2+ workers one always stays free
            # for tracked frames, so a long detection never makes the other cameras drop frames
            self._detector_slots = threading.BoundedSemaphore(max(1, n - 1))
            self._workers = [
                threading.Thread(target=self._work, name=f"monitor-worker-{i}", daemon=True) for i in range(n)
            ]
        for w in self._workers:
            w.start()

    def stop(self) -> None:
        """Stop the streams and workers, store what the alert engine still holds, stop the mail worker."""
        with self._cond:
            self._running = False
            streams = list(self._streams.values())
            self._streams.clear()
            self._cond.notify_all()
        for s in streams:
            s.stop()
        for w in self._workers:
            w.join(timeout=5)
        for s in streams:
            s.join(timeout=3)
        # alerts first: their last events go out too
        for part in (self.alerts, self.mailer, self.mqtt, self.webhooks):
            if part is None:
                continue
            try:
                part.stop()
            except Exception as exc:  # noqa: BLE001
                log.warning("stopping %s: %s", type(part).__name__, exc)

    def health(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for d in self.describe():
            states[d["state"]] = states.get(d["state"], 0) + 1
        return {
            "models": "loaded" if self.models.loaded else ("error" if self.models.error else "not loaded"),
            "models_error": self.models.error,
            "cameras": len(self._configs),
            "camera_states": states,
            "workers": len(self._workers),
            "detect_interval": self.detect_interval,
            "alerts": dict(self.alerts.health),
        }
