"""Email: composing alert messages, SMTP (STARTTLS / SSL / plain, with auth), the outbox worker.

Every email goes through the persistent outbox (the `outbox` table). `MailWorker` is a background thread
that sends due messages with retries and exponential backoff. A message is marked `sending` in the
database *before* it is handed to the SMTP server, and only one worker can claim it, so it is sent at
most once: if the process dies in the middle of a send, the message is marked failed on the next start
("interrupted") instead of being sent a second time. Without SMTP configured, messages stay queued and
are visible in the app; they go out once a host is configured.

Example (no server needed: without SMTP settings nothing is sent):
    >>> import tempfile
    >>> from pathlib import Path
    >>> from maskwatch.config import Settings
    >>> from maskwatch.store import MailDraft, Store
    >>> d = Path(tempfile.mkdtemp())
    >>> store = Store(f"sqlite:///{d / 'm.db'}", snapshots_dir=d / "snap")
    >>> _ = store.queue_mail(MailDraft(subject="hello", text="hi", html="<p>hi</p>"))
    >>> MailWorker(Settings(data_dir=d), store).send_pending_once()
    0
    >>> store.list_outbox()[0][0].status
    'queued'
    >>> store.close()
"""

from __future__ import annotations

import contextlib
import email.policy
import html
import logging
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr

from maskwatch.config import Settings, SmtpSettings
from maskwatch.store import Event, MailDraft, OutboxMessage, Store, StoreError, utcnow

log = logging.getLogger(__name__)

MAX_DIGEST_ATTACHMENTS = 10
SMTP_POLICY = email.policy.SMTP.clone(cte_type="7bit")  # CRLF; non-ASCII text goes base64 / quoted-printable


class MailError(RuntimeError):
    """An SMTP problem, with a message meant for a person."""

    def __init__(
        self, message: str, *, permanent: bool = False, maybe_sent: bool = False, broken: bool = False
    ):
        super().__init__(message)
        self.permanent = permanent  # retrying cannot help (e.g. the server rejected the recipients)
        self.maybe_sent = maybe_sent  # the connection broke mid-message: it may have been delivered
        self.broken = broken or maybe_sent  # the connection is unusable


# ----------------------------------------------------------------------------------------- composing


def event_url(settings: Settings, event: Event) -> str:
    return f"{settings.alerts.base_url.rstrip('/')}/events/{event.id}"


# what an alert label means, in emails: (subject words, "a person was seen ...", the Mask row)
FINDINGS = {
    "no_mask": ("No mask", "without a mask", "no mask"),
    "incorrect": (
        "Mask worn incorrectly",
        "wearing a mask incorrectly (nose or mouth uncovered)",
        "mask worn incorrectly, nose or mouth uncovered",
    ),
}


def _finding(event: Event) -> tuple[str, str, str]:
    return FINDINGS.get(event.mask_label, FINDINGS["no_mask"])


