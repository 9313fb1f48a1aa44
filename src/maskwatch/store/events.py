"""The alert events section of the store: events with their snapshot files."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from maskwatch.store.base import StoreBase, StoreError, _changed, utcnow
from maskwatch.store.outbox import MailDraft, _queue
from maskwatch.store.rows import EventRow
from maskwatch.types import Attribute


@dataclass
class Event:
    """One alert: a person seen without a mask (`mask_label` no_mask) or wearing one with nose or mouth
    uncovered (`incorrect`). `time` is aware UTC; `snapshot` is relative to the store's snapshots
    directory. `id` is None until the event is written (see AlertEngine.flush)."""

    id: int | None
    camera: str
    time: datetime
    track_id: int | None
    mask_label: str
    mask_confidence: float
    gender_label: str | None
    gender_confidence: float | None
    snapshot: str | None
    mail_status: str
    acknowledged_by: str | None = None  # the user who acknowledged it, and when (aware UTC)
    acknowledged_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "camera": self.camera,
            "time": self.time.isoformat(),
            "track_id": self.track_id,
            "mask_label": self.mask_label,
            "mask_confidence": round(self.mask_confidence, 4),
            "gender_label": self.gender_label,
            "gender_confidence": None if self.gender_confidence is None else round(self.gender_confidence, 4),
            "snapshot": self.snapshot,
            "mail_status": self.mail_status,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": self.acknowledged_at.isoformat() if self.acknowledged_at else None,
        }


def _event(row: EventRow) -> Event:
    return Event(
        id=row.id,
        camera=row.camera,
        time=row.time,
        track_id=row.track_id,
        mask_label=row.mask_label,
        mask_confidence=row.mask_confidence,
        gender_label=row.gender_label,
        gender_confidence=row.gender_confidence,
        snapshot=row.snapshot,
        mail_status=row.mail_status,
        acknowledged_by=row.acknowledged_by,
        acknowledged_at=row.acknowledged_at,
    )


class EventsSection(StoreBase):
    def add_event(
        self,
        *,
        camera: str,
        time: datetime,
        track_id: int | None,
        mask: Attribute,
        gender: Attribute | None,
        snapshot_jpeg: bytes | None,
        mail_status: str = "none",
        compose: Callable[[Event], MailDraft] | None = None,
    ) -> Event:
        """Store one alert event and its snapshot file. With `compose`, the email it returns for the
        new event is queued in the outbox in the same transaction (both or neither are stored)."""
        snapshot = self._write_snapshot(camera, time, snapshot_jpeg) if snapshot_jpeg else None

        def write(session: Session) -> Event:
            row = EventRow(
                camera=camera,
                time=time,
                track_id=track_id,
                mask_label=mask.label,
                mask_confidence=mask.confidence,
                gender_label=gender.label if gender else None,
                gender_confidence=gender.confidence if gender else None,
                snapshot=snapshot,
                mail_status=mail_status,
            )
            session.add(row)
            session.flush()
            if compose is not None:
                draft = compose(_event(row))
                draft.attachments = draft.attachments or ([snapshot] if snapshot else [])
                _queue(session, draft, [row.id], time)
                row.mail_status = "queued"
            return _event(row)

        try:
            return self._run("saving an alert event", write)
        except StoreError:
            if snapshot:
                (self.snapshots_dir / snapshot).unlink(missing_ok=True)
            raise

    def _write_snapshot(self, camera: str, time: datetime, jpeg: bytes) -> str:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in camera)[:40] or "camera"
        rel = (
            Path(time.strftime("%Y-%m-%d"))
            / f"{time.strftime('%H%M%S_%f')}_{safe}_{secrets.token_hex(3)}.jpg"
        )
        path = self.snapshots_dir / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(jpeg)
            tmp.replace(path)
        except OSError as exc:
            path.with_suffix(".tmp").unlink(missing_ok=True)
            raise StoreError(f"cannot save snapshot in {self.snapshots_dir}: {exc.strerror or exc}") from exc
        return rel.as_posix()

    def _events_query(self, camera, since, until, label):
        q = select(EventRow)
        if camera:
            q = q.where(EventRow.camera == camera)
        if since:
            q = q.where(EventRow.time >= since)
        if until:
            q = q.where(EventRow.time < until)
        if label:
            q = q.where(EventRow.mask_label == label)
        return q

    def list_events(
        self,
        *,
        camera: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        label: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[Event], int]:
        """Events newest first (one page) and the total number matching. `label` filters the mask label."""
        q = self._events_query(camera, since, until, label)

        def read(session: Session):
            total = session.scalar(select(func.count()).select_from(q.subquery()))
            rows = session.scalars(
                q.order_by(EventRow.time.desc(), EventRow.id.desc()).offset(offset).limit(limit)
            )
            return [_event(r) for r in rows], int(total or 0)

        return self._run("reading events", read)

    def iter_events(
        self, *, camera=None, since=None, until=None, label: str | None = None, batch: int = 1000
    ) -> Iterable[Event]:
        """All matching events oldest first, read in batches after the last id seen (for exports)."""
        last: int | None = 0  # read events always have an id

        def read(session: Session) -> list[Event]:  # the batch after event id `last`
            q = self._events_query(camera, since, until, label).where(EventRow.id > last)
            return [_event(r) for r in session.scalars(q.order_by(EventRow.id).limit(batch))]

        while True:
            rows: list[Event] = self._run("reading events", read)
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1].id

    def get_event(self, event_id: int) -> Event | None:
        def read(session: Session) -> Event | None:
            row = session.get(EventRow, event_id)
            return None if row is None else _event(row)

        return self._run("reading an event", read)

    def acknowledge_event(self, event_id: int, user: str, *, now: datetime | None = None) -> Event | None:
        """Record that `user` acknowledged the event (the first acknowledgement stays); None: no event."""

        def write(session: Session) -> Event | None:
            row = session.get(EventRow, event_id)
            if row is None:
                return None
            if row.acknowledged_at is None:
                row.acknowledged_by, row.acknowledged_at = user, now or utcnow()
            return _event(row)

        return self._run("acknowledging an event", write)

    def delete_event(self, event_id: int) -> bool:
        """Delete one event and its snapshot file; False when there is no such event."""

        def write(session: Session) -> tuple[int, str | None]:
            snapshot = session.scalar(select(EventRow.snapshot).where(EventRow.id == event_id))
            return _changed(session, delete(EventRow).where(EventRow.id == event_id)), snapshot

        n, snapshot = self._run("deleting an event", write)
        if n and snapshot:
            (self.snapshots_dir / snapshot).unlink(missing_ok=True)
        return n == 1

    def events_after(self, event_id: int, *, limit: int = 20) -> list[Event]:
        """Events with an id above `event_id`, oldest first (what the Live page has not seen yet)."""
        q = select(EventRow).where(EventRow.id > event_id).order_by(EventRow.id).limit(limit)
        return self._run("reading events", lambda s: [_event(r) for r in s.scalars(q)])

    def last_event_id(self) -> int:
        return int(self._run("reading events", lambda s: s.scalar(select(func.max(EventRow.id)))) or 0)

    def snapshot_file(self, event: Event) -> Path | None:
        """The snapshot file of an event, if it has one and it still exists."""
        if not event.snapshot:
            return None
        path = (self.snapshots_dir / event.snapshot).resolve()
        if not path.is_relative_to(self.snapshots_dir.resolve()) or not path.is_file():
            return None
        return path

    def set_event_mail_status(self, event_ids: list[int], status: str) -> None:
        if event_ids:
            self._run(
                "updating events",
                lambda s: s.execute(
                    update(EventRow).where(EventRow.id.in_(event_ids)).values(mail_status=status)
                ),
            )

    def digest_events(self) -> list[Event]:
        """Events waiting for the next digest email (mail_status 'digest'), oldest first."""
        q = select(EventRow).where(EventRow.mail_status == "digest").order_by(EventRow.id)
        return self._run("reading events", lambda s: [_event(r) for r in s.scalars(q)])
