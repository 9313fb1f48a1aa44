"""A real SMTP server on 127.0.0.1 for development and tests (aiosmtpd, a development dependency).

`SmtpSink` keeps what it receives (optional AUTH and STARTTLS / SSL, dropped connections, rejected
recipients); `free_port` is a free loopback TCP port. Used by tools/simulate_alerts.py and the tests
(pytest puts tools/ on sys.path: `pythonpath` in pyproject.toml).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from email import message_from_bytes, policy
from email.message import EmailMessage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpSink:
    """A real SMTP server on 127.0.0.1 keeping received messages in `.messages`.

    `users` {name: password} turns on AUTH; `tls` = (certfile, keyfile) with `mode` "starttls" or "ssl"
    (with "ssl", AUTH is offered without the STARTTLS check: aiosmtpd does not see implicit TLS).
    """

    def __init__(
        self, port: int | None = None, *, users: dict[str, str] | None = None, tls=None, mode="none"
    ):
        self.port = port or free_port()
        self.users = users
        self.tls, self.mode = tls, mode
        self.messages: list[EmailMessage] = []
        self.drop_after_data = 0  # close the connection after receiving this many next messages
        self.reject: set[str] = set()  # recipient addresses answered with 550
        self.envelopes: list[tuple[str, list[str]]] = []
        self._controller = None
        self._lock = threading.Lock()

    def start(self) -> SmtpSink:
        try:
            from aiosmtpd.controller import Controller
            from aiosmtpd.smtp import AuthResult
        except ImportError as exc:  # a development tool: say what to install, no traceback
            raise SystemExit(
                "the local SMTP server needs aiosmtpd, a development dependency: pip install -e '.[dev]'"
            ) from exc

        sink = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                if address in sink.reject:
                    return "550 5.1.1 no such user"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):
                msg = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
                with sink._lock:
                    sink.messages.append(msg)
                    sink.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
                    drop = sink.drop_after_data > 0
                    sink.drop_after_data -= drop
                if drop:  # kept the message but the client never hears "250": the duplicate trap
                    server.transport.close()
                    return "421 closing"
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                sink.users is not None
                and hasattr(auth_data, "login")
                and sink.users.get(auth_data.login.decode()) == auth_data.password.decode()
            )
            return AuthResult(success=ok, handled=False)

        kwargs: dict = {}
        if self.users is not None:
            kwargs.update(
                authenticator=authenticator, auth_required=True, auth_require_tls=self.mode == "starttls"
            )
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*self.tls)
            if self.mode == "ssl":
                kwargs["ssl_context"] = ctx
            else:
                kwargs.update(tls_context=ctx, require_starttls=True)
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **kwargs)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.messages) >= n:
                return True
            time.sleep(0.02)
        return len(self.messages) >= n

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
