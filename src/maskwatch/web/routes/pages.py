"""Browser pages: login, first-run setup, live, upload, events, statistics, outbox, settings."""

from __future__ import annotations

import hmac
import json
import logging
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import anyio
import cv2
import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError

from maskwatch.alerts.export import csv_chunks
from maskwatch.alerts.mail import MailError, send_test_email
from maskwatch.config import check_email_address
from maskwatch.store import TOKEN_ID_RE
from maskwatch.web import forms
from maskwatch.web.analysis import BadMedia, ModelsUnavailable, analyze_upload, encode_jpeg
from maskwatch.web.auth import (
    client_address,
    create_user,
    login_session,
    logout_session,
    password_problem,
    safe_next,
    session_user,
)
from maskwatch.web.charts import NARROW_W, W, bar_chart, line_chart, time_axis
from maskwatch.web.deps import (
    CsrfForm,
    DbId,
    PageOrApiUser,
    PageUser,
    RuntimeDep,
    limit_uploads,
    read_upload,
    run_vision,
    utc,
)
from maskwatch.web.runtime import Runtime
from maskwatch.web.templating import site_zone, templates

router = APIRouter(include_in_schema=False)

log = logging.getLogger(__name__)

PAGE_SIZE = 25
MAX_RANGE_DAYS = 400  # the longest custom statistics range
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")  # an upload's progress id, chosen by the page
MAX_TOKEN_DAYS = 3650  # the longest token lifetime the settings page offers
RANGES = {  # statistics ranges: (length, bucket)
    "1h": (timedelta(hours=1), "minute"),
    "24h": (timedelta(hours=24), "hour"),
    "7d": (timedelta(days=7), "day"),
    "30d": (timedelta(days=30), "day"),
}


def render(request: Request, template: str, status_code: int = 200, **ctx: Any):
    return templates.TemplateResponse(request, template, ctx, status_code=status_code)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- login / logout / first run -----------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, rt: RuntimeDep, next: str = "/"):
    if session_user(request):
        return see_other(safe_next(next))
    return render(request, "login.html", next=safe_next(next), error=None, setup=rt.setup_token is not None)


@router.post("/login")
def login(request: Request, rt: RuntimeDep, form: CsrfForm):
    name = str(form.get("username") or "").strip()
    password = str(form.get("password") or "")
    next_path = safe_next(str(form.get("next") or "/"))
    client = client_address(request, rt.settings.web.trusted_proxies)

    def too_many(wait: int, what: str):
        response = render(
            request,
            "login.html",
            429,
            next=next_path,
            error=f"Too many failed attempts {what}. Try again in {wait} s.",
            username=name,
            setup=False,
        )
        response.headers["Retry-After"] = str(wait)
        return response

    wait = rt.limiter.address_wait(client)  # only this address's failures count
    if wait:
        return too_many(wait, "from your address")
    if name and password and rt.store.verify_user(name, password):  # never refused by the name limit
        rt.limiter.success(client, name)
        login_session(request, name)
        return see_other(next_path)
    rt.limiter.fail(client, name)
    wait = rt.limiter.name_wait(name)
    if wait:
        return too_many(wait, "for this user name")
    return render(
        request,
        "login.html",
        401,
        next=next_path,
        error="Wrong user name or password.",
        setup=False,
        username=name,
    )


@router.post("/logout")
def logout(request: Request, form: CsrfForm):
    logout_session(request)  # every session of this user ends, not only this cookie
    return see_other("/login")


def _setup_allowed(rt, token: str | None) -> bool:
    expected = rt.setup_token
    return bool(expected and token and hmac.compare_digest(expected, token) and not rt.store.has_users())


@router.get("/setup")
def setup_page(request: Request, rt: RuntimeDep, token: str | None = None):
    if not _setup_allowed(rt, token):
        raise HTTPException(404, "Setup is finished or the setup link is not valid. Use the login page.")
    return render(request, "setup.html", token=token, error=None, name="admin")


