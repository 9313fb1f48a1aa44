"""Webhooks: each stored alert event POSTed as signed JSON to every `[[webhooks]]` entry
(docs/integrations.md).

    AlertEngine writer thread ─on_stored─▶ webhook_deliveries (store, one row per webhook)
                                              ▲ │ due rows
                                              │ ▼
                          outcome ◀── delivery thread ──POST──▶ webhook

The video loop never waits: the alert engine's writer thread (already writing the event) adds the
delivery rows; this module's thread sends them. Persistent and at least once: a row stays `queued`
until a 2xx answer (`sent`), a 4xx other than 408/429 (`failed` at once) or `max_attempts` tries
(`failed`). Before each POST the row's next attempt is moved to the backoff time, so a delivery
interrupted by a crash or stop is sent again then, also after a restart (a webhook may then see a
delivery twice: dedupe on `X-Maskwatch-Delivery` or the event `id`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from datetime import timedelta
from typing import Any

import httpx

from maskwatch.config import Settings, WebhookSettings
from maskwatch.integrations.payload import event_payload
from maskwatch.store import Event, Store
from maskwatch.store.base import StoreError, utcnow
from maskwatch.store.webhooks import WebhookDelivery

log = logging.getLogger(__name__)

RETRY_INITIAL_S = 5.0  # like the mail outbox: 5 s doubling up to 1 h
RETRY_MAX_S = 3600.0
MAX_ATTEMPTS = 8
TICK_S = 1.0  # the delivery thread looks for due rows this often (and when woken by a new event)
SIGNATURE_HEADER = "X-Maskwatch-Signature"
MAX_ERROR_LEN = 500


def signature(secret: str, body: bytes) -> str:
    """The X-Maskwatch-Signature header value: `sha256=` + hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff_s(attempt: int, initial_s: float = RETRY_INITIAL_S, max_s: float = RETRY_MAX_S) -> float:
    """The wait after failed attempt number `attempt` (1, 2, ...): initial_s doubling up to max_s."""
    return min(max_s, initial_s * 2 ** max(0, attempt - 1))


class WebhookWorker:
    """Queues stored alert events for every configured webhook (`on_event`, the AlertEngine `on_stored`
    hook) and delivers the queue from the store in its own thread. `start()` / `stop()`;
    `update_settings()` applies a new webhook list (deliveries to a removed webhook fail)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        retry_initial_s: float | None = None,
        retry_max_s: float | None = None,
        max_attempts: int | None = None,
        tick_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.retry_initial_s = RETRY_INITIAL_S if retry_initial_s is None else retry_initial_s
        self.retry_max_s = RETRY_MAX_S if retry_max_s is None else retry_max_s
        self.max_attempts = MAX_ATTEMPTS if max_attempts is None else max_attempts
        self.tick_s = TICK_S if tick_s is None else tick_s
        self.health: dict[str, Any] = {"sent": 0, "failed": 0, "retries": 0, "last_error": None}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(follow_redirects=False)

    # -- the alert engine side (its writer thread)

    def on_event(self, ev: Event) -> None:
        """Queue a stored event for every webhook (rows in the store); never raises."""
        hooks = list(self.settings.webhooks)
        if not hooks or ev.id is None:
            return
        payload = event_payload(ev, self.settings)
        try:
            self.store.queue_webhooks(ev.id, [(w.key, payload) for w in hooks])
        except StoreError as exc:
            log.error("webhooks: event %s not queued: %s", ev.id, exc)
            return
        self._wake.set()

    # -- control

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="maskwatch-webhooks", daemon=True)
        self._thread.start()

    def update_settings(self, settings: Settings) -> None:
        self.settings = settings
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self._client.close()

    # -- the delivery thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while not self._stop.is_set() and self.deliver_due():
                    pass
            except Exception as exc:  # noqa: BLE001 - keep delivering whatever one round did
                self.health["last_error"] = str(exc)
                log.error("webhook worker error: %s", exc, exc_info=True)
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def deliver_due(self) -> int:
        """Try every due delivery once; how many were tried."""
        hooks = {w.key: w for w in self.settings.webhooks}
        n = 0
        for d in self.store.due_webhooks():
            if self._stop.is_set():
                break
            hook = hooks.get(d.webhook)
            if hook is None:
                self.store.finish_webhook(d.id, status="failed", error="webhook no longer configured")
                self.health["failed"] += 1
                continue
            retry_at = utcnow() + timedelta(
                seconds=backoff_s(d.attempts + 1, self.retry_initial_s, self.retry_max_s)
            )
            if not self.store.claim_webhook(d.id, d.attempts, retry_at):
                continue  # another worker has it
            n += 1
            self._attempt(d, hook, d.attempts + 1, retry_at)
        return n

    def _attempt(self, d: WebhookDelivery, hook: WebhookSettings, attempt: int, retry_at) -> None:
        body = json.dumps(d.payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "maskwatch-webhook",
            "X-Maskwatch-Event": "alert",
            "X-Maskwatch-Delivery": str(d.id),
        }
        if hook.secret:
            headers[SIGNATURE_HEADER] = signature(hook.secret, body)
        retry = True
        try:
            r = self._client.post(hook.url, content=body, headers=headers, timeout=hook.timeout_s)
            if 200 <= r.status_code < 300:
                self.store.finish_webhook(d.id, status="sent")
                self.health["sent"] += 1
                return
            error = f"HTTP {r.status_code}"
            retry = r.status_code >= 500 or r.status_code in (408, 429) or r.status_code < 400
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        error = error.replace(hook.secret, "***") if hook.secret else error
        error = error[:MAX_ERROR_LEN]
        self.health["last_error"] = f"{hook.key}: {error}"
        if retry and attempt < self.max_attempts:
            self.health["retries"] += 1
            log.warning("webhook %s: delivery %d attempt %d: %s; retrying", hook.key, d.id, attempt, error)
            self.store.finish_webhook(d.id, status="queued", error=error, next_attempt=retry_at)
        else:
            self.health["failed"] += 1
            log.error(
                "webhook %s: delivery %d failed after %d attempt(s): %s", hook.key, d.id, attempt, error
            )
            self.store.finish_webhook(d.id, status="failed", error=error)
