"""The REST API (documented in the OpenAPI schema at /api/openapi.json, rendered at /api/docs)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from maskwatch import __version__
from maskwatch.web import schemas as S
from maskwatch.web.analysis import BadMedia, ModelsUnavailable, decode_image
from maskwatch.web.deps import MAX_DB_INT, ApiUser, RuntimeDep, limit_uploads, read_upload, run_vision, utc

if TYPE_CHECKING:
    from maskwatch.store import Event as StoredEvent


class ErrorBody(BaseModel):
    """Every error answer: `{"detail": "what went wrong, for a person"}` (422: FastAPI's list of fields)."""

    detail: str | list[dict[str, Any]]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": ERROR_CODES[code]} for code in codes}


ERROR_CODES = {
    400: "the upload is empty, not a file, or not an image or video (by its first bytes)",
    401: "no or a bad session / bearer token (expired, revoked, or its user removed)",
    413: "too large: the request body (web.max_upload_mb) or the pixel size the image declares",
    415: "a video sent where one image is expected",
    422: "a parameter out of range or malformed (ids, offsets, dates, labels), or an undecodable image",
    429: "too many uploads from this user this minute (web.uploads_per_minute); see Retry-After",
    503: "the models are not available, or the server is busy (see Retry-After)",
}
router = APIRouter(prefix="/api", tags=["api"])


@router.get("/health", summary="Liveness check (no authentication)")
async def health() -> S.Health:
    """`{"status": "ok", "version": ...}`. Details (models, cameras, alerts) need authentication."""
    return S.Health(status="ok", version=__version__)


@router.get("/status", summary="Details of the running service", responses=_errors(401))
def status(rt: RuntimeDep, user: ApiUser) -> S.Status:
    return S.Status.model_validate({"status": "ok", "version": __version__, **rt.health()})


@router.post(
    "/detect", summary="Find faces in one image", responses=_errors(400, 401, 413, 415, 422, 429, 503)
)
async def detect(
    rt: RuntimeDep, user: ApiUser, file: UploadFile = File(..., description="JPEG/PNG/WebP/BMP")
) -> S.FrameResult:
    """Multipart upload of one image (field `file`). Returns a FrameResult: `faces` in the Face shape
    (box x1,y1,x2,y2 in pixels, score, landmarks, track_id, mask and apparent gender with confidence).

    Limits: `web.max_upload_mb` (413), the pixel size the image's header declares (413, checked before
    decoding), `web.uploads_per_minute` per user (429 + Retry-After), a busy server (503 + Retry-After)."""
    limit_uploads(rt, user)
    data, kind, _suffix = await read_upload(file, rt.settings.web.max_upload_mb << 20)
    if kind != "image":
        raise HTTPException(
            415, "this endpoint takes one image (JPEG, PNG, WebP or BMP); use the upload page for video"
        )
    try:
        result = await run_vision(rt, lambda: rt.analyzer.analyze_image(decode_image(data)))
    except BadMedia as exc:
        raise HTTPException(exc.status_code, str(exc)) from exc
    except ModelsUnavailable as exc:
        raise HTTPException(503, f"models unavailable: {exc}") from exc
    return S.public(S.FrameResult.model_validate(result.to_dict()), gender=rt.gender_enabled)


def _event(event: StoredEvent) -> S.Event:
    d = event.to_dict()
    d.pop("snapshot", None)  # a server path; clients use snapshot_url
    d["snapshot_url"] = f"/events/{event.id}/snapshot.jpg" if event.snapshot else None
    return S.Event.model_validate(d)


@router.get("/events", summary="Alert events, newest first", responses=_errors(401, 422))
def events(
    rt: RuntimeDep,
    user: ApiUser,
    camera: str | None = None,
    since: datetime | None = Query(None, description="ISO 8601; naive times are UTC"),
    until: datetime | None = None,
    label: Literal["mask", "no_mask", "incorrect", "uncertain"] | None = None,
    offset: int = Query(0, ge=0, le=MAX_DB_INT),
    limit: int = Query(50, ge=1, le=500),
) -> S.Events:
    items, total = rt.store.list_events(
        camera=camera, since=utc(since), until=utc(until), label=label, offset=offset, limit=limit
    )
    answer = S.Events(total=total, offset=offset, limit=limit, events=[_event(e) for e in items])
    return S.public(answer, gender=rt.gender_enabled)


@router.get(
    "/stats", summary="Counts and compliance per time bucket and per camera", responses=_errors(401, 422)
)
def stats(
    rt: RuntimeDep,
    user: ApiUser,
    since: datetime | None = None,
    until: datetime | None = None,
    camera: str | None = None,
    bucket: Literal["minute", "hour", "day"] = "hour",
) -> S.Stats:
    data = rt.store.stats(since=utc(since), until=utc(until), camera=camera, bucket=bucket)
    return S.public(S.Stats.model_validate(data), gender=rt.gender_enabled)


@router.get("/cameras", summary="Configured cameras with live state and counters", responses=_errors(401))
def cameras(rt: RuntimeDep, user: ApiUser) -> S.Cameras:
    gender = rt.gender_enabled
    return S.public(
        S.Cameras.model_validate({"cameras": rt.cameras.describe(), "gender": gender}), gender=gender
    )


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, user: ApiUser) -> JSONResponse:
    return JSONResponse(request.app.openapi())
