"""What the web app runs on, in one object: settings, store, the monitor, uploads, logins.

`Runtime` is built by `create_app` and reached by routes through `request.app.state.runtime`. The
monitoring engine (`maskwatch.monitor.Monitor`: cameras, alerts, mail) is a collaborator the web app
is a client of. Settings live in one place: the file/env settings plus the overrides saved from the
settings page, merged by `monitor.effective_settings` at start-up; `update_overrides` re-validates,
saves and pushes new settings everywhere (the monitor passes them on to its parts).
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

from maskwatch.alerts.engine import AlertEngine
from maskwatch.config import Settings, apply_overrides
from maskwatch.monitor import Monitor, StreamSession
from maskwatch.store import Event, Store
from maskwatch.types import FrameResult
from maskwatch.web.analysis import Analyzer, RateLimiter, UploadJobs, UploadResults
from maskwatch.web.auth import LoginLimiter

log = logging.getLogger(__name__)


class WebcamSession:
    """One browser webcam connection: a monitor stream session plus the annotation the page needs."""

    def __init__(self, runtime: Runtime, session: StreamSession) -> None:
        self.runtime = runtime
        self.session = session

    @property
    def key(self) -> str:
        return self.session.key

    def process(
        self, image: np.ndarray, index: int, timestamp: float, *, annotate: bool = False
    ) -> tuple[FrameResult, list[Event], np.ndarray | None]:
        result, events = self.session.process(image, timestamp)
        gender = self.runtime.gender_enabled
        drawn = self.runtime.analyzer.annotate(image, result, gender=gender) if annotate else None
        return result, events, drawn


class Runtime:
    def __init__(self, file_settings: Settings, *, store: Store, monitor: Monitor, owns_store: bool = False):
        self.owns_store = owns_store
        self.file_settings = file_settings
        self.store = store
        self.monitor = monitor
        if not isinstance(monitor.models, Analyzer):
            raise TypeError("the web app's monitor must be built with an Analyzer (uploads use it)")
        self.analyzer: Analyzer = monitor.models
        self.limiter = LoginLimiter()
        self.uploads = UploadResults()
        self.upload_jobs = UploadJobs()  # videos being analysed: progress and cancel
        self.upload_limiter = RateLimiter(window_s=60.0)  # uploads per user per minute
        self.started_at = time.time()
        self._stop = threading.Event()
        # vision work from requests (webcam frames, uploads) runs in at most this many threads at once:
        # more would only fight over the CPU cores and starve the event loop (health, pages, streams)
        self.vision_limiter = anyio.CapacityLimiter(max(1, min(4, os.cpu_count() or 1)))
        self.setup_token: str | None = None if store.has_users() else secrets.token_urlsafe(24)

    # -- settings
    @property
    def settings(self) -> Settings:
        return self.monitor.settings

    @property
    def gender_enabled(self) -> bool:
        return self.monitor.gender_enabled

    @property
    def alerts(self) -> AlertEngine:
        return self.monitor.alerts

    @property
    def cameras(self) -> Monitor:
        """The camera streams (`get(name)`, `describe()`)."""
        return self.monitor

    def update_overrides(self, overrides: dict[str, Any]) -> Settings:
        """Validate, save and apply new overrides (raises pydantic.ValidationError when invalid)."""
        new = apply_overrides(self.file_settings, overrides)
        self.store.set_setting_overrides(overrides)
        self.monitor.update_settings(new)
        return new

    def overrides(self) -> dict[str, Any]:
        return dict(self.store.get_setting_overrides() or {})

    # -- streams
    def session(self, prefix: str) -> WebcamSession:
        """A new webcam stream (key `prefix#N`, unique in the process)."""
        return WebcamSession(self, self.monitor.open_session(prefix))

    # -- lifecycle
    def start(self) -> None:
        self._stop.clear()
        self.monitor.start()  # its mail worker also runs the retention job

    def stop(self) -> None:
        self._stop.set()
        self.monitor.stop()
        if self.owns_store:
            self.store.close()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def health(self) -> dict[str, Any]:
        return {**self.monitor.health(), "uptime_s": round(time.time() - self.started_at, 1)}