def _event_lines(settings: Settings, event: Event) -> list[tuple[str, str]]:
    local = event.time.astimezone()
    rows = [
        ("Time", local.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("Camera", event.camera),
        ("Mask", f"{_finding(event)[2]} (confidence {event.mask_confidence:.0%})"),
    ]
    if settings.privacy.gender_enabled and event.gender_label and event.gender_label != "uncertain":
        rows.append(("Apparent gender", f"{event.gender_label} (confidence {event.gender_confidence:.0%})"))
    if event.track_id is not None:
        rows.append(("Person (track)", str(event.track_id)))
    rows.append(("Event", event_url(settings, event)))
    return rows


def compose_alert(settings: Settings, event: Event) -> MailDraft:
    """The email for one alert event (plain text + HTML; the snapshot is attached at send time)."""
    local = event.time.astimezone()
    title, seen, _ = _finding(event)
    subject = f"[maskwatch] {title}: {event.camera} at {local.strftime('%H:%M:%S')}"
    rows = _event_lines(settings, event)
    text = f"A person was seen {seen}.\n\n" + "".join(f"{k}: {v}\n" for k, v in rows)
    if event.snapshot:
        text += "\nThe snapshot is attached.\n"
    html_rows = "".join(
        f"<tr><th align='left'>{html.escape(k)}</th><td>{_cell(k, v)}</td></tr>" for k, v in rows
    )
    body = (
        f"<html><body><p>A person was seen <b>{html.escape(seen)}</b>.</p>"
        f"<table cellpadding='4'>{html_rows}</table>"
        + ("<p>The snapshot is attached.</p>" if event.snapshot else "")
        + "</body></html>"
    )
    return MailDraft(
        subject=subject, text=text, html=body, attachments=[event.snapshot] if event.snapshot else []
    )


def compose_digest(settings: Settings, events: list[Event]) -> MailDraft:
    """One email listing several alert events (the first MAX_DIGEST_ATTACHMENTS snapshots attached)."""
    cams = sorted({e.camera for e in events})
    findings = {_finding(e) for e in events}
    if len(findings) == 1:
        title, seen, _ = findings.pop()
    else:  # both kinds: say how many of each
        n = sum(e.mask_label == "incorrect" for e in events)
        title = "No mask or mask worn incorrectly"
        seen = f"without a mask ({len(events) - n}) or wearing one with nose or mouth uncovered ({n})"
    subject = f"[maskwatch] {title}: {len(events)} people ({', '.join(cams)[:80]})"
    text = f"{len(events)} people were seen {seen}.\n"
    html_parts = [f"<html><body><p><b>{len(events)}</b> people were seen <b>{html.escape(seen)}</b>.</p><ol>"]
    for e in events:
        rows = _event_lines(settings, e)
        text += "\n" + "".join(f"  {k}: {v}\n" for k, v in rows)
        cells = "; ".join(f"{html.escape(k)}: {_cell(k, v)}" for k, v in rows)
        html_parts.append(f"<li>{cells}</li>")
    html_parts.append("</ol></body></html>")
    attachments = [e.snapshot for e in events if e.snapshot][:MAX_DIGEST_ATTACHMENTS]
    return MailDraft(subject=subject, text=text, html="".join(html_parts), attachments=attachments)


def _cell(key: str, value: str) -> str:
    return _link(value) if key == "Event" else html.escape(value)


def _link(url: str) -> str:
    u = html.escape(url, quote=True)
    return f"<a href='{u}'>{u}</a>"


def build_message(
    smtp: SmtpSettings, msg: OutboxMessage | MailDraft, store: Store | None, to: list[str]
) -> EmailMessage:
    em = EmailMessage(policy=SMTP_POLICY)
    em["From"] = smtp.sender
    em["To"] = ", ".join(to)
    em["Subject"] = msg.subject
    em["Date"] = formatdate(localtime=True)
    em["Message-ID"] = make_msgid(domain="maskwatch")
    if isinstance(msg, OutboxMessage):
        em["X-Maskwatch-Outbox-Id"] = str(msg.id)
        if msg.event_ids:
            em["X-Maskwatch-Events"] = ",".join(str(i) for i in msg.event_ids)
    em.set_content(msg.text)
    em.add_alternative(msg.html, subtype="html")
    for rel in msg.attachments:
        path = store.snapshots_dir / rel if store else None
        if path is None or not path.is_file():
            log.warning("snapshot %s is gone; sending without it", rel)
            continue
        em.add_attachment(path.read_bytes(), maintype="image", subtype="jpeg", filename=path.name)
    return em


# -------------------------------------------------------------------------------------------- SMTP


def _tls_context(smtp: SmtpSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if smtp.ca_file:
        ctx.load_verify_locations(cafile=str(smtp.ca_file))
    return ctx


def _connect(smtp: SmtpSettings) -> smtplib.SMTP:
    if not smtp.host:
        raise MailError("SMTP is not configured: set smtp.host")
    where = f"{smtp.host}:{smtp.port}"
    try:
        if smtp.security == "ssl":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(
                smtp.host, smtp.port, timeout=smtp.timeout_s, context=_tls_context(smtp)
            )
        else:
            conn = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s)
        try:
            conn.ehlo()
            if smtp.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise MailError(
                        f"SMTP server {where} does not offer STARTTLS (set smtp.security)", permanent=True
                    )
                conn.starttls(context=_tls_context(smtp))
                conn.ehlo()
            if smtp.username:
                conn.login(smtp.username, smtp.password or "")
        except BaseException:
            conn.close()
            raise
        return conn
    except MailError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise MailError(
            f"SMTP authentication failed for user {smtp.username!r} at {where}: "
            f"{exc.smtp_code} {_text(exc.smtp_error)} (check smtp.username / smtp.password)"
        ) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise MailError(f"SMTP server {where} does not support login: {exc}", permanent=True) from exc
    except ssl.SSLError as exc:
        raise MailError(
            f"TLS with SMTP server {where} failed: {exc.reason or exc} (check smtp.security)"
        ) from exc
    except TimeoutError as exc:
        raise MailError(f"SMTP server {where} did not answer within {smtp.timeout_s:g} s") from exc
    except ConnectionRefusedError as exc:
        raise MailError(f"SMTP server {where} refused the connection (is it running?)") from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise MailError(f"cannot reach SMTP server {where}: {exc}") from exc


def _text(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _send(conn: smtplib.SMTP, smtp: SmtpSettings, em: EmailMessage, to: list[str]) -> None:
    """One message over an open connection, step by step, so that a connection that breaks before the
    content went out (not delivered: safe to retry) is told apart from one that breaks after (maybe
    delivered: never retried)."""
    where = f"{smtp.host}:{smtp.port}"
    sender = parseaddr(smtp.sender)[1]
    rcpts = [addr for _name, addr in getaddresses(to)]
    data = em.as_bytes(policy=SMTP_POLICY)
    try:
        conn.ehlo_or_helo_if_needed()
        opts = [f"SIZE={len(data)}"] if conn.does_esmtp and conn.has_extn("size") else []
        code, resp = conn.mail(sender, opts)
        if code != 250:
            _rset(conn)
            raise MailError(
                f"SMTP server {where} refused the sender {smtp.sender!r}: {code} {_text(resp)}",
                permanent=code >= 500,
            )
        refused = {}
        for rcpt in rcpts:
            code, resp = conn.rcpt(rcpt)
            if code not in (250, 251):
                refused[rcpt] = (code, resp)
        if len(refused) == len(rcpts):
            _rset(conn)
            raise MailError(
                f"SMTP server {where} refused all recipients: {_refused(refused)}",
                permanent=all(c >= 500 for c, _ in refused.values()),
            )
        conn.putcmd("data")
        code, resp = conn.getreply()
        if code != 354:
            _rset(conn)
            raise MailError(f"SMTP server {where} refused DATA: {code} {_text(resp)}", permanent=code >= 500)
    except (OSError, smtplib.SMTPException) as exc:  # the content did not go out: certainly not delivered
        raise MailError(
            f"connection to SMTP server {where} broke before sending: {exc}", broken=True
        ) from exc
    try:  # what SMTP.data() does after its 354
        body = re.sub(rb"(?m)^\.", b"..", data)  # dot-stuffing
        conn.send(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        code, resp = conn.getreply()
        if code != 250:
            raise smtplib.SMTPDataError(code, resp)
    except smtplib.SMTPResponseException as exc:  # the server answered with an error: not delivered
        raise MailError(
            f"SMTP server {where} rejected the message: {exc.smtp_code} {_text(exc.smtp_error)}",
            permanent=exc.smtp_code >= 500,
        ) from exc
    except (OSError, smtplib.SMTPException) as exc:  # broken during DATA: delivery unknown
        raise MailError(
            f"connection to SMTP server {where} broke while sending: {exc}", maybe_sent=True
        ) from exc
    if refused:
        log.warning("SMTP server %s refused some recipients: %s", where, _refused(refused))


def _rset(conn: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError, smtplib.SMTPException):
        conn.rset()


def _refused(recipients: dict) -> str:
    return "; ".join(f"{addr}: {code} {_text(msg)}" for addr, (code, msg) in recipients.items())


def send_test_email(settings: Settings, to: str | None = None) -> None:
    """Send one test email right now (not via the outbox). Raises MailError with a clear message."""
    smtp = settings.smtp
    if not smtp.host:
        raise MailError("SMTP is not configured: set smtp.host (and smtp.recipients) in the config file")
    recipients = [to] if to else list(smtp.recipients)
    if not recipients:
        raise MailError("no recipient: give --to ADDR or set smtp.recipients")
    draft = MailDraft(
        subject="[maskwatch] Test email",
        text=f"This is a test email from maskwatch ({settings.alerts.base_url}). SMTP works.\n",
        html=f"<html><body><p>This is a test email from maskwatch ({html.escape(settings.alerts.base_url)}). "
        "SMTP works.</p></body></html>",
    )
    conn = _connect(smtp)
    try:
        _send(conn, smtp, build_message(smtp, draft, None, recipients), recipients)
    finally:
        _quit(conn)


def _quit(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        conn.close()


# ------------------------------------------------------------------------------------------ worker


class MailWorker:
    """Sends the persistent outbox in a background thread; also builds digests and runs retention."""

    RETENTION_EVERY_S = 3600.0

    def __init__(
        self, settings: Settings, store: Store, *, poll_s: float = 2.0, clock: Callable[[], float] = time.time
    ):
        self.settings = settings
        self.store = store
        self.poll_s = poll_s
        self.clock = clock  # for digest timing (the same clock as the AlertEngine's)
        self.health: dict = {
            "mail_ok": None,
            "mail_error": None,
            "last_sent": None,
            "queued": None,
            "send_failures": 0,  # messages not delivered on an attempt (connection or send failed)
        }
        self._lock = threading.Lock()  # one send_pending_once at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_retention: datetime | None = None
        self.recover_interrupted()

    def recover_interrupted(self) -> int:
        """Mark failed the messages some worker claimed but never finished (it died mid-send) once they
        are older than any send could take; they are never resent (at most once)."""
        try:
            n = self.store.recover_interrupted(stale_s=self.stale_s)
        except StoreError as exc:
            log.error("cannot check the outbox: %s", exc)
            return 0
        if n:
            log.error("%d email(s) were interrupted mid-send by a stop; marked failed (not resent)", n)
        return n

    @property
    def stale_s(self) -> float:
        return 4 * self.settings.smtp.timeout_s + 30

    def update_settings(self, settings: Settings) -> None:
        """New settings (e.g. from the settings page): queued messages are tried again right away."""
        self.settings = settings
        try:
            self.store.requeue_now()
        except StoreError as exc:
            log.error("cannot update the outbox: %s", exc)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="maskwatch-mail", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.send_pending_once()
                self._maybe_retention()
                self.recover_interrupted()
            except Exception:  # never let the thread die
                log.exception("mail worker error")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _maybe_retention(self) -> None:
        now = utcnow()
        if self._last_retention and (now - self._last_retention).total_seconds() < self.RETENTION_EVERY_S:
            return
        self._last_retention = now
        try:
            self.store.purge_older_than(self.settings.privacy.retention_days)
        except StoreError as exc:
            log.error("retention job failed: %s", exc)

    def queue_digest_if_due(self) -> int | None:
        """In digest mode, put one email listing the waiting events in the outbox once the oldest has
        waited `digest_minutes`. Returns the outbox id, or None."""
        a = self.settings.alerts
        events = self.store.digest_events()
        if not events:
            return None
        now = datetime.fromtimestamp(self.clock(), UTC)
        if a.digest_minutes > 0 and (now - events[0].time).total_seconds() < a.digest_minutes * 60:
            return None
        if self.store.count_mail_since(now - timedelta(hours=1)) >= a.max_emails_per_hour:
            return None  # the hourly cap: the events wait for the next digest
        draft = compose_digest(self.settings, events)
        return self.store.queue_mail(draft, event_ids=[e.id for e in events if e.id is not None], now=now)

    def send_pending_once(self, batch: int = 50) -> int:
        """Send every due message once (over one connection per `batch`). Returns how many were sent.
        Never raises for SMTP problems (they are recorded on the message and in `health`)."""
        total = 0
        while True:
            sent, more = self._send_batch(batch)
            total += sent
            if not more or not sent:
                return total

    def _send_batch(self, batch: int) -> tuple[int, bool]:
        with self._lock:
            try:
                self.queue_digest_if_due()
                due = self.store.due_messages(limit=1)  # a look only: nothing due, no connection
            except StoreError as exc:
                self.health.update(mail_ok=False, mail_error=str(exc))
                log.error("mail worker: %s", exc)
                return 0, False
            smtp = self.settings.smtp
            if not due or not smtp.host:
                return 0, False
            try:
                conn = _connect(smtp)
            except MailError as exc:
                again = self.health["mail_error"] == str(exc)
                log.log(logging.DEBUG if again else logging.ERROR, "email not sent: %s", exc)
                self.health.update(mail_ok=False, mail_error=str(exc))
                try:
                    claimed = self.store.claim_due(batch)  # each counts this failed attempt
                except StoreError as store_exc:
                    log.error("mail worker: %s", store_exc)
                    return 0, False
                self.health["send_failures"] += len(claimed)
                for msg in claimed:
                    self._retry_later(msg, str(exc), permanent=exc.permanent)
                return 0, False
            sent = tried = 0
            try:
                while tried < batch:
                    try:
                        # one at a time, claimed just before it is handed to SMTP: a crash leaves at
                        # most this one in doubt, and other workers take the next ones meanwhile
                        claimed = self.store.claim_due(1)
                        if not claimed:
                            break
                        tried += 1
                        result = self._send_one(conn, claimed[0])
                    except StoreError as exc:
                        self.health.update(mail_ok=False, mail_error=str(exc))
                        log.error("mail worker: %s", exc)
                        break
                    sent += result == "sent"
                    if result == "broken":
                        break  # the rest stay queued for the next round
            finally:
                _quit(conn)
            return sent, tried == batch

    def _send_one(self, conn: smtplib.SMTP, msg: OutboxMessage) -> str:
        """Send a message this worker has claimed: "sent", "error" (recorded on the message) or
        "broken" (the connection is unusable)."""
        smtp = self.settings.smtp
        to = msg.to or list(smtp.recipients)
        if not to:
            later = utcnow() + timedelta(seconds=smtp.retry_initial_s)
            self.store.release_message(
                msg.id, error="no recipients configured (set smtp.recipients)", next_attempt=later
            )
            return "error"
        em = build_message(smtp, msg, self.store, to)
        try:
            _send(conn, smtp, em, to)
        except MailError as exc:
            log.error("email %d not sent: %s", msg.id, exc)
            self.health.update(mail_ok=False, mail_error=str(exc))
            self.health["send_failures"] += 1
            if exc.maybe_sent:
                self.store.finish_message(
                    msg.id, status="failed", error=f"{exc} (may have been delivered; not retried)"
                )
            else:
                self._retry_later(msg, str(exc), permanent=exc.permanent)
            return "broken" if exc.broken else "error"
        try:
            self.store.finish_message(msg.id, status="sent")
        except StoreError as exc:  # sent, but left 'sending': never resent (marked failed on restart)
            log.error("email %d was sent but the outbox could not be updated: %s", msg.id, exc)
        self.health.update(mail_ok=True, mail_error=None, last_sent=utcnow().isoformat())
        log.info("email %d sent to %s: %s", msg.id, ", ".join(to), msg.subject)
        return "sent"

    def _retry_later(self, msg: OutboxMessage, error: str, *, permanent: bool = False) -> None:
        """A claimed message whose attempt failed: queued again after a back-off, or failed for good
        (a permanent error, or `smtp.max_attempts` reached; its claim counted the attempt)."""
        smtp = self.settings.smtp
        n = msg.attempts
        try:
            if permanent or n >= smtp.max_attempts:
                why = "permanent error" if permanent else f"gave up after {n} attempts"
                self.store.finish_message(msg.id, status="failed", error=f"{error} ({why})")
                return
            delay = min(smtp.retry_max_s, smtp.retry_initial_s * 2 ** max(n - 1, 0))
            self.store.finish_message(
                msg.id, status="queued", error=error, next_attempt=utcnow() + timedelta(seconds=delay)
            )
        except StoreError as exc:
            log.error("cannot update email %d in the outbox: %s", msg.id, exc)
