"""Authentication and request safety: cookie sessions, CSRF tokens, login rate limiting, API tokens.

Sessions are signed cookies (Starlette's SessionMiddleware, itsdangerous) holding the user name and a
per-session CSRF token. Browser forms carry the token in a hidden field, JavaScript sends it in the
`X-CSRF-Token` header; REST clients authenticate with `Authorization: Bearer <token>` instead (tokens
are created on the settings page and checked by the store).

Example:
    >>> lim = LoginLimiter(max_failures=2, window_s=60)
    >>> lim.fail("1.2.3.4", "admin"); lim.fail("1.2.3.4", "admin")
    >>> lim.retry_after("1.2.3.4", "admin") > 0
    True
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

from fastapi import HTTPException, Request, WebSocket, status

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


def session_user(conn: Request | WebSocket) -> str | None:
    user = conn.session.get("user") if "session" in conn.scope else None
    return user if isinstance(user, str) and user else None


def login_session(request: Request, user: str) -> None:
    """Start a fresh session for `user` (a new CSRF token; nothing from the anonymous session kept)."""
    request.session.clear()
    request.session["user"] = user
    request.session["csrf"] = secrets.token_urlsafe(32)
    request.session["since"] = int(time.time())


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
    """At most `max_failures` failed logins per client address and per user name within `window_s`."""

    def __init__(self, max_failures: int = 5, window_s: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._fails: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _keys(self, client: str, user: str) -> tuple[str, str]:
        return f"ip:{client}", f"user:{user.strip().lower()}"

    def retry_after(self, client: str, user: str) -> int:
        """Seconds until another attempt is allowed (0: allowed now)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key in self._keys(client, user):
                q = self._fails.get(key)
                if not q:
                    continue
                while q and now - q[0] > self.window_s:
                    q.popleft()
                if len(q) >= self.max_failures:
                    wait = max(wait, self.window_s - (now - q[0]))
        return int(wait) + 1 if wait > 0 else 0

    def fail(self, client: str, user: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in self._keys(client, user):
                self._fails[key].append(now)

    def success(self, client: str, user: str) -> None:
        with self._lock:
            for key in self._keys(client, user):
                self._fails.pop(key, None)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
