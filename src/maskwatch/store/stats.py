"""The statistics section of the store: people per camera and minute, buffered in memory
(`MinuteBuffer`) and added to the database rows."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import UTC, datetime, tzinfo
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maskwatch.store.base import StoreBase, StoreError, _minute, utcnow
from maskwatch.store.minutes import COUNT_KEYS, MinuteBuffer, Pending, with_compliance
from maskwatch.store.rows import EventRow, MinuteRow
from maskwatch.types import FrameResult

log = logging.getLogger("maskwatch.store")


class StatsSection(StoreBase):
    _minutes: MinuteBuffer
    _flush_lock: threading.Lock  # one statistics flush at a time (deltas must not be added twice)

    def record_frame(
        self, camera: str, result: FrameResult, *, at: datetime | None = None, flush: bool = True
    ) -> None:
        """Count the people of one frame into its camera-minute (`at`, default now). Each track counts
        once per minute, with its latest labels. Buffered in memory and written when the minute ends or
        every `flush_every_s` (with `flush=False` only by `flush_stats`, e.g. from another thread); a
        failed write is kept and retried (StoreError is raised to the caller)."""
        at = at or utcnow()
        if self._minutes.add(camera, _minute(at), result, at=at) and flush:
            self.flush_stats(now=at)

    def flush_stats(self, *, now: datetime | None = None) -> None:
        """Write buffered statistics; finished minutes leave the buffer once written."""
        with self._flush_lock:
            now = now or utcnow()
            pending = self._minutes.pending(now=now)
            if pending:
                self._run("saving statistics", lambda s: _add_counts(s, pending))
                self._minutes.written(pending, current=_minute(now))

    def stats(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        camera: str | None = None,
        bucket: str = "hour",
        zone: tzinfo = UTC,
    ) -> dict:
        """Totals per time bucket ("minute", "hour" or "day", starting on the hours and days of `zone`;
        `t` is the bucket's start in UTC), per camera and overall. People are
        summed over minutes (a person present for 3 minutes counts 3 times at minute resolution)."""
        if bucket not in ("minute", "hour", "day"):
            raise ValueError(f"bucket must be minute, hour or day, got {bucket!r}")
        try:
            self.flush_stats()
        except StoreError as exc:
            log.warning("showing statistics without the latest minute: %s", exc)
        q = select(MinuteRow).order_by(MinuteRow.minute)
        if since:
            q = q.where(MinuteRow.minute >= _minute(since))
        if until:
            q = q.where(MinuteRow.minute < until)
        if camera:
            q = q.where(MinuteRow.camera == camera)
        rows = self._run("reading statistics", lambda s: list(s.scalars(q)))
        buckets: dict[datetime, Counter] = {}
        per_camera: dict[str, Counter] = {}
        totals: Counter = Counter()
        for r in rows:
            t = r.minute.astimezone(zone)
            if bucket in ("hour", "day"):
                t = t.replace(minute=0)
            if bucket == "day":
                t = t.replace(hour=0)
            t = t.astimezone(UTC)
            values = {k: getattr(r, k) for k in COUNT_KEYS}
            buckets.setdefault(t, Counter()).update(values)
            per_camera.setdefault(r.camera, Counter()).update(values)
            totals.update(values)

        def full(c: Counter) -> dict[str, Any]:
            return with_compliance({k: c[k] for k in COUNT_KEYS})

        return {
            "bucket": bucket,
            "buckets": [{"t": t.isoformat(), **full(c)} for t, c in sorted(buckets.items())],
            "per_camera": {cam: full(c) for cam, c in sorted(per_camera.items())},
            "totals": full(totals),
        }

    def cameras(self) -> list[str]:
        def read(session: Session) -> list[str]:
            names = set(session.scalars(select(EventRow.camera).distinct()))
            names |= set(session.scalars(select(MinuteRow.camera).distinct()))
            return sorted(names)

        return sorted(self._minutes.cameras() | set(self._run("reading cameras", read)))


def _add_counts(session: Session, pending: list[Pending]) -> None:
    """Add what each pending minute counted since its last write to its row."""
    for (camera, minute), acc, counts in pending:
        delta = {k: counts[k] - acc.flushed[k] for k in COUNT_KEYS}
        if not any(delta.values()):
            continue
        row = session.get(MinuteRow, (camera, minute))
        if row is None:
            row = MinuteRow(camera=camera, minute=minute, **dict.fromkeys(COUNT_KEYS, 0))
            session.add(row)
        for k, v in delta.items():
            setattr(row, k, getattr(row, k) + v)
