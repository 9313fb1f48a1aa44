"""FastAPI dependencies: the runtime, the signed-in user (pages / API), CSRF-checked forms."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Path, Request, status
from starlette.datastructures import FormData, UploadFile

from maskwatch.web.analysis import BadMedia, Busy, check_image_header, run_in_pool, sniff_kind
from maskwatch.web.auth import CSRF_FIELD, CSRF_HEADER, LoginRequired, bearer_token, check_csrf, session_user
from maskwatch.web.runtime import Runtime

UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def page_user(request: Request) -> str:
    """The signed-in user of a browser page; otherwise a redirect to the login page."""
    user = session_user(request)
    if user is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(path)
    return user


def api_user(request: Request) -> str:
    """A Bearer token's user, or the session user (whose unsafe requests need the CSRF header)."""
    token = bearer_token(request)
    if token is not None:
        user = get_runtime(request).store.verify_token(token)
        if user is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "invalid API token", headers={"WWW-Authenticate": "Bearer"}
            )
        return user
    user = session_user(request)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "authentication required (session cookie or Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.method in UNSAFE_METHODS:
        check_csrf(request, request.headers.get(CSRF_HEADER))
    return user


async def csrf_form(request: Request) -> FormData:
    """The submitted form, after its CSRF token was checked."""
    form = await request.form(max_files=1, max_fields=1000)
    token = form.get(CSRF_FIELD)
    check_csrf(request, token if isinstance(token, str) else None)
    return form


def utc(value: datetime | None) -> datetime | None:
    """Naive datetimes (from <input type=datetime-local>) are taken as UTC."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise HTTPException(422, f"date and time out of range: {value.isoformat()}") from exc


async def read_upload(file: UploadFile | str | None, max_bytes: int) -> tuple[bytes, str, str]:
    """(data, kind, suffix) of an uploaded file, or HTTPException with a clear 4xx."""
    if not isinstance(file, UploadFile):
        raise HTTPException(400, "no file uploaded: send it as multipart form field 'file'")
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"file too large: the limit is {max_bytes >> 20} MB")
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    kind = sniff_kind(data)
    if kind is None:
        raise HTTPException(
            415, "unsupported file type: upload a JPEG, PNG, WebP or BMP photo, or an MP4, WebM or AVI video"
        )
    if kind[0] == "image":  # the pixel size its header declares, before anything is decoded
        try:
            check_image_header(data)
        except BadMedia as exc:
            raise HTTPException(exc.status_code, str(exc)) from exc
    return data, kind[0], kind[1]


def limit_uploads(rt: Runtime, user: str) -> None:
    """HTTP 429 with Retry-After once `user` sent `web.uploads_per_minute` uploads within a minute."""
    per_minute = rt.settings.web.uploads_per_minute
    wait = rt.upload_limiter.hit(user, per_minute)
    if wait:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many uploads: at most {per_minute} a minute; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )


T = TypeVar("T")


async def run_vision(rt: Runtime, fn: Callable[[], T]) -> T:
    """`fn` (decoding, analysis) in the bounded vision pool, off the event loop; HTTP 503 with
    Retry-After when the pool stays full for longer than analysis.VISION_WAIT_S."""
    try:
        return await run_in_pool(rt.vision_limiter, fn)
    except Busy as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": str(exc.retry_after)}
        ) from exc


MAX_DB_INT = 2**63 - 1  # ids, offsets: a 64-bit signed integer in every database
DbId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="a positive id")]


def page_or_api_user(request: Request) -> str:
    """A Bearer token's user (API clients following a `snapshot_url`), else the page's signed-in user
    (without a session: a redirect to the login page, as for every page)."""
    if bearer_token(request) is not None:
        return api_user(request)
    return page_user(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PageUser = Annotated[str, Depends(page_user)]
ApiUser = Annotated[str, Depends(api_user)]
PageOrApiUser = Annotated[str, Depends(page_or_api_user)]
CsrfForm = Annotated[FormData, Depends(csrf_form)]
