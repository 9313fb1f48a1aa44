"""Everything the web app runs on, in one object: settings, store, models, alerts, mail, cameras.

`Runtime` is built by `create_app` (real collaborators by default, fakes in tests) and reached by
routes through `request.app.state.runtime`. Settings live in one place: the file/env settings plus
the overrides saved from the settings page (`Store.get_setting_overrides()`), merged by
`config.apply_overrides`; `update_overrides` re-validates and pushes the new settings everywhere.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from typing import Any

import anyio
import numpy as np

from maskwatch.config import CameraSettings, Settings, apply_overrides
from maskwatch.types import FrameResult
from maskwatch.web.analysis import Analyzer, UploadResults
from maskwatch.web.auth import LoginLimiter
from maskwatch.web.cameras import CameraManager, CameraWorker

log = logging.getLogger(__name__)


class StreamSession:
    """One live stream (a camera or a browser webcam): own pipeline, alerts, optional annotation."""

    def __init__(self, runtime: Runtime, camera: str) -> None:
        self.runtime = runtime
        self.camera = camera
        self._pipeline: Any = None
        self._generation = -1

    def process(
        self, image: np.ndarray, index: int, timestamp: float, *, annotate: bool = False
    ) -> tuple[FrameResult, list[Any], np.ndarray | None]:
        analyzer = self.runtime.analyzer
        if self._pipeline is None or self._generation != analyzer.generation:
            self._generation = analyzer.generation
            self._pipeline = analyzer.pipeline()
        result = self._pipeline.process(image, source=self.camera, frame_index=index, timestamp=timestamp)
        events = self.runtime.observe(self.camera, result, image)
        drawn = analyzer.annotate(image, result, gender=self.runtime.gender_enabled) if annotate else None
        return result, events, drawn


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Any,
        analyzer: Analyzer,
        alerts: Any,
        mailer: Any,
        open_source: Any = None,
        owns_store: bool = False,
    ) -> None:
        self.owns_store = owns_store
        self.file_settings = settings
        self.store = store
        self.analyzer = analyzer
        self.alerts = alerts
        self.mailer = mailer
        self.limiter = LoginLimiter()
        self.uploads = UploadResults()
        self.started_at = time.time()
        self._open_source = open_source
        self._stop = threading.Event()
        self._observe_lock = threading.Lock()
        # vision work from requests (webcam frames, uploads) runs in at most this many threads at once:
        # more would only fight over the CPU cores and starve the event loop (health, pages, streams)
        self.vision_limiter = anyio.CapacityLimiter(max(1, min(4, os.cpu_count() or 1)))
        self._retention: threading.Thread | None = None
        self.settings = settings
        try:
            overrides = store.get_setting_overrides() or {}
            if overrides:
                self.settings = apply_overrides(settings, overrides)
        except Exception as exc:  # noqa: BLE001 - bad saved overrides must not lock the admin out
            log.error("ignoring saved settings overrides: %s", exc)
        self.analyzer.update_settings(self.settings)
        self.cameras = CameraManager(self._make_worker)
        self.setup_token: str | None = None if store.has_users() else secrets.token_urlsafe(24)

    # -- settings -------------------------------------------------------------------------------
    @property
    def gender_enabled(self) -> bool:
        return bool(self.settings.privacy.gender_enabled)

    def update_overrides(self, overrides: dict[str, Any]) -> Settings:
        """Validate, save and apply new overrides (raises pydantic.ValidationError when invalid)."""
        new = apply_overrides(self.file_settings, overrides)
        self.store.set_setting_overrides(overrides)
        old = self.settings
        self.settings = new
        for part in (self.alerts, self.mailer, self.analyzer):
            update = getattr(part, "update_settings", None)
            if update is not None:
                try:
                    update(new)
                except Exception as exc:  # noqa: BLE001
                    log.error("applying settings to %s failed: %s", type(part).__name__, exc)
        restart = old.detector != new.detector or old.models != new.models or old.privacy != new.privacy
        self.cameras.reconcile(new.cameras, restart_all=restart)
        return new

    def overrides(self) -> dict[str, Any]:
        return dict(self.store.get_setting_overrides() or {})

    # -- streams --------------------------------------------------------------------------------
    def observe(self, camera: str, result: FrameResult, image: np.ndarray) -> list[Any]:
        """Hand a frame's result to the alert engine (which records sightings); never raises.

        Calls are serialised: camera threads and webcam sessions share one engine (it is fast)."""
        try:
            with self._observe_lock:
                return list(self.alerts.observe(camera, result, image) or [])
        except Exception as exc:  # noqa: BLE001
            log.error("alert engine failed on %s: %s", camera, exc)
            return []

    def session(self, camera: str) -> StreamSession:
        return StreamSession(self, camera)

    def _make_worker(self, cam: CameraSettings) -> CameraWorker:
        def make_processor(name: str):
            session = self.session(name)

            def process(image: np.ndarray, index: int, ts: float):
                result, _events, drawn = session.process(image, index, ts, annotate=True)
                return result, drawn

            return process

        return CameraWorker(
            cam,
            make_processor=make_processor,
            gender=lambda: self.gender_enabled,
            open_source=self._open_source,
        )

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        start = getattr(self.mailer, "start", None)
        if start is not None:
            start()
        threading.Thread(target=self.analyzer.warm, name="warm-models", daemon=True).start()
        self.cameras.start(self.settings.cameras)
        if not hasattr(self.mailer, "RETENTION_EVERY_S"):  # the mail worker runs retention itself
            self._retention = threading.Thread(target=self._retention_loop, name="retention", daemon=True)
            self._retention.start()

    def stop(self) -> None:
        self._stop.set()
        self.cameras.stop()
        for part in (self.alerts, self.mailer):  # the alert engine stores what is still pending
            stop = getattr(part, "stop", None)
            if stop is not None:
                try:
                    stop()
                except Exception as exc:  # noqa: BLE001
                    log.warning("stopping %s: %s", type(part).__name__, exc)
        if self.owns_store:
            self.store.close()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def purge_once(self) -> Any:
        return self.store.purge_older_than(self.settings.privacy.retention_days)

    def _retention_loop(self, first_delay_s: float = 30.0, every_s: float = 3600.0) -> None:
        delay = first_delay_s
        while not self._stop.wait(delay):
            try:
                removed = self.purge_once()
                log.info("retention: purged %s", removed)
            except Exception as exc:  # noqa: BLE001
                log.error("retention job failed: %s", exc)
            delay = every_s

    def health(self) -> dict[str, Any]:
        alerts_health = getattr(self.alerts, "health", None)
        if callable(alerts_health):
            alerts_health = alerts_health()
        return {
            "models": "loaded"
            if self.analyzer.loaded
            else ("error" if self.analyzer.error else "not loaded"),
            "models_error": self.analyzer.error,
            "cameras": len(self.settings.cameras),
            "alerts": alerts_health,
            "uptime_s": round(time.time() - self.started_at, 1),
        }