@router.post("/setup")
def setup(request: Request, rt: RuntimeDep, form: CsrfForm):
    token = str(form.get("token") or "")
    if not _setup_allowed(rt, token):
        raise HTTPException(404, "Setup is finished or the setup link is not valid. Use the login page.")
    name = str(form.get("username") or "").strip()
    password, repeat = str(form.get("password") or ""), str(form.get("password2") or "")
    problem = create_user(rt.store, name, password, repeat)
    if problem:
        return render(request, "setup.html", 400, token=token, error=problem, name=name)
    rt.setup_token = None
    login_session(request, name)
    return see_other("/")


# -- live ---------------------------------------------------------------------------------------


@router.get("/")
def live_page(request: Request, rt: RuntimeDep, user: PageUser):
    return render(
        request,
        "live.html",
        cameras=rt.cameras.describe(),
        webcam=rt.settings.web.browser_webcam,
        models_error=rt.analyzer.error,
    )


# -- upload -------------------------------------------------------------------------------------


@router.get("/upload")
def upload_page(request: Request, rt: RuntimeDep, user: PageUser):
    return render(request, "upload.html", result=None, error=None, max_mb=rt.settings.web.max_upload_mb)


@router.post("/upload")
async def upload(request: Request, rt: RuntimeDep, user: PageUser, form: CsrfForm):
    max_mb = rt.settings.web.max_upload_mb
    gender = rt.gender_enabled
    job_id = str(form.get("job") or "")
    job = rt.upload_jobs.start(user, job_id) if JOB_ID_RE.fullmatch(job_id) else None
    try:
        limit_uploads(rt, user)
        data, kind, suffix = await read_upload(form.get("file"), max_mb << 20)
        name = getattr(form.get("file"), "filename", "") or "upload"
        item, rows, summary = await run_vision(
            rt,
            lambda: analyze_upload(
                rt.analyzer,
                data,
                kind,
                suffix,
                filename=name,
                user=user,
                gender=gender,
                progress=job.progress if job else None,
            ),
        )
    except HTTPException as exc:
        response = render(
            request, "upload.html", exc.status_code, result=None, error=exc.detail, max_mb=max_mb
        )
        response.headers.update(exc.headers or {})  # Retry-After of 429 / 503
        return response
    except BadMedia as exc:
        return render(request, "upload.html", exc.status_code, result=None, error=str(exc), max_mb=max_mb)
    except ModelsUnavailable as exc:
        return render(
            request, "upload.html", 503, result=None, error=f"Models unavailable: {exc}", max_mb=max_mb
        )
    finally:
        if job:
            rt.upload_jobs.finish(user, job_id)
    rt.uploads.put(item)
    return render(request, "upload.html", result=item, rows=rows, summary=summary, error=None, max_mb=max_mb)


@router.get("/upload/jobs/{job_id}")
def upload_progress(job_id: str, rt: RuntimeDep, user: PageUser):
    """How far the analysis of the page's upload `job_id` is: frames done of total (0: not known)."""
    job = rt.upload_jobs.get(user, job_id)
    if job is None:
        return {"state": "none", "done": 0, "total": 0}
    return {"state": "analysing", "done": job.done, "total": job.total}


@router.post("/upload/jobs/{job_id}/cancel")
def cancel_upload(job_id: str, rt: RuntimeDep, user: PageUser, form: CsrfForm):
    job = rt.upload_jobs.get(user, job_id)
    if job is not None:
        job.cancelled = True
    return {"cancelled": job is not None}


@router.get("/upload/{rid}/media")
def upload_media(rid: str, rt: RuntimeDep, user: PageUser):
    item = rt.uploads.get(rid, user)
    if item is None:
        raise HTTPException(404, "result not found (results are kept for a short time only)")
    return Response(item.media, media_type=item.media_type)


@router.get("/upload/{rid}/result.json")
def upload_json(rid: str, rt: RuntimeDep, user: PageUser):
    item = rt.uploads.get(rid, user)
    if item is None:
        raise HTTPException(404, "result not found (results are kept for a short time only)")
    return Response(
        json.dumps(item.payload, indent=1),
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="maskwatch-result.json"'},
    )


