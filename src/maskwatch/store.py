"""The database, behind one module: statistics, alert events, the mail outbox, users, API tokens, settings.

SQLAlchemy 2; a SQLite file (WAL) in the data directory by default, PostgreSQL by URL
(`database_url = "postgresql+psycopg://user:pass@host/db"`). The schema carries a version number that is
checked on open (a newer database than the code is refused with a clear message; older ones are migrated
by the steps in `_MIGRATIONS`). Snapshot JPEGs live as files under `snapshots_dir`; rows keep their
relative path.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> store = Store(f"sqlite:///{d / 'm.db'}", snapshots_dir=d / "snapshots")
    >>> store.add_user("admin", "correct horse")
    >>> store.verify_user("admin", "correct horse"), store.verify_user("admin", "wrong")
    (True, False)
    >>> store.close()
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql import Executable

from maskwatch.types import Attribute, FrameResult

if TYPE_CHECKING:
    from maskwatch.config import Settings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
MAIL_STATUSES = ("queued", "sending", "sent", "failed")


class StoreError(RuntimeError):
    """A database or snapshot-file problem, with a message meant for a person (locked, disk full, ...)."""


# ---------------------------------------------------------------------------------------------- schema


class UTCDateTime(TypeDecorator):
    """Stored as naive UTC (portable across SQLite and PostgreSQL), read back as aware UTC. Naive
    datetimes given to the store are taken as UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:  # naive datetimes are taken as UTC
            return value
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class MinuteRow(Base):
    """People seen per camera and minute (distinct tracks), by label."""

    __tablename__ = "minute_stats"
    camera: Mapped[str] = mapped_column(String(200), primary_key=True)
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True, index=True)
    people: Mapped[int] = mapped_column(Integer, default=0)
    masked: Mapped[int] = mapped_column(Integer, default=0)
    unmasked: Mapped[int] = mapped_column(Integer, default=0)
    incorrect: Mapped[int] = mapped_column(Integer, default=0)  # a mask worn with nose or mouth uncovered
    uncertain: Mapped[int] = mapped_column(Integer, default=0)
    man: Mapped[int] = mapped_column(Integer, default=0)
    woman: Mapped[int] = mapped_column(Integer, default=0)


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera: Mapped[str] = mapped_column(String(200), index=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    track_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mask_label: Mapped[str] = mapped_column(String(20))
    mask_confidence: Mapped[float] = mapped_column(Float)
    gender_label: Mapped[str | None] = mapped_column(String(20), nullable=True)
    gender_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    snapshot: Mapped[str | None] = mapped_column(String(300), nullable=True)
    mail_status: Mapped[str] = mapped_column(String(20), default="none", index=True)


class OutboxRow(Base):
    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    to: Mapped[str] = mapped_column(Text, default="")  # comma-separated; empty: the configured recipients
    subject: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)
    attachments: Mapped[list] = mapped_column(JSON, default=list)  # snapshot paths relative to snapshots_dir
    event_ids: Mapped[list] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class UserRow(Base):
    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    password_hash: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    # kept in each session cookie; a new value (logout, new password) ends every session of the user
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class TokenRow(Base):
    __tablename__ = "tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the token
    user: Mapped[str] = mapped_column(String(100), index=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # None: never
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # about to the minute


class SettingRow(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict] = mapped_column(JSON)


def _add_incorrect_count(conn) -> None:
    """Schema 1 -> 2: minute statistics count masks worn incorrectly (label `incorrect`)."""
    conn.exec_driver_sql("ALTER TABLE minute_stats ADD COLUMN incorrect INTEGER NOT NULL DEFAULT 0")


def _add_access_columns(conn) -> None:
    """Schema 2 -> 3: tokens expire and remember their last use; sessions carry a per-user version."""
    present = {t: {c["name"] for c in inspect(conn).get_columns(t)} for t in ("users", "tokens")}
    for table, column, ddl in (
        ("users", "session_version", "INTEGER NOT NULL DEFAULT 0"),
        ("tokens", "expires_at", "TIMESTAMP"),
        ("tokens", "last_used_at", "TIMESTAMP"),
    ):
        if column not in present[table]:  # create_all() made it already when the table was missing
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")


# Schema migrations: {from_version: function(connection)} bringing the schema to from_version + 1.
_MIGRATIONS: dict[int, Callable[[Any], None]] = {1: _add_incorrect_count, 2: _add_access_columns}


def _changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE; the number of rows it changed."""
    return cast("CursorResult[Any]", session.execute(statement)).rowcount


# ----------------------------------------------------------------------------------------- data types


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
        }


@dataclass
class MailDraft:
    """An email to put in the outbox."""

    subject: str
    text: str
    html: str
    to: list[str] = field(default_factory=list)  # empty: the recipients configured at send time
    attachments: list[str] = field(default_factory=list)  # snapshot paths relative to snapshots_dir


@dataclass
class OutboxMessage:
    id: int
    created: datetime
    to: list[str]
    subject: str
    status: str  # queued / sending / sent / failed
    attempts: int
    last_error: str | None
    sent_at: datetime | None
    text: str
    html: str
    attachments: list[str]
    event_ids: list[int]
    next_attempt: datetime | None

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("created", "sent_at", "next_attempt"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


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
    )


def _message(row: OutboxRow) -> OutboxMessage:
    return OutboxMessage(
        id=row.id,
        created=row.created,
        to=[a for a in row.to.split(",") if a.strip()] if row.to else [],
        subject=row.subject,
        status=row.status,
        attempts=row.attempts,
        last_error=row.last_error,
        sent_at=row.sent_at,
        text=row.text,
        html=row.html,
        attachments=list(row.attachments or []),
        event_ids=list(row.event_ids or []),
        next_attempt=row.next_attempt,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def _minute(t: datetime) -> datetime:
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def _explain(exc: BaseException) -> str:
    """A short, human message for a database or file error."""
    text = str(getattr(exc, "orig", None) or exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        return f"database is locked by another program (still busy after waiting): {text}"
    if "disk" in low and ("full" in low or "i/o" in low) or "no space" in low:
        return f"disk full: {text}"
    if "readonly" in low or "read-only" in low:
        return f"database is read-only: {text}"
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------ statistics buffer

_COUNT_KEYS = ("people", "masked", "unmasked", "incorrect", "uncertain", "man", "woman")
_MASK_KEY = {"mask": "masked", "no_mask": "unmasked", "incorrect": "incorrect", "uncertain": "uncertain"}


class _MinuteAccumulator:
    """People seen by one camera in one minute: distinct tracks (latest label wins) plus, for faces
    without a track id, the most seen in any single frame."""

    def __init__(self) -> None:
        self.tracks: dict[int, tuple[str, str]] = {}
        self.untracked: Counter = Counter()
        self.flushed: Counter = Counter()

    def add(self, result: FrameResult) -> None:
        untracked: Counter = Counter()
        for f in result.faces:
            if f.track_id is not None:
                self.tracks[f.track_id] = (f.mask.label, f.gender.label)
            else:
                _count(untracked, f.mask.label, f.gender.label)
        if untracked["people"] > self.untracked["people"]:
            self.untracked = untracked

    def counts(self) -> Counter:
        c = Counter(self.untracked)
        for mask, gender in self.tracks.values():
            _count(c, mask, gender)
        return c


def _count(c: Counter, mask: str, gender: str) -> None:
    c["people"] += 1
    c[_MASK_KEY[mask]] += 1
    if gender in ("man", "woman"):
        c[gender] += 1


def _with_compliance(d: dict[str, int]) -> dict[str, Any]:
    """Compliance = masked / (masked + unmasked + incorrect): a mask worn incorrectly does not comply."""
    decided = d["masked"] + d["unmasked"] + d["incorrect"]
    return {**d, "compliance": (d["masked"] / decided) if decided else None}


# ---------------------------------------------------------------------------------------------- store


class Store:
    """The one database of maskwatch. Thread-safe: each call uses its own short session."""

    def __init__(
        self, url: str, *, snapshots_dir: Path, busy_timeout_s: float = 5.0, flush_every_s: float = 10.0
    ):
        self.url = url
        self.snapshots_dir = Path(snapshots_dir)
        self.flush_every_s = flush_every_s
        self._lock = threading.Lock()  # the in-memory statistics buffer
        self._flush_lock = threading.Lock()  # one statistics flush at a time (deltas must not be added twice)
        self._minutes: dict[tuple[str, datetime], _MinuteAccumulator] = {}
        self._last_flush = utcnow()
        self._hasher = PasswordHasher()
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": busy_timeout_s, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self.engine = create_engine(url, **kwargs)
        except Exception as exc:  # bad URL, missing driver
            raise StoreError(f"cannot open database {url!r}: {exc}") from exc
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._check_schema()

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

    # -- plumbing

    def _run(self, what: str, fn: Callable[[Session], Any]) -> Any:
        """Run `fn(session)` in one transaction; database errors become StoreError."""
        try:
            with self._session() as session, session.begin():
                return fn(session)
        except SQLAlchemyError as exc:
            msg = f"{what} failed: {_explain(exc)}"
            raise StoreError(msg) from exc

    def _check_schema(self) -> None:
        def check(session: Session) -> None:
            Base.metadata.create_all(session.connection())
            row = session.get(MetaRow, "schema_version")
            if row is None:
                session.add(MetaRow(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            version = int(row.value)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database schema version {version} is newer than this maskwatch understands "
                    f"({SCHEMA_VERSION}); upgrade maskwatch or use another database"
                )
            while version < SCHEMA_VERSION:
                log.warning("migrating database schema %d -> %d", version, version + 1)
                _MIGRATIONS[version](session.connection())
                version += 1
            row.value = str(version)

        self._run("opening the database", check)

    def schema_version(self) -> int:
        row = self._run("reading the schema version", lambda s: s.get(MetaRow, "schema_version"))
        if row is None:
            raise StoreError("the database has no schema version")
        return int(row.value)

    def ping(self) -> None:
        """Raise StoreError unless the database can be written."""
        self._run(
            "writing to the database", lambda s: s.merge(MetaRow(key="ping", value=utcnow().isoformat()))
        )

    # -- statistics

    def record_frame(
        self, camera: str, result: FrameResult, *, at: datetime | None = None, flush: bool = True
    ) -> None:
        """Count the people of one frame into its camera-minute (`at`, default now). Each track counts
        once per minute, with its latest labels. Buffered in memory and written when the minute ends or
        every `flush_every_s` (with `flush=False` only by `flush_stats`, e.g. from another thread); a
        failed write is kept and retried (StoreError is raised to the caller)."""
        at = at or utcnow()
        key = (camera, _minute(at))
        with self._lock:
            acc = self._minutes.get(key)
            if acc is None:
                acc = self._minutes[key] = _MinuteAccumulator()
            acc.add(result)
            due = len(self._minutes) > 1 or (at - self._last_flush).total_seconds() >= self.flush_every_s
        if due and flush:
            self.flush_stats(now=at)

    def flush_stats(self, *, now: datetime | None = None) -> None:
        """Write buffered statistics; finished minutes leave the buffer once written."""
        with self._flush_lock:
            self._flush_stats(now or utcnow())

    def _flush_stats(self, now: datetime) -> None:
        with self._lock:
            self._last_flush = now
            pending = [(key, acc, acc.counts()) for key, acc in self._minutes.items()]
        if not pending:
            return
        current = _minute(now)

        def write(session: Session) -> None:
            for (camera, minute), acc, counts in pending:
                delta = {k: counts[k] - acc.flushed[k] for k in _COUNT_KEYS}
                if not any(delta.values()):
                    continue
                row = session.get(MinuteRow, (camera, minute))
                if row is None:
                    row = MinuteRow(camera=camera, minute=minute, **dict.fromkeys(_COUNT_KEYS, 0))
                    session.add(row)
                for k, v in delta.items():
                    setattr(row, k, getattr(row, k) + v)

        self._run("saving statistics", write)
        with self._lock:
            for (camera, minute), acc, counts in pending:
                acc.flushed = counts
                if minute < current and self._minutes.get((camera, minute)) is acc:
                    del self._minutes[(camera, minute)]

    def stats(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        camera: str | None = None,
        bucket: str = "hour",
    ) -> dict:
        """Totals per time bucket ("minute", "hour" or "day", UTC), per camera and overall. People are
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
            t = r.minute
            if bucket in ("hour", "day"):
                t = t.replace(minute=0)
            if bucket == "day":
                t = t.replace(hour=0)
            values = {k: getattr(r, k) for k in _COUNT_KEYS}
            buckets.setdefault(t, Counter()).update(values)
            per_camera.setdefault(r.camera, Counter()).update(values)
            totals.update(values)

        def full(c: Counter) -> dict[str, Any]:
            return _with_compliance({k: c[k] for k in _COUNT_KEYS})

        return {
            "bucket": bucket,
            "buckets": [{"t": t.isoformat(), **full(c)} for t, c in sorted(buckets.items())],
            "per_camera": {cam: full(c) for cam, c in sorted(per_camera.items())},
            "totals": full(totals),
        }

    # -- events

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
                self._queue(session, draft, [row.id], time)
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

    def iter_events(self, *, camera=None, since=None, until=None, batch: int = 1000) -> Iterable[Event]:
        """All matching events oldest first, read in batches (for exports)."""
        last: int | None = 0  # read events always have an id

        def read(session: Session) -> list[Event]:  # the batch after event id `last`
            q = self._events_query(camera, since, until, None).where(EventRow.id > last)
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

    def cameras(self) -> list[str]:
        def read(session: Session) -> list[str]:
            names = set(session.scalars(select(EventRow.camera).distinct()))
            names |= set(session.scalars(select(MinuteRow.camera).distinct()))
            return sorted(names)

        with self._lock:
            names = {cam for cam, _ in self._minutes}
        return sorted(names | set(self._run("reading cameras", read)))

    # -- mail outbox

    def _queue(self, session: Session, draft: MailDraft, event_ids: list[int], now: datetime) -> OutboxRow:
        row = OutboxRow(
            created=now,
            to=",".join(draft.to),
            subject=draft.subject,
            text=draft.text,
            html=draft.html,
            attachments=list(draft.attachments),
            event_ids=list(event_ids),
            status="queued",
            attempts=0,
            next_attempt=min(now, utcnow()),  # due at once (`now` may be a simulated clock ahead of ours)
        )
        session.add(row)
        session.flush()
        return row

    def queue_mail(
        self, draft: MailDraft, *, event_ids: Iterable[int] = (), now: datetime | None = None
    ) -> int:
        """Put an email in the outbox (status queued); its events' mail_status becomes queued."""
        now = now or utcnow()
        ids = list(event_ids)

        def write(session: Session) -> int:
            row = self._queue(session, draft, ids, now)
            if ids:
                session.execute(update(EventRow).where(EventRow.id.in_(ids)).values(mail_status="queued"))
            return row.id

        return self._run("queueing an email", write)

    def list_outbox(
        self, *, status: str | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[OutboxMessage], int]:
        q = select(OutboxRow)
        if status:
            q = q.where(OutboxRow.status == status)

        def read(session: Session):
            total = session.scalar(select(func.count()).select_from(q.subquery()))
            rows = session.scalars(q.order_by(OutboxRow.id.desc()).offset(offset).limit(limit))
            return [_message(r) for r in rows], int(total or 0)

        return self._run("reading the outbox", read)

    def get_message(self, message_id: int) -> OutboxMessage | None:
        return self._run("reading the outbox", lambda s: (r := s.get(OutboxRow, message_id)) and _message(r))

    def due_messages(self, now: datetime | None = None, limit: int = 20) -> list[OutboxMessage]:
        """Queued messages whose next attempt is due, oldest first."""
        now = now or utcnow()
        q = (
            select(OutboxRow)
            .where(OutboxRow.status == "queued", OutboxRow.next_attempt <= now)
            .order_by(OutboxRow.id)
            .limit(limit)
        )
        return self._run("reading the outbox", lambda s: [_message(r) for r in s.scalars(q)])

    def claim_message(self, message_id: int) -> bool:
        """Mark a queued message `sending` (attempts + 1). True if this caller got it: only one sender
        can, so a message is handed to SMTP at most once even with several workers."""

        def write(session: Session) -> bool:
            claim = (
                update(OutboxRow)
                .where(OutboxRow.id == message_id, OutboxRow.status == "queued")
                .values(
                    status="sending", attempts=OutboxRow.attempts + 1, next_attempt=utcnow()
                )  # claim time
            )
            return _changed(session, claim) == 1

        return self._run("claiming an email", write)

    def finish_message(
        self,
        message_id: int,
        *,
        status: str,
        error: str | None = None,
        next_attempt: datetime | None = None,
        now: datetime | None = None,
        count_attempt: bool = False,
    ) -> None:
        """Record the outcome of a send: sent, failed, or queued again for `next_attempt`."""
        if status not in MAIL_STATUSES:
            raise ValueError(f"unknown mail status {status!r}")
        now = now or utcnow()

        def write(session: Session) -> None:
            row = session.get(OutboxRow, message_id)
            if row is None:
                return
            row.status = status
            row.last_error = error
            row.next_attempt = next_attempt
            if count_attempt:
                row.attempts += 1
            if status == "sent":
                row.sent_at = now
            if row.event_ids and status in ("sent", "failed"):
                session.execute(
                    update(EventRow).where(EventRow.id.in_(row.event_ids)).values(mail_status=status)
                )

        self._run("updating the outbox", write)

    def recover_interrupted(self, stale_s: float = 0.0) -> int:
        """Messages left `sending` (claimed more than `stale_s` ago) by a crash may or may not have been
        delivered: mark them failed (never resent, so nothing is sent twice). Returns how many."""
        msg = "interrupted while sending (process stopped); not retried so that it is never sent twice"
        cutoff = utcnow() - timedelta(seconds=stale_s)

        def write(session: Session) -> int:
            return _changed(
                session,
                update(OutboxRow)
                .where(OutboxRow.status == "sending", OutboxRow.next_attempt <= cutoff)
                .values(status="failed", last_error=msg),
            )

        return self._run("checking the outbox", write)

    def requeue_now(self, *, now: datetime | None = None) -> int:
        """Make every queued message due now (e.g. after the SMTP settings changed)."""
        now = now or utcnow()
        return self._run(
            "updating the outbox",
            lambda s: _changed(
                s, update(OutboxRow).where(OutboxRow.status == "queued").values(next_attempt=now)
            ),
        )

    def retry_message(self, message_id: int, *, now: datetime | None = None) -> bool:
        """Put a failed message back in the queue (an explicit decision by a person)."""
        now = now or utcnow()
        return self._run(
            "updating the outbox",
            lambda s: (
                _changed(
                    s,
                    update(OutboxRow)
                    .where(OutboxRow.id == message_id, OutboxRow.status == "failed")
                    .values(status="queued", next_attempt=now, attempts=0),
                )
                == 1
            ),
        )

    def count_mail_since(self, since: datetime) -> int:
        """Emails put in the outbox since `since` (for the hourly cap)."""
        return self._run(
            "reading the outbox",
            lambda s: int(
                s.scalar(select(func.count()).select_from(OutboxRow).where(OutboxRow.created >= since)) or 0
            ),
        )

    def digest_events(self) -> list[Event]:
        """Events waiting for the next digest email (mail_status 'digest'), oldest first."""
        q = select(EventRow).where(EventRow.mail_status == "digest").order_by(EventRow.id)
        return self._run("reading events", lambda s: [_event(r) for r in s.scalars(q)])

    # -- users and API tokens

    def add_user(self, name: str, password: str) -> None:
        """Add a user, or set a new password for an existing one (which ends all its sessions)."""
        name = name.strip()
        if not name or len(name) > 100:
            raise ValueError("user name must be 1-100 characters")
        if len(password) < 8:
            raise ValueError("password must have at least 8 characters")
        hashed = self._hasher.hash(password)

        def write(session: Session) -> None:
            row = session.get(UserRow, name)
            if row is None:  # a random first version: a re-created name never revives old cookies
                session.add(
                    UserRow(name=name, password_hash=hashed, created=utcnow(), session_version=_new_version())
                )
            else:
                row.password_hash = hashed
                row.session_version = _new_version(row.session_version)

        self._run("saving a user", write)

    def user_exists(self, name: str) -> bool:
        """Whether `name` (stripped, case-sensitive, as add_user stores it) is a user."""
        return self._run("reading users", lambda s: s.get(UserRow, name.strip()) is not None)

    def session_version(self, name: str) -> int | None:
        """The version a session of `name` must carry to be valid; None when there is no such user."""
        row = self._run("reading users", lambda s: s.get(UserRow, name))
        return None if row is None else row.session_version

    def end_sessions(self, name: str) -> bool:
        """End every session of `name` (logout): its session version changes."""

        def write(session: Session) -> bool:
            row = session.get(UserRow, name)
            if row is not None:
                row.session_version = _new_version(row.session_version)
            return row is not None

        return self._run("ending sessions", write)

    def verify_user(self, name: str, password: str) -> bool:
        row = self._run("reading users", lambda s: s.get(UserRow, name.strip()))
        if row is None:
            self._hasher.hash(password)  # similar time whether or not the user exists
            return False
        try:
            return self._hasher.verify(row.password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def list_users(self) -> list[str]:
        return self._run(
            "reading users", lambda s: list(s.scalars(select(UserRow.name).order_by(UserRow.name)))
        )

    def has_users(self) -> bool:
        return self._run("reading users", lambda s: s.scalar(select(UserRow.name).limit(1)) is not None)

    def delete_user(self, name: str) -> bool:
        """Remove a user with its tokens (its sessions end: it has no session version any more). False
        when there is no such user; ValueError for the last user."""
        name = name.strip()

        def write(session: Session) -> bool:
            names = list(session.scalars(select(UserRow.name).with_for_update()))  # PostgreSQL: rows locked
            if name not in names:
                return False
            if len(names) == 1:
                raise ValueError(f"{name} is the last user and cannot be removed; add another user first")
            session.execute(delete(TokenRow).where(TokenRow.user == name))
            return _changed(session, delete(UserRow).where(UserRow.name == name)) == 1

        return self._run("deleting a user", write)

    def create_token(self, user: str, label: str = "", *, expires_in: timedelta | None = None) -> str:
        """A new API token for `user` (valid for `expires_in`, None: until revoked); only its SHA-256 is
        stored, so show it once."""
        token = "mw_" + secrets.token_urlsafe(32)
        now = utcnow()
        if expires_in is not None and expires_in <= timedelta(0):
            raise ValueError("a token's lifetime must be positive")
        expires_at = None if expires_in is None else now + expires_in

        def write(session: Session) -> None:
            if session.get(UserRow, user) is None:
                raise ValueError(f"no such user: {user!r}")
            row = TokenRow(token_hash=_sha256(token), user=user, label=label, created=now)
            row.expires_at = expires_at
            session.add(row)

        self._run("saving a token", write)
        return token

    def verify_token(self, token: str, *, now: datetime | None = None) -> str | None:
        """The user a valid (known, unexpired) token belongs to, or None. Its last use is written at
        most once per TOKEN_USE_RESOLUTION."""
        now = now or utcnow()
        token_hash = _sha256(token)

        def check(session: Session) -> str | None:
            row = session.get(TokenRow, token_hash)
            if row is None or (row.expires_at is not None and row.expires_at <= now):
                return None
            if row.last_used_at is None or now - row.last_used_at >= TOKEN_USE_RESOLUTION:
                row.last_used_at = now
            return row.user

        return self._run("reading tokens", check)

    def list_tokens(self, user: str | None = None) -> list[TokenInfo]:
        """Tokens (all, or `user`'s), oldest first; never their secret (only its hash is stored)."""
        q = select(TokenRow).order_by(TokenRow.created, TokenRow.token_hash)
        if user is not None:
            q = q.where(TokenRow.user == user)
        return self._run("reading tokens", lambda s: [_token_info(r) for r in s.scalars(q)])

    def revoke_token(self, token_or_id: str, *, user: str | None = None) -> bool:
        """Delete a token, given by its ID (TokenInfo.id) or by the token itself; only `user`'s when
        given. False when nothing matched."""
        key = token_or_id.strip().lower()
        if TOKEN_ID_RE.fullmatch(key):
            where = TokenRow.token_hash.startswith(key)  # hex digits only: no LIKE wildcards
        else:
            where = TokenRow.token_hash == _sha256(token_or_id.strip())
        q = delete(TokenRow).where(where)
        if user is not None:
            q = q.where(TokenRow.user == user)
        return self._run("deleting a token", lambda s: _changed(s, q) >= 1)

    # -- settings edited in the app

    def get_setting_overrides(self) -> dict:
        row = self._run("reading settings", lambda s: s.get(SettingRow, "overrides"))
        return dict(row.value) if row else {}

    def set_setting_overrides(self, overrides: dict) -> None:
        value = json.loads(json.dumps(overrides, default=str))  # JSON-safe (paths become strings)
        self._run("saving settings", lambda s: s.merge(SettingRow(key="overrides", value=value)))

    # -- retention

    def purge_older_than(self, days: int, *, now: datetime | None = None) -> int:
        """Delete events older than `days` with their snapshot files, statistics minutes and finished
        outbox messages older than that. Returns the number of events deleted."""
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


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


TOKEN_ID_LEN = 12  # a token's public ID: the first hex digits of its hash (reveals nothing of the token)
TOKEN_ID_RE = re.compile(f"[0-9a-f]{{{TOKEN_ID_LEN}}}")
TOKEN_USE_RESOLUTION = timedelta(minutes=1)  # last_used_at is written at most this often per token


@dataclass(frozen=True)
class TokenInfo:
    """An API token as listed (CLI, settings page): never its secret."""

    id: str
    user: str
    label: str
    created: datetime
    last_used_at: datetime | None
    expires_at: datetime | None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or utcnow())


def _token_info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        row.token_hash[:TOKEN_ID_LEN], row.user, row.label, row.created, row.last_used_at, row.expires_at
    )


def _new_version(old: int | None = None) -> int:
    """A random session version other than `old`."""
    while True:
        v = secrets.randbelow(2**31 - 1) + 1
        if v != old:
            return v


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()
