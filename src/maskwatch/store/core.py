"""`Store`: the facade composing the sections (events, outbox, statistics, users and tokens, settings)
on one engine; opening it upgrades the schema (`maskwatch.store.migrate`); retention spans them all."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from maskwatch.store import migrate
from maskwatch.store.base import StoreError, _changed, _explain, utcnow
from maskwatch.store.events import EventsSection
from maskwatch.store.minutes import MinuteBuffer
from maskwatch.store.outbox import OutboxSection
from maskwatch.store.rows import EventRow, MetaRow, MinuteRow, OutboxRow, WebhookDeliveryRow
from maskwatch.store.settings import SettingsSection
from maskwatch.store.stats import StatsSection
from maskwatch.store.users import UsersSection
from maskwatch.store.webhooks import WebhooksSection

if TYPE_CHECKING:
    from maskwatch.config import Settings

log = logging.getLogger("maskwatch.store")


class Store(EventsSection, OutboxSection, StatsSection, UsersSection, SettingsSection, WebhooksSection):
    """The one database of maskwatch. Thread-safe: each call uses its own short session."""

    def __init__(
        self, url: str, *, snapshots_dir: Path, busy_timeout_s: float = 5.0, flush_every_s: float = 10.0
    ):
        super().__init__(url, snapshots_dir=snapshots_dir, busy_timeout_s=busy_timeout_s)
        self._minutes = MinuteBuffer(flush_every_s=flush_every_s, now=utcnow())
        self._flush_lock = threading.Lock()
        self._hasher = PasswordHasher()
        self._upgrade_schema()

    @property
    def flush_every_s(self) -> float:
        return self._minutes.flush_every_s

    @flush_every_s.setter
    def flush_every_s(self, value: float) -> None:
        self._minutes.flush_every_s = value

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store of these settings: `database_url`, else `data_dir/maskwatch.db`; snapshots in
        `data_dir/snapshots`."""
        return cls(settings.db_url, snapshots_dir=settings.data_dir / "snapshots")

    def close(self) -> None:
        try:
            self.flush_stats()
        except StoreError as exc:
            log.error("statistics not saved at close: %s", exc)
        self.engine.dispose()

    # -- schema

    def _upgrade_schema(self) -> None:
        try:
            with self.engine.begin() as conn:
                migrate.upgrade(conn)
        except StoreError:
            self.engine.dispose()
            raise
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreError(f"opening the database failed: {_explain(exc)}") from exc

    def schema_version(self) -> int:
        """The version number of the mechanism before Alembic (3 since; see `schema_revision`)."""
        row = self._run("reading the schema version", lambda s: s.get(MetaRow, "schema_version"))
        if row is None:
            raise StoreError("the database has no schema version")
        return int(row.value)

    def schema_revision(self) -> str | None:
        """The Alembic revision of the database (`migrate.head()` once opened)."""
        return self._run("reading the schema revision", lambda s: migrate.current_revision(s.connection()))

    # -- retention

    def purge_older_than(self, days: int, *, now: datetime | None = None) -> int:
        """Delete events older than `days` with their snapshot files, statistics minutes and finished
        outbox messages and webhook deliveries older than that. Returns the number of events deleted."""
        if days < 1:
            raise ValueError("days must be >= 1")
        cutoff = (now or utcnow()) - timedelta(days=days)

        def write(session: Session) -> tuple[int, list[str]]:
            snaps = [s for s in session.scalars(select(EventRow.snapshot).where(EventRow.time < cutoff)) if s]
            n = _changed(session, delete(EventRow).where(EventRow.time < cutoff))
            session.execute(delete(MinuteRow).where(MinuteRow.minute < cutoff))
            session.execute(
                delete(OutboxRow).where(OutboxRow.created < cutoff, OutboxRow.status.in_(("sent", "failed")))
            )
            finished = WebhookDeliveryRow.status.in_(("sent", "failed"))
            session.execute(delete(WebhookDeliveryRow).where(WebhookDeliveryRow.created < cutoff, finished))
            return n, snaps

        n, snaps = self._run("deleting old events", write)
        for rel in snaps:
            (self.snapshots_dir / rel).unlink(missing_ok=True)
        for day_dir in self.snapshots_dir.glob("*"):
            if day_dir.is_dir() and not any(day_dir.iterdir()):
                day_dir.rmdir()
        if n:
            log.info("retention: deleted %d events older than %d days", n, days)
        return n
