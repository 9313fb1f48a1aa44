"""Response models of the REST API (routes/api.py): what `/api/openapi.json` and `/api/docs` show.

Apparent gender is removed in one place: every field that carries it is declared with `gender_field()`
(None by default, and left out of the answer when None), and `without_gender()` sets all of them to None,
recursively, when `privacy.gender_enabled` is off. Routes pass their answer through `public()`.

Example:
    >>> a = Counts(people=2, masked=1, unmasked=1, incorrect=0, uncertain=0, man=1, woman=1, compliance=0.5)
    >>> sorted(a.model_dump())
    ['compliance', 'incorrect', 'man', 'masked', 'people', 'uncertain', 'unmasked', 'woman']
    >>> sorted(without_gender(a).model_dump())
    ['compliance', 'incorrect', 'masked', 'people', 'uncertain', 'unmasked']
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

_GENDER_MARK = "x-apparent-gender"


def _is_none(value: Any) -> bool:
    return value is None


def gender_field(description: str) -> Any:
    """A field holding apparent gender: optional, absent from the answer when gender is off."""
    return Field(
        None,
        exclude_if=_is_none,
        description=f"{description} (apparent gender; absent when privacy.gender_enabled is off)",
        json_schema_extra={_GENDER_MARK: True},
    )


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


M = TypeVar("M", bound=BaseModel)


def _strip(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return without_gender(value)
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items()}
    return value


def without_gender(model: M) -> M:
    """A copy of `model` with every apparent-gender field (at any depth) set to None, i.e. left out."""
    update: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get(_GENDER_MARK):
            update[name] = None
        else:
            value = getattr(model, name)
            stripped = _strip(value)
            if stripped is not value:
                update[name] = stripped
    return model.model_copy(update=update) if update else model


def public(model: M, *, gender: bool) -> M:
    """The answer as sent: unchanged with gender on, `without_gender` with it off."""
    return model if gender else without_gender(model)


# -- /api/health, /api/status -----------------------------------------------------------------------


class Health(ApiModel):
    status: Literal["ok"]
    version: str = Field(description="maskwatch version")


class AlertHealth(ApiModel):
    store_ok: bool = Field(description="false after the store failed to save events (see last_error)")
    last_error: str | None
    last_error_at: str | None = Field(description="ISO 8601 UTC")
    pending: int = Field(description="alerts waiting to be saved")
    dropped: int
    frames: int
    alerts: int
    events_stored: int
    quiet_suppressed: int
    capped: int


class Status(Health):
    models: Literal["loaded", "not loaded", "error"]
    models_error: str | None
    cameras: int = Field(description="configured cameras")
    camera_states: dict[str, int] = Field(description="cameras per state")
    workers: int
    detect_interval: int = Field(description="detect every Nth frame (the current value)")
    alerts: AlertHealth
    uptime_s: float


# -- /api/detect --------------------------------------------------------------------------------------


class Attribute(ApiModel):
    label: str = Field(description="mask: mask, no_mask, incorrect, uncertain; gender: man, woman, uncertain")
    confidence: float = Field(ge=0, le=1)


class Face(ApiModel):
    box: list[float] = Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in pixels")
    score: float = Field(description="detector confidence")
    landmarks: list[list[float]] | None = Field(description="5 points (x, y): eyes, nose, mouth corners")
    track_id: int | None
    mask: Attribute
    gender: Attribute | None = gender_field("label man, woman or uncertain")


class FrameResult(ApiModel):
    source: str
    frame_index: int
    timestamp: float
    frame_size: list[int] | None = Field(min_length=2, max_length=2, description="width, height")
    faces: list[Face]
    timings_ms: dict[str, float] = Field(description="milliseconds per pipeline stage")


# -- /api/events -------------------------------------------------------------------------------------


class Event(ApiModel):
    id: int
    camera: str
    time: str = Field(description="ISO 8601 UTC")
    track_id: int | None
    mask_label: str = Field(description="no_mask or incorrect (nose or mouth uncovered)")
    mask_confidence: float
    gender_label: str | None = gender_field("man, woman or uncertain; absent when not recorded")
    gender_confidence: float | None = gender_field("confidence of gender_label")
    snapshot_url: str | None = Field(description="/events/{id}/snapshot.jpg (session or bearer token)")
    mail_status: str
    acknowledged_by: str | None = Field(None, description="the user who acknowledged the event")
    acknowledged_at: str | None = Field(None, description="when, ISO 8601 UTC")


class Events(ApiModel):
    total: int = Field(description="events matching the filters")
    offset: int
    limit: int
    events: list[Event]


# -- /api/stats --------------------------------------------------------------------------------------


class Counts(ApiModel):
    people: int = Field(description="people summed over minutes")
    masked: int
    unmasked: int
    incorrect: int = Field(description="mask worn with nose or mouth uncovered")
    uncertain: int
    man: int | None = gender_field("people seen as men")
    woman: int | None = gender_field("people seen as women")
    compliance: float | None = Field(
        description="masked / (masked + unmasked + incorrect); null when none of those"
    )


class Bucket(Counts):
    t: str = Field(description="start of the bucket, ISO 8601 UTC")


class Stats(ApiModel):
    bucket: Literal["minute", "hour", "day"]
    buckets: list[Bucket]
    per_camera: dict[str, Counts]
    totals: Counts


# -- /api/cameras ------------------------------------------------------------------------------------


class LiveCounts(ApiModel):
    """The camera's counters for its latest frame (zero before the first one)."""

    people: int = 0
    masked: int = 0
    unmasked: int = 0
    incorrect: int = 0
    uncertain: int = 0
    man: int | None = gender_field("faces seen as men")
    woman: int | None = gender_field("faces seen as women")
    gender_uncertain: int | None = gender_field("faces of uncertain apparent gender")


class Latency(ApiModel):
    p50: float
    p95: float


class Camera(ApiModel):
    """A camera's health (docs/monitor.md, Health). Stopped and disabled cameras have only name, source,
    state, error, fps, frames, dropped, counts, enabled and quiet_hours; the rest is null."""

    name: str
    source: str = Field(description="credentials masked (***)")
    state: Literal["starting", "running", "stalled", "reconnecting", "down", "stopped", "disabled"]
    error: str | None = Field(description="the last error, credentials masked")
    fps: float = Field(description="frames processed in the last 2 s")
    frames: int = Field(description="frames processed")
    frames_read: int | None = None
    dropped: int = Field(description="frames read but never processed")
    reconnects: int | None = None
    counts: LiveCounts
    last_frame_at: float | None = Field(None, description="Unix time of the last frame read")
    last_frame_age_s: float | None = None
    latency_ms: Latency | None = Field(None, description="frame read to result, the last 300 frames")
    processing_ms: float | None = None
    detect_interval: int | None = None
    enabled: bool
    quiet_hours: str | None = Field(description="HH:MM-HH:MM: no alerts in that window")


class Cameras(ApiModel):
    cameras: list[Camera]
    gender: bool = Field(description="whether apparent gender is on (privacy.gender_enabled)")
