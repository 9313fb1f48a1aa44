"""The FastAPI application factory.

Example:
    >>> from maskwatch.config import Settings
    >>> app = create_app(Settings(), store=my_store, start_background=False)  # doctest: +SKIP
    >>> app.state.runtime.setup_token  # a one-time token while no user exists  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException as FastAPIHTTPException
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maskwatch import __version__
from maskwatch.alerts.engine import AlertEngine
from maskwatch.alerts.mail import MailWorker
from maskwatch.config import Settings, private_data_dir
from maskwatch.monitor import Monitor, effective_settings
from maskwatch.store import Store
from maskwatch.web.analysis import Analyzer
from maskwatch.web.auth import LoginRequired, load_secret_key
from maskwatch.web.runtime import Runtime
from maskwatch.web.templating import templates

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
_HOST_OK = re.compile(r"[^A-Za-z0-9.:\[\]-]")
SESSION_COOKIE = "maskwatch_session"
SESSION_MAX_AGE_S = 12 * 3600
UPLOAD_PATHS = ("/upload", "/api/detect")
MAX_FORM_BYTES = 1 << 20


class SecurityHeaders:
    """Pure ASGI middleware: CSP without inline scripts, no framing, no sniffing, no caching of pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        host = _HOST_OK.sub("", host)[:255]
        static = scope.get("path", "").startswith("/static/")
        csp = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            f"media-src 'self' blob:; connect-src 'self' ws://{host} wss://{host}; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                names = {k.lower() for k, _ in headers}
                extra = [
                    (b"content-security-policy", csp.encode("latin-1")),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    (b"permissions-policy", b"camera=(self), microphone=(), geolocation=()"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                if not static and b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                if scope.get("scheme") == "https":
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                headers.extend(h for h in extra if h[0] not in names)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuse oversized request bodies early with 413 (uploads: the configured limit; forms: 1 MB)."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.max_upload_bytes if path.startswith(UPLOAD_PATHS) else MAX_FORM_BYTES
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = False
        if length is not None:
            try:
                too_big = int(length) > limit + 64 * 1024  # multipart framing overhead
            except ValueError:
                too_big = True
        if too_big:
            mb = limit / (1 << 20)
            response = JSONResponse(
                {"detail": f"request too large: the limit is {mb:.0f} MB"}, status_code=413
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit + 64 * 1024:
                    raise FastAPIHTTPException(413, "request too large")
            return message

        await self.app(scope, counting_receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    analyzer: Analyzer | None = None,
    alerts: AlertEngine | None = None,
    mailer: MailWorker | None = None,
    start_background: bool = True,
    https: bool = False,
) -> FastAPI:
    """Build the app around a `Monitor`. Collaborators default to the real ones built from `settings`
    with the settings page's saved overrides applied.

    `start_background=False` (tests) runs no mail worker, camera streams or retention job;
    `https=True` (served with TLS) marks the session cookie Secure.
    """
    file_settings = settings or Settings()
    private_data_dir(file_settings.data_dir)
    owns_store = store is None
    if store is None:
        store = Store.from_settings(file_settings)
    effective = effective_settings(file_settings, store)
    monitor_class = Monitor
    if effective.cluster.address:  # cameras as Ray actors (extra `cluster`; imported only then)
        from maskwatch.cluster import ClusterMonitor

        monitor_class = ClusterMonitor
    monitor = monitor_class(
        effective,
        store,
        models=analyzer or Analyzer(effective, threads=1),
        alerts=alerts,
        mailer=mailer,
    )
    runtime = Runtime(file_settings, store=store, monitor=monitor, owns_store=owns_store)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_background:
            runtime.start()
        try:
            yield
        finally:
            if start_background:
                runtime.stop()

    app = FastAPI(
        title="maskwatch",
        version=__version__,
        description="Live face mask and apparent-gender monitoring. Authenticate with a session cookie "
        "or `Authorization: Bearer <token>` (create tokens on the settings page).",
        docs_url=None,  # Swagger UI needs a CDN; /api/docs renders the schema server-side instead
        redoc_url=None,
        openapi_url=None,  # served at /api/openapi.json behind auth
        lifespan=lifespan,
    )
    app.state.runtime = runtime

    from maskwatch.web.routes import api, live, metrics, pages

    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(live.router)
    metrics.install(app)  # /metrics (Prometheus), outside the OpenAPI schema
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(LoginRequired)
    async def _login_redirect(request: Request, exc: LoginRequired):
        return RedirectResponse(f"/login?next={quote(exc.next_path, safe='/')}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        wants_html = "text/html" in request.headers.get("accept", "")
        if request.url.path.startswith("/api/") or not wants_html:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return templates.TemplateResponse(
            request,
            "error.html",
            {"status": exc.status_code, "detail": exc.detail},
            status_code=exc.status_code,
        )

    app.add_middleware(
        SessionMiddleware,
        secret_key=load_secret_key(file_settings.web.secret_key, file_settings.data_dir),
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE_S,
        same_site="lax",
        https_only=https,
    )
    app.add_middleware(BodyLimit, max_upload_bytes=file_settings.web.max_upload_mb << 20)
    app.add_middleware(SecurityHeaders)
    return app
