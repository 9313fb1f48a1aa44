"""The mail outbox section of the store: emails queued, claimed by one sender, sent or failed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Update, func, select, update
from sqlalchemy.orm import Session

from maskwatch.store.base import StoreBase, _changed, utcnow
from maskwatch.store.rows import EventRow, OutboxRow

MAIL_STATUSES = ("queued", "sending", "sent", "failed")


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


def _queue(session: Session, draft: MailDraft, event_ids: list[int], now: datetime) -> OutboxRow:
    """Add a queued message to `session` (also used by add_event, in the event's transaction)."""
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


def _claim(message_id: int) -> Update:
    """queued -> sending, one more attempt, `next_attempt` holding the claim time (for recovery)."""
    return (
        update(OutboxRow)
        .where(OutboxRow.id == message_id, OutboxRow.status == "queued")
        .values(status="sending", attempts=OutboxRow.attempts + 1, next_attempt=utcnow())
    )


class OutboxSection(StoreBase):
    def queue_mail(
        self, draft: MailDraft, *, event_ids: Iterable[int] = (), now: datetime | None = None
    ) -> int:
        """Put an email in the outbox (status queued); its events' mail_status becomes queued."""
        now = now or utcnow()
        ids = list(event_ids)

        def write(session: Session) -> int:
            row = _queue(session, draft, ids, now)
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

    def claim_due(self, limit: int = 1, now: datetime | None = None) -> list[OutboxMessage]:
        """Claim up to `limit` due queued messages, oldest first: each becomes `sending` (attempts + 1,
        claimed now) and is this caller's alone. On PostgreSQL the rows are read `FOR UPDATE SKIP
        LOCKED`, so workers polling one outbox take different messages instead of waiting on each other;
        the conditional update is the guard everywhere (SQLite has no row locks but one writer)."""
        now = now or utcnow()
        due = (
            select(OutboxRow.id)
            .where(OutboxRow.status == "queued", OutboxRow.next_attempt <= now)
            .order_by(OutboxRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )

        def write(session: Session) -> list[OutboxMessage]:
            claimed = []
            for message_id in list(session.scalars(due)):
                if _changed(session, _claim(message_id)) == 1:
                    claimed.append(message_id)
            rows = session.scalars(select(OutboxRow).where(OutboxRow.id.in_(claimed)).order_by(OutboxRow.id))
            return [_message(r) for r in rows]

        return self._run("claiming emails", write)

    def release_message(self, message_id: int, *, error: str, next_attempt: datetime) -> None:
        """Give a claimed message back unsent and without counting the attempt (nothing was tried:
        e.g. no recipients configured); it is due again at `next_attempt`."""
        self._run(
            "updating the outbox",
            lambda s: _changed(
                s,
                update(OutboxRow)
                .where(OutboxRow.id == message_id, OutboxRow.status == "sending")
                .values(
                    status="queued",
                    attempts=OutboxRow.attempts - 1,
                    last_error=error,
                    next_attempt=next_attempt,
                ),
            ),
        )

    def claim_message(self, message_id: int) -> bool:
        """Mark a queued message `sending` (attempts + 1). True if this caller got it: only one sender
        can, so a message is handed to SMTP at most once even with several workers."""
        return self._run("claiming an email", lambda s: _changed(s, _claim(message_id)) == 1)

    def finish_message(
        self,
        message_id: int,
        *,
        status: str,
        error: str | None = None,
        next_attempt: datetime | None = None,
        now: datetime | None = None,
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

    def resend_message(self, message_id: int, *, now: datetime | None = None) -> int | None:
        """Queue a copy of a sent or failed message (same recipients, text and attachments) and return
        its id; the original stays as it was. None when there is no such message."""
        now = now or utcnow()

        def write(session: Session) -> int | None:
            row = session.get(OutboxRow, message_id)
            if row is None:
                return None
            draft = MailDraft(row.subject, row.text, row.html, _message(row).to, list(row.attachments or []))
            return _queue(session, draft, list(row.event_ids or []), now).id

        return self._run("queueing an email", write)

    def count_mail_since(self, since: datetime) -> int:
        """Emails put in the outbox since `since` (for the hourly cap)."""
        return self._run(
            "reading the outbox",
            lambda s: int(
                s.scalar(select(func.count()).select_from(OutboxRow).where(OutboxRow.created >= since)) or 0
            ),
        )
