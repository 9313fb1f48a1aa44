"""Authentication and request safety: cookie sessions, CSRF tokens, login rate limiting, API tokens.

Sessions are signed cookies (Starlette's SessionMiddleware, itsdangerous) holding the user name, the
user's session version and a per-session CSRF token. The version is checked against the store on every
request and WebSocket, so logout, a new password or removing the user ends every session of that user
at once. Browser forms carry the CSRF token in a hidden field, JavaScript sends it in the
`X-CSRF-Token` header; REST clients authenticate with `Authorization: Bearer <token>` instead (tokens
are created on the settings page or with `maskwatch users token`, and checked by the store).

Example:
    >>> lim = LoginLimiter(name_failures=2, address_failures=3, window_s=60)
    >>> lim.fail("1.2.3.4", "admin"); lim.fail("1.2.3.4", "admin")
    >>> lim.name_wait("admin") > 0, lim.address_wait("1.2.3.4"), lim.address_wait("5.6.7.8")
    (True, 0, 0)
    >>> lim.fail("1.2.3.4", "bob"); lim.address_wait("1.2.3.4") > 0
    True
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from fastapi import HTTPException, Request, WebSocket, status
from starlette.requests import HTTPConnection

log = logging.getLogger(__name__)

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
MIN_PASSWORD_LEN = 8


class LoginRequired(Exception):
    """Raised by page dependencies; the app turns it into a redirect to /login."""

    def __init__(self, next_path: str = "/") -> None:
        super().__init__(next_path)
        self.next_path = next_path


def load_secret_key(configured: str | None, data_dir: Path) -> str:
    """The configured secret, else one generated once and kept (mode 0600) in the data directory."""
    if configured:
        return configured
    path = Path(data_dir) / "secret_key"
    if path.is_file():
        key = path.read_text().strip()
        if len(key) >= 32:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(key)
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


def csrf_token(request: Request) -> str:
    """The session's CSRF token (created on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def check_csrf(request: Request, submitted: str | None) -> None:
    expected = request.session.get("csrf")
    if not expected or not submitted or not hmac.compare_digest(str(expected), str(submitted)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "CSRF token missing or invalid; reload the page")


_USER_KEY = "maskwatch.session_user"  # scope key: the checked session user of this request


SESSION_RECHECK_S = 5.0


def session_user(conn: Request | WebSocket) -> str | None:
    """The signed-in user, when the session cookie names a user whose session version it still carries
    (a session ended by logout, a new password or the user's removal is cleared here)."""
    if "session" not in conn.scope:
        return None
    if _USER_KEY in conn.scope:
        return conn.scope[_USER_KEY]
    user, version = conn.session.get("user"), conn.session.get("sv")
    valid: str | None = None
    if isinstance(user, str) and user and isinstance(version, int):
        from maskwatch.store import StoreError

        try:
            current = conn.app.state.runtime.store.session_version(user)
        except StoreError as exc:
            log.error("session not checked: %s", exc)
            current = None
        valid = user if current is not None and current == version else None
    if valid is None and user is not None:
        conn.session.clear()  # an ended session: its cookie is dropped with this response
    conn.scope[_USER_KEY] = valid
    return valid


def session_still_valid(conn: Request | WebSocket, user: str) -> bool:
    """For a long-lived connection (a WebSocket) of `user`: has its session not been ended since it
    connected (logout, a new password, the user removed)? Asked every `SESSION_RECHECK_S`."""
    from maskwatch.store import StoreError

    try:
        return conn.session.get("sv") == conn.app.state.runtime.store.session_version(user)
    except StoreError as exc:  # the database is unavailable: not a reason to cut a live view
        log.error("session not re-checked: %s", exc)
        return True


def login_session(request: Request, user: str) -> None:
    """Start a fresh session for `user` (a new CSRF token; nothing from the anonymous session kept),
    carrying the user's current session version."""
    version = request.app.state.runtime.store.session_version(user)
    request.session.clear()
    request.session["user"] = user
    request.session["sv"] = version
    request.session["csrf"] = secrets.token_urlsafe(32)
    request.session["since"] = int(time.time())
    request.scope[_USER_KEY] = user if version is not None else None