# -- events -------------------------------------------------------------------------------------


def _event_filters(
    zone: ZoneInfo, camera: str | None, since: datetime | None, until: datetime | None, label: str | None
):
    """Store filters; times typed without an offset (<input type=datetime-local>) are the site's."""

    def local(t: datetime | None) -> datetime | None:
        return utc(t.replace(tzinfo=zone) if t is not None and t.tzinfo is None else t)

    return {"camera": camera or None, "since": local(since), "until": local(until), "label": label or None}


def _parse_dt(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise HTTPException(400, f"not a date and time: {value!r} (use YYYY-MM-DDTHH:MM)") from exc


@router.get("/events")
def events_page(
    request: Request,
    rt: RuntimeDep,
    user: PageUser,
    camera: str | None = None,
    since: str | None = None,
    until: str | None = None,
    label: str | None = None,
    page: int = Query(1, ge=1, le=100000),
):
    filters = _event_filters(site_zone(request), camera, _parse_dt(since), _parse_dt(until), label)
    events, total = rt.store.list_events(**filters, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    pages = max(1, -(-total // PAGE_SIZE))
    query = {k: v for k, v in {"camera": camera, "since": since, "until": until, "label": label}.items() if v}
    return render(
        request,
        "events.html",
        events=events,
        total=total,
        page=page,
        pages=pages,
        query=query,
        cameras=sorted(set(rt.store.cameras()) | {c.name for c in rt.settings.cameras}),
        f={"camera": camera or "", "since": since or "", "until": until or "", "label": label or ""},
    )


@router.get("/events.csv")
def events_csv(
    request: Request,
    rt: RuntimeDep,
    user: PageUser,
    camera: str | None = None,
    since: str | None = None,
    until: str | None = None,
    label: str | None = None,
):
    filters = _event_filters(site_zone(request), camera, _parse_dt(since), _parse_dt(until), label)
    chunks = csv_chunks(rt.store, gender=rt.gender_enabled, **filters)
    return StreamingResponse(
        chunks,
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="maskwatch-events.csv"'},
    )


def _event_or_404(rt: Runtime, event_id: int):
    event = rt.store.get_event(event_id)
    if event is None:
        raise HTTPException(404, f"no event {event_id}")
    return event


@router.get("/events/{event_id}")
def event_page(request: Request, event_id: DbId, rt: RuntimeDep, user: PageUser):
    event = _event_or_404(rt, event_id)
    return render(request, "event.html", event=event, has_snapshot=rt.store.snapshot_file(event) is not None)


@router.post("/events/{event_id}/ack")
def acknowledge_event(request: Request, event_id: DbId, rt: RuntimeDep, user: PageUser, form: CsrfForm):
    if rt.store.acknowledge_event(event_id, user) is None:
        raise HTTPException(404, f"no event {event_id}")
    return see_other(safe_next(str(form.get("next") or f"/events/{event_id}")))


@router.post("/events/{event_id}/delete")
def delete_event(request: Request, event_id: DbId, rt: RuntimeDep, user: PageUser, form: CsrfForm):
    if not rt.store.delete_event(event_id):
        raise HTTPException(404, f"no event {event_id}")
    log.warning("user %s deleted event %d", user, event_id)
    return see_other(safe_next(str(form.get("next") or "/events")))


@router.get("/events/{event_id}/snapshot.jpg")
def event_snapshot(event_id: DbId, rt: RuntimeDep, user: PageOrApiUser):  # the API hands out snapshot_url
    path = rt.store.snapshot_file(_event_or_404(rt, event_id))
    if path is None:
        raise HTTPException(404, "this event has no snapshot")
    return FileResponse(path, media_type="image/jpeg")


@router.get("/events/{event_id}/thumb.jpg")
def event_thumb(event_id: DbId, rt: RuntimeDep, user: PageUser):
    path = rt.store.snapshot_file(_event_or_404(rt, event_id))
    image = cv2.imread(str(path)) if path is not None else None
    if image is None:
        raise HTTPException(404, "this event has no snapshot")
    h, w = image.shape[:2]
    scale = 160 / max(h, w)
    if scale < 1:
        image = cv2.resize(
            image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    return Response(
        encode_jpeg(np.ascontiguousarray(image), 75),
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600"},
    )


# -- statistics ---------------------------------------------------------------------------------


def _stats_charts(
    data: dict, start: datetime, end: datetime, bucket: str, gender: bool, zone: ZoneInfo, width: int
) -> dict[str, Any]:
    axis = time_axis(data.get("buckets", []), start.astimezone(zone), end.astimezone(zone), bucket)
    per_camera = data.get("per_camera", {})
    fmt = {"minute": "%H:%M", "hour": "%d %H:00", "day": "%m-%d"}[bucket]
    labels = [t.astimezone(zone).strftime(fmt) for t, _ in axis]
    rows = [b or {} for _, b in axis]
    charts = {
        "compliance_chart": line_chart(
            list(zip(labels, [b.get("compliance") for b in rows], strict=True)),
            title="Compliance (% masked)",
            width=width,
        ),
        "people_chart": bar_chart(
            [
                (lab, [(k, b.get(k, 0)) for k in ("masked", "unmasked", "incorrect", "uncertain")])
                for lab, b in zip(labels, rows, strict=True)
            ],
            title="People by mask label",
            width=width,
        ),
        "camera_chart": bar_chart(
            [(cam, [("compliance", c.get("compliance") or 0.0)]) for cam, c in per_camera.items()],
            title="Compliance per camera",
            percent=True,
            width=width,
        ),
        "gender_chart": None,
    }
    if gender:
        charts["gender_chart"] = bar_chart(
            [
                (lab, [("man", b.get("man", 0)), ("woman", b.get("woman", 0))])
                for lab, b in zip(labels, rows, strict=True)
            ],
            title="People by apparent gender",
            width=width,
        )
    return charts


def _chart_pairs(
    data: dict, start: datetime, end: datetime, bucket: str, gender: bool, zone: ZoneInfo
) -> dict[str, Any]:
    """Each chart twice: for wide screens and for phones (app.css shows one)."""
    args = (data, start, end, bucket, gender, zone)
    wide, narrow = _stats_charts(*args, width=W), _stats_charts(*args, width=NARROW_W)
    return {k: (v, narrow[k]) if v is not None else None for k, v in wide.items()}


def _custom_range(since: str, until: str, zone: ZoneInfo) -> tuple[datetime, datetime, str]:
    """(start, end, bucket) of the days `since` to `until` (YYYY-MM-DD, both included, in the site's
    zone): per minute up to 2 hours, per hour up to 3 days, else per day."""
    try:
        first, last = date.fromisoformat(since), date.fromisoformat(until)
    except ValueError as exc:
        raise HTTPException(400, f"not a date: {since!r} or {until!r} (use YYYY-MM-DD)") from exc
    if last < first or (last - first).days > MAX_RANGE_DAYS:
        raise HTTPException(400, f"the range must run forward and span at most {MAX_RANGE_DAYS} days")
    start = datetime.combine(first, time.min, zone)
    end = datetime.combine(last + timedelta(days=1), time.min, zone)
    span = end - start
    bucket = "minute" if span <= timedelta(hours=2) else "hour" if span <= timedelta(days=3) else "day"
    return start, end, bucket


@router.get("/stats")
def stats_page(
    request: Request,
    rt: RuntimeDep,
    user: PageUser,
    range: str = "24h",
    camera: str | None = None,
    since: str = "",
    until: str = "",
):
    zone = site_zone(request)
    now = datetime.now(UTC)
    if range == "custom":
        start, end, bucket = _custom_range(since, until, zone)
    else:
        if range not in RANGES:
            range = "24h"
        length, bucket = RANGES[range]
        start, end = now - length, now
        today = now.astimezone(zone).date()
        since, until = (today - timedelta(days=max(0, length.days - 1))).isoformat(), today.isoformat()
    data = rt.store.stats(since=start, until=end, camera=camera or None, bucket=bucket, zone=zone)
    gender = rt.gender_enabled
    return render(
        request,
        "stats.html",
        range=range,
        ranges=list(RANGES),
        since=since,
        until=until,
        camera=camera or "",
        cameras=sorted(set(rt.store.cameras()) | {c.name for c in rt.settings.cameras}),
        totals=data.get("totals", {}),
        per_camera=data.get("per_camera", {}),
        **_chart_pairs(data, start, min(end, now), bucket, gender, zone),
    )


# -- outbox -------------------------------------------------------------------------------------


@router.get("/outbox")
def outbox_page(
    request: Request,
    rt: RuntimeDep,
    user: PageUser,
    status: str | None = None,
    page: int = Query(1, ge=1, le=100000),
):
    messages, total = rt.store.list_outbox(
        status=status or None, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE
    )
    return render(
        request,
        "outbox.html",
        messages=messages,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        status=status or "",
        smtp_configured=bool(rt.settings.smtp.host),
        recipients=", ".join(rt.settings.smtp.recipients),
        notice=request.query_params.get("notice", "")[:300],
        error=request.query_params.get("error", "")[:500],
        webhook_deliveries=rt.store.list_webhook_deliveries(limit=20)[0],  # never the secrets
    )


def _outbox_back(rt: Runtime, notice: str) -> RedirectResponse:
    if rt.monitor.mailer is not None:
        rt.monitor.mailer.wake()
    return see_other(f"/outbox?{urlencode({'notice': notice})}")


@router.post("/outbox/{message_id}/retry")
def retry_message(request: Request, message_id: DbId, rt: RuntimeDep, user: PageUser, form: CsrfForm):
    if not rt.store.retry_message(message_id):
        raise HTTPException(404, f"no failed message {message_id}")
    return _outbox_back(rt, f"Message {message_id} is queued again.")


@router.post("/outbox/{message_id}/resend")
def resend_message(request: Request, message_id: DbId, rt: RuntimeDep, user: PageUser, form: CsrfForm):
    new_id = rt.store.resend_message(message_id)
    if new_id is None:
        raise HTTPException(404, f"no message {message_id}")
    return _outbox_back(rt, f"A copy of message {message_id} is queued (message {new_id}).")


@router.post("/outbox/test")
async def test_email(request: Request, rt: RuntimeDep, user: PageUser, form: CsrfForm):
    """Send one test email now with the saved SMTP settings (not through the outbox), as
    `maskwatch alerts test-email` does."""
    to = str(form.get("to") or "").strip() or None
    settings = rt.settings
    try:
        if to:
            check_email_address(to)
        await anyio.to_thread.run_sync(send_test_email, settings, to)
    except (MailError, ValueError) as exc:
        return see_other(f"/outbox?{urlencode({'error': f'Test email not sent: {exc}'})}")
    sent_to = to or ", ".join(settings.smtp.recipients)
    notice = f"Test email sent to {sent_to} via {settings.smtp.host}."
    return see_other(f"/outbox?{urlencode({'notice': notice})}")


@router.get("/outbox/{message_id}")
def outbox_message(request: Request, message_id: DbId, rt: RuntimeDep, user: PageUser):
    message = rt.store.get_message(message_id)
    if message is None:
        raise HTTPException(404, f"no message {message_id}")
    return render(request, "message.html", message=message)


# -- settings, users, tokens --------------------------------------------------------------------


def _settings_page(request: Request, rt: Runtime, status_code: int = 200, **extra: Any):
    s = rt.settings
    ctx = {
        "sections": forms.form_values(s),
        "cameras": forms.camera_rows(s),
        "password_set": bool(s.smtp.password),
        "users": rt.store.list_users(),
        "tokens": rt.store.list_tokens(),
        "confirm_replace": None,  # a user name whose password replacement needs confirming
        "errors": [],
        "saved": request.query_params.get("saved") == "1",
        "new_token": None,
        "data_dir": str(s.data_dir),
    }
    ctx.update(extra)
    return render(request, "settings.html", status_code, **ctx)


@router.get("/settings")
def settings_page(request: Request, rt: RuntimeDep, user: PageUser):
    return _settings_page(request, rt)


@router.post("/settings")
def save_settings(request: Request, rt: RuntimeDep, user: PageUser, form: CsrfForm):
    try:
        rt.update_overrides(forms.settings_overrides(form, rt.settings))
    except (ValidationError, ValueError) as exc:
        return _settings_page(  # shown again as typed (never the SMTP password), with what is wrong
            request,
            rt,
            400,
            errors=forms.validation_messages(exc),
            sections=forms.form_values(rt.settings, form),
            cameras=forms.camera_rows(rt.settings, form),
        )
    return see_other("/settings?saved=1")


@router.post("/settings/users")
def add_user(request: Request, rt: RuntimeDep, user: PageUser, form: CsrfForm):
    name = str(form.get("username") or "").strip()  # stripped and case-sensitive, as the store keeps it
    password = str(form.get("password") or "")
    exists = bool(name) and rt.store.user_exists(name)
    if exists and password_problem(password) is None and form.get("replace") != name:
        return _settings_page(  # the checkbox names the user: confirming one name never replaces another
            request,
            rt,
            409,
            errors=[f"A user named {name} exists. Confirm to replace that user's password."],
            confirm_replace=name,
        )
    problem = create_user(rt.store, name, password)
    if problem:
        return _settings_page(request, rt, 400, errors=[problem])
    if exists:  # every session of that user has ended (a new session version)
        log.warning("user %s replaced the password of user %s", user, name)
        if name == user:
            login_session(request, user)  # this session stays
    else:
        log.warning("user %s added user %s", user, name)
    return see_other("/settings?saved=1#users")


@router.post("/settings/users/remove")
def remove_user(request: Request, rt: RuntimeDep, user: PageUser, form: CsrfForm):
    name = str(form.get("username") or "").strip()
    try:
        removed = rt.store.delete_user(name)
    except ValueError as exc:  # the last user
        return _settings_page(request, rt, 400, errors=[str(exc)])
    if not removed:
        return _settings_page(request, rt, 404, errors=[f"There is no user {name}."])
    log.warning("user %s removed user %s (its sessions and API tokens end)", user, name)
    return see_other("/settings?saved=1#users")


@router.post("/settings/tokens")
def create_token(request: Request, rt: RuntimeDep, user: PageUser, form: CsrfForm):
    label = str(form.get("label") or "")[:100]
    days_text = str(form.get("expires_days") or "").strip()
    expires_in = None
    if days_text:
        days = int(days_text) if days_text.isdigit() else 0
        if not 1 <= days <= MAX_TOKEN_DAYS:
            return _settings_page(
                request, rt, 400, errors=[f"Expires after: a number of days from 1 to {MAX_TOKEN_DAYS}."]
            )
        expires_in = timedelta(days=days)
    token = rt.store.create_token(user, label, expires_in=expires_in)
    return _settings_page(request, rt, new_token=token)


@router.post("/settings/tokens/revoke")
def revoke_token(request: Request, rt: RuntimeDep, user: PageUser, form: CsrfForm):
    token_id = str(form.get("token_id") or "").strip().lower()
    if not TOKEN_ID_RE.fullmatch(token_id) or not rt.store.revoke_token(token_id):
        return _settings_page(request, rt, 404, errors=[f"There is no API token {token_id}."])
    log.warning("user %s revoked API token %s", user, token_id)
    return see_other("/settings?saved=1#tokens")


# -- API docs (server-rendered from the OpenAPI schema; Swagger UI would need a CDN) ----------------


@router.get("/api/docs")
def api_docs(request: Request, user: PageUser):
    schema = request.app.openapi()
    ops = [
        {
            "method": m.upper(),
            "path": p,
            "summary": op.get("summary", ""),
            "description": op.get("description", ""),
        }
        for p, methods in schema.get("paths", {}).items()
        for m, op in methods.items()
    ]
    return render(request, "api_docs.html", ops=ops)
