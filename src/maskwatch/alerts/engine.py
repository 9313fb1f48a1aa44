"""The alert engine: called by the video loop for every frame result; never blocks it, never raises into it.

`observe()` does only in-memory work (statistics counting, the rules, copying the frame when someone
becomes an alert). A writer thread does the rest: snapshot JPEG, the event row, the email in the outbox,
statistics flushes. If the database is locked or the disk is full, the work is kept in memory and retried
every few seconds (up to `max_pending` alerts); the error is logged and shown in `health`.

Per alert, in order: quiet hours of the camera (no event at all), then the email decision: digest mode
(the event waits for the next digest email), the hourly cap (the event is stored with mail_status
"capped", no email), else one email queued with the event, in the same transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime

import numpy as np

from maskwatch.alerts.mail import compose_alert
from maskwatch.alerts.rules import AlertRules
from maskwatch.alerts.snapshot import make_snapshot
from maskwatch.config import QUIET_HOURS_RE, Settings
from maskwatch.store import Event, Store, StoreError
from maskwatch.types import Face, FrameResult

log = logging.getLogger(__name__)

RETRY_EVERY_S = 5.0


@dataclass
class _AlertJob:
    event: Event  # filled in (id, snapshot, mail_status) once stored
    face: Face
    faces: tuple[Face, ...]
    frame: np.ndarray | None
    jpeg: bytes | None = None


def parse_quiet_hours(spec: str | None) -> list[tuple[dtime, dtime]]:
    """'22:00-06:00' or '12:00-13:00, 22:00-06:00' -> [(start, end), ...]; ValueError if malformed."""
    windows = []
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        if not QUIET_HOURS_RE.fullmatch(part.strip()):
            raise ValueError(f"quiet hours must look like '22:00-06:00', got {part.strip()!r}")
        a, b = (_clock_time(x) for x in part.split("-"))
        windows.append((a, b))
    return windows


def _clock_time(text: str) -> dtime:
    hours, minutes = text.strip().split(":")
    return dtime(int(hours), int(minutes))


def in_quiet_hours(windows: list[tuple[dtime, dtime]], now: dtime) -> bool:
    return any(start <= now < end if start <= end else now >= start or now < end for start, end in windows)


class AlertEngine:
    """Turns frame results into statistics, alert events and queued emails (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        max_pending: int = 1000,
        flush_every_s: float = 10.0,
        retry_s: float = RETRY_EVERY_S,
    ):
        self.store = store
        self.clock = clock
        self.max_pending = max_pending
        self.flush_every_s = flush_every_s
        self.retry_s = retry_s  # how often alerts kept in memory are tried again when the store fails
        self.rules = AlertRules(settings.alerts)
        self.health: dict = {
            "store_ok": True,
            "last_error": None,
            "last_error_at": None,
            "pending": 0,
            "dropped": 0,
            "frames": 0,
            "alerts": 0,
            "events_stored": 0,
            "quiet_suppressed": 0,
            "capped": 0,
        }
        self._jobs: deque[_AlertJob] = deque()
        self._cv = threading.Condition()
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._last_flush = time.monotonic()
        # called from the writer thread with each event once stored (id, snapshot filled in), e.g. the
        # MQTT publisher; must be quick; an exception is logged, never raised
        self.on_stored: list[Callable[[Event], None]] = []
        self.update_settings(settings)

    # -- the video loop side

    def update_settings(self, settings: Settings) -> None:
        self.settings = settings
        self.rules.update_settings(settings.alerts)
        quiet = {}
        for cam in settings.cameras:
            try:
                quiet[cam.name] = parse_quiet_hours(cam.quiet_hours)
            except ValueError as exc:
                log.error("camera %s: %s; quiet hours ignored", cam.name, exc)
        self._quiet = quiet

    def observe(self, camera: str, result: FrameResult, frame_bgr: np.ndarray | None) -> list[Event]:
        """Count this frame, apply the rules; returns the new alert events (their `id` is filled in by
        the writer thread within milliseconds; see `flush`). Never raises."""
        try:
            self._ensure_thread()
            now = self.clock()
            at = datetime.fromtimestamp(now, UTC)
            self.health["frames"] += 1
            self.store.record_frame(camera, result, at=at, flush=False)
            if not self.settings.alerts.enabled:
                return []
            faces = self.rules.update(camera, result.timestamp, result.faces)
            if not faces:
                return []
            windows = self._quiet.get(camera)
            if windows and in_quiet_hours(windows, datetime.fromtimestamp(now).time()):
                self.health["quiet_suppressed"] += len(faces)
                log.info("camera %s: %d alert(s) suppressed (quiet hours)", camera, len(faces))
                return []
            frame = None if frame_bgr is None else frame_bgr.copy()
            gender_on = self.settings.privacy.gender_enabled
            events = []
            for face in faces:
                ev = Event(
                    id=None,
                    camera=camera,
                    time=at,
                    track_id=face.track_id,
                    mask_label=face.mask.label,
                    mask_confidence=face.mask.confidence,
                    gender_label=face.gender.label if gender_on else None,
                    gender_confidence=face.gender.confidence if gender_on else None,
                    snapshot=None,
                    mail_status="pending",
                )
                events.append(ev)
                self._submit(_AlertJob(ev, face, result.faces, frame))
            self.health["alerts"] += len(events)
            return events
        except Exception as exc:  # the video loop must keep running whatever happens here
            self._error(f"alert engine error: {exc}", exc_info=True)
            return []

    def _submit(self, job: _AlertJob) -> None:
        self._ensure_thread()
        with self._cv:
            if len(self._jobs) >= self.max_pending:
                lost = self._jobs.popleft()
                self.health["dropped"] += 1
                log.error("too many alerts waiting for the database; dropped the one of %s", lost.event.time)
            self._jobs.append(job)
            self.health["pending"] = len(self._jobs)
            self._cv.notify()

    # -- the writer thread

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="maskwatch-alerts", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._jobs and not self._stop:
                    self._cv.wait(timeout=1.0)
                if self._stop and not self._jobs:
                    return
                job = self._jobs[0] if self._jobs else None
                self._busy = job is not None
            try:
                if job is not None:
                    ok = self._store_alert(job)
                    with self._cv:
                        if ok:
                            self._jobs.popleft()
                        self.health["pending"] = len(self._jobs)
                        self._busy = False
                        self._cv.notify_all()
                    if not ok:  # keep it and try again later (or at stop, once)
                        with self._cv:
                            self._cv.wait_for(lambda: self._stop, timeout=self.retry_s)
                            if self._stop:
                                self._busy = False
                                self._cv.notify_all()
                                return
                if time.monotonic() - self._last_flush >= self.flush_every_s:
                    self._flush_stats()
            except Exception as exc:  # a bug, not a store problem: drop that alert, keep the thread alive
                self._error(f"alert writer error: {exc}", exc_info=True)
                with self._cv:
                    if job is not None and self._jobs and self._jobs[0] is job:
                        self._jobs.popleft()
                        self.health["dropped"] += 1
                    self._busy = False
                    self._cv.notify_all()

    def _flush_stats(self) -> bool:
        self._last_flush = time.monotonic()
        try:
            self.store.flush_stats(now=datetime.fromtimestamp(self.clock(), UTC))
        except StoreError as exc:
            self._error(str(exc))
            return False
        if not self.health["store_ok"] and not self._jobs:
            self.health["store_ok"] = True
        return True

    def _store_alert(self, job: _AlertJob) -> bool:
        ev = job.event
        s = self.settings
        if job.jpeg is None and job.frame is not None:
            try:
                job.jpeg = make_snapshot(job.frame, job.face, job.faces, blur=s.privacy.blur_snapshots)
            except Exception as exc:
                log.error("snapshot failed, event stored without it: %s", exc)
            job.frame = None
        try:
            compose, status = None, "none"
            if s.alerts.digest_minutes > 0:
                status = "digest"
            elif self.store.count_mail_since(ev.time - timedelta(hours=1)) >= s.alerts.max_emails_per_hour:
                status = "capped"
                self.health["capped"] += 1
                log.warning(
                    "hourly email cap (%d) reached: event stored without email", s.alerts.max_emails_per_hour
                )
            else:
                settings = s

                def compose(e: Event):
                    return compose_alert(settings, e)

            stored = self.store.add_event(
                camera=ev.camera,
                time=ev.time,
                track_id=ev.track_id,
                mask=job.face.mask,
                gender=job.face.gender if ev.gender_label is not None else None,
                snapshot_jpeg=job.jpeg,
                mail_status=status,
                compose=compose,
            )
        except StoreError as exc:
            self._error(f"{exc} (alert kept in memory, retrying every {self.retry_s:g} s)")
            return False
        ev.id, ev.snapshot, ev.mail_status = stored.id, stored.snapshot, stored.mail_status
        self.health["events_stored"] += 1
        if not self.health["store_ok"]:
            log.warning("database writable again; alert events are being saved")
        self.health.update(store_ok=True)
        for hook in list(self.on_stored):
            try:
                hook(ev)
            except Exception as exc:  # noqa: BLE001 - a listener must not stop the writer
                log.error("on_stored listener %r failed: %s", hook, exc, exc_info=True)
        return True

    def _error(self, message: str, exc_info: bool = False) -> None:
        first = self.health["last_error"] != message
        self.health.update(store_ok=False, last_error=message, last_error_at=datetime.now(UTC).isoformat())
        if first or exc_info:
            log.error("%s", message, exc_info=exc_info)

    # -- control

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every alert so far is stored and write the statistics. False on timeout or error."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._cv.notify_all()
            while self._jobs or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or (self._thread is None or not self._thread.is_alive()):
                    return False
                self._cv.wait(timeout=min(left, 0.05))
        return self._flush_stats()

    def stop(self, timeout: float = 10.0) -> None:
        """Store what is pending (one more try) and stop the writer thread."""
        self.flush(timeout=timeout)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread:
            self._thread.join(timeout)
        if self._jobs:
            log.error(
                "%d alert(s) could not be saved before stopping: %s",
                len(self._jobs),
                self.health["last_error"],
            )