def logout_session(request: Request) -> str | None:
    """End every session of the signed-in user (its session version changes) and clear this one."""
    from maskwatch.store import StoreError

    user = session_user(request)
    if user is not None:
        try:
            request.app.state.runtime.store.end_sessions(user)
        except StoreError as exc:  # this cookie is cleared all the same
            log.error("the other sessions of %s are not ended: %s", user, exc)
    request.session.clear()
    request.scope[_USER_KEY] = None
    return user


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def safe_next(path: str | None) -> str:
    """Only same-site relative paths are allowed as post-login redirect targets."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def same_origin(conn: Request | WebSocket) -> bool:
    """True when the Origin header (if any) names this server (blocks cross-site WebSocket hijacking)."""
    origin = conn.headers.get("origin")
    if not origin:
        return True
    host = conn.headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/") == host


def password_problem(password: str, repeat: str | None = None) -> str | None:
    if len(password) < MIN_PASSWORD_LEN:
        return f"The password must have at least {MIN_PASSWORD_LEN} characters."
    if repeat is not None and password != repeat:
        return "The two passwords differ."
    return None


def create_user(store, name: str, password: str, repeat: str | None = None) -> str | None:
    """Add an administrator; the problem (for the user) when the name or password is not acceptable."""
    problem = password_problem(password, repeat) or (None if name else "Choose a user name.")
    if problem is None:
        try:
            store.add_user(name, password)
        except ValueError as exc:
            problem = str(exc)
    return problem


class LoginLimiter:
    """Failed logins, limited per client address and per user name separately.

    - Per address (hard): after `address_failures` failed logins from one address (any names) within
      `window_s`, that address gets 429 without its password being checked until the oldest of them ages
      out. Only failures from that address count, so one address cannot brute-force across names.
    - Per user name (soft): from `name_failures` failures for a name on, each further failure doubles a
      backoff (1 s, 2 s, 4 s, ... up to `max_backoff_s`) during which a wrong password for that name is
      answered 429 with Retry-After. A correct password always passes the name limit, so failures from
      anywhere cannot lock an account out; a successful login clears the name's failures.
    """

    def __init__(
        self,
        name_failures: int = 5,
        address_failures: int = 20,
        window_s: float = 900.0,
        max_backoff_s: float = 300.0,
        max_keys: int = 10_000,
    ) -> None:
        self.name_failures = name_failures
        self.address_failures = address_failures
        self.window_s = window_s
        self.max_backoff_s = max_backoff_s
        self.max_keys = max_keys
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.get(key)
        if q is None:
            return deque()
        while q and now - q[0] > self.window_s:
            q.popleft()
        if not q:
            del self._fails[key]
        return q

    def address_wait(self, client: str) -> int:
        """Seconds until `client` may try to log in again (0: now)."""
        now = time.monotonic()
        with self._lock:
            q = self._recent(f"ip:{client}", now)
            if len(q) < self.address_failures:
                return 0
            wait = q[len(q) - self.address_failures] + self.window_s - now
        return max(1, int(wait) + 1)

    def name_wait(self, user: str) -> int:
        """Seconds of backoff for failed logins as `user` (0: none)."""
        now = time.monotonic()
        with self._lock:
            q = self._recent(f"user:{user.strip()}", now)
            if len(q) < self.name_failures:
                return 0
            backoff = min(self.max_backoff_s, 2.0 ** (len(q) - self.name_failures))
            wait = q[-1] + backoff - now
        return int(wait) + 1 if wait > 0 else 0

    def fail(self, client: str, user: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._fails) >= self.max_keys:  # forget the stale keys, else the oldest ones
                for key in [k for k, q in self._fails.items() if not q or now - q[-1] > self.window_s]:
                    del self._fails[key]
                while len(self._fails) >= self.max_keys:
                    del self._fails[next(iter(self._fails))]
            for key in (f"ip:{client}", f"user:{user.strip()}"):
                self._fails.setdefault(key, deque(maxlen=max(self.address_failures, 64))).append(now)

    def success(self, client: str, user: str) -> None:
        """A correct password: the name's failures are forgotten (the address's are not: a known
        password must not reset the limit for guessing others)."""
        with self._lock:
            self._fails.pop(f"user:{user.strip()}", None)


@lru_cache(maxsize=64)
def _networks(proxies: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in proxies)


def _trusted(address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(conn: HTTPConnection, trusted_proxies: Sequence[str] = ()) -> str:
    """The client's address: the direct peer, or, when the peer is one of `trusted_proxies` (IPs or
    CIDRs), the right-most `X-Forwarded-For` address that is not a trusted proxy."""
    peer = conn.client.host if conn.client else "unknown"
    networks = _networks(tuple(trusted_proxies))
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [h.strip() for h in ",".join(conn.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else peer
