"""What every section of the store shares: the engine, one short transaction per call, errors, time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import create_engine, event
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable


class StoreError(RuntimeError):
    """A database or snapshot-file problem, with a message meant for a person (locked, disk full, ...)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _minute(t: datetime) -> datetime:
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def _changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE; the number of rows it changed."""
    return cast("CursorResult[Any]", session.execute(statement)).rowcount


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


class StoreBase:
    """The engine and its sessions; the sections (events, outbox, statistics, users, settings) build on
    `_run`."""

    def __init__(self, url: str, *, snapshots_dir: Path, busy_timeout_s: float = 5.0):
        self.url = url
        self.snapshots_dir = Path(snapshots_dir)
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

    def _run(self, what: str, fn: Callable[[Session], Any]) -> Any:
        """Run `fn(session)` in one transaction; database errors become StoreError."""
        try:
            with self._session() as session, session.begin():
                return fn(session)
        except SQLAlchemyError as exc:
            msg = f"{what} failed: {_explain(exc)}"
            raise StoreError(msg) from exc


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()
