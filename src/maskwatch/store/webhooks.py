"""The webhook section of the store: one delivery per (alert event, webhook), queued until it is sent,
retried with backoff, or failed (maskwatch.integrations.webhooks sends them)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from maskwatch.store.base import StoreBase, _changed, utcnow
from maskwatch.store.rows import WebhookDeliveryRow

WEBHOOK_STATUSES = ("queued", "sent", "failed")


@dataclass
class WebhookDelivery:
    id: int
    event_id: int
    webhook: str  # WebhookSettings.key (never the secret)
    payload: dict[str, Any]
    status: str  # queued / sent / failed
    attempts: int
    next_attempt: datetime | None
    last_error: str | None
    created: datetime
    sent: datetime | None


def _delivery(row: WebhookDeliveryRow) -> WebhookDelivery:
    return WebhookDelivery(
        id=row.id,
        event_id=row.event_id,
        webhook=row.webhook,
        payload=dict(row.payload or {}),
        status=row.status,
        attempts=row.attempts,
        next_attempt=row.next_attempt,
        last_error=row.last_error,
        created=row.created,
        sent=row.sent,
    )


class WebhooksSection(StoreBase):
    def queue_webhooks(self, event_id: int, items: Iterable[tuple[str, dict[str, Any]]]) -> list[int]:
        """Queue one delivery per (webhook key, payload) of event `event_id`, due at once."""
        now = utcnow()

        def write(session: Session) -> list[int]:
            rows = [
                WebhookDeliveryRow(
                    event_id=event_id,
                    webhook=key,
                    payload=payload,
                    status="queued",
                    attempts=0,
                    next_attempt=now,
                    created=now,
                )
                for key, payload in items
            ]
            session.add_all(rows)
            session.flush()
            return [r.id for r in rows]

        return self._run("queueing webhook deliveries", write)

    def due_webhooks(self, now: datetime | None = None, limit: int = 20) -> list[WebhookDelivery]:
        """Queued deliveries whose next attempt is due, oldest first."""
        q = (
            select(WebhookDeliveryRow)
            .where(
                WebhookDeliveryRow.status == "queued", WebhookDeliveryRow.next_attempt <= (now or utcnow())
            )
            .order_by(WebhookDeliveryRow.id)
            .limit(limit)
        )
        return self._run("reading webhook deliveries", lambda s: [_delivery(r) for r in s.scalars(q)])

    def claim_webhook(self, delivery_id: int, attempts: int, retry_at: datetime) -> bool:
        """Take a due delivery for one attempt: attempts + 1 and its next attempt moved to `retry_at`
        (so a crash during the POST leaves it queued, tried again then: at least once). True when this
        caller got it (`attempts` is what it read; another worker that claimed it first wins)."""
        claim = (
            update(WebhookDeliveryRow)
            .where(
                WebhookDeliveryRow.id == delivery_id,
                WebhookDeliveryRow.status == "queued",
                WebhookDeliveryRow.attempts == attempts,
            )
            .values(attempts=attempts + 1, next_attempt=retry_at)
        )
        return self._run("claiming a webhook delivery", lambda s: _changed(s, claim) == 1)

    def finish_webhook(
        self, delivery_id: int, *, status: str, error: str | None = None, next_attempt: datetime | None = None
    ) -> None:
        """Record an attempt's outcome: sent, failed, or queued again for `next_attempt`."""
        if status not in WEBHOOK_STATUSES:
            raise ValueError(f"unknown webhook status {status!r}")

        def write(session: Session) -> None:
            row = session.get(WebhookDeliveryRow, delivery_id)
            if row is None:
                return
            row.status = status
            row.last_error = error
            row.next_attempt = next_attempt if status == "queued" else None
            if status == "sent":
                row.sent = utcnow()

        self._run("updating a webhook delivery", write)

    def list_webhook_deliveries(
        self, *, status: str | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[WebhookDelivery], int]:
        """Deliveries, newest first, and how many there are."""
        q = select(WebhookDeliveryRow)
        if status:
            q = q.where(WebhookDeliveryRow.status == status)

        def read(session: Session):
            total = session.scalar(select(func.count()).select_from(q.subquery()))
            rows = session.scalars(q.order_by(WebhookDeliveryRow.id.desc()).offset(offset).limit(limit))
            return [_delivery(r) for r in rows], int(total or 0)

        return self._run("reading webhook deliveries", read)
