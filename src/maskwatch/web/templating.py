"""Jinja2 templates with the values every page needs (user, CSRF token, gender switch)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context

from maskwatch import __version__
from maskwatch.web.auth import csrf_token, session_user

GENDER_NOTE = (
    "Gender here is apparent gender: a statistical guess from how a face looks, not a person's "
    "identity. It can be wrong, and it can be turned off on the settings page."
)


def _page_context(request: Request) -> dict[str, Any]:
    runtime = request.app.state.runtime
    return {
        "user": session_user(request),
        "csrf": csrf_token(request),
        "gender": runtime.gender_enabled,
        "gender_note": GENDER_NOTE,
        "version": __version__,
        "path": request.url.path,
        "timezone": runtime.settings.server.timezone,
    }


def site_zone(request: Request) -> ZoneInfo:
    """The site's time zone (`server.timezone`): every time a page shows is in it."""
    return ZoneInfo(request.app.state.runtime.settings.server.timezone)


def format_time(value: Any, zone: ZoneInfo) -> str:
    """An aware time (or ISO text) in `zone`, with the zone's abbreviation; naive times are UTC.

    >>> format_time("2026-07-01T12:00:00+00:00", ZoneInfo("Europe/Berlin"))
    '2026-07-01 14:00:00 CEST'
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=ZoneInfo("UTC"))
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    return "" if value is None else str(value)


@pass_context
def _fmt_time(context, value: Any) -> str:
    return format_time(value, ZoneInfo(context["timezone"]))


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.0f}%"


templates = Jinja2Templates(
    directory=str(Path(__file__).resolve().parent / "templates"), context_processors=[_page_context]
)
templates.env.filters["time"] = _fmt_time
templates.env.filters["pct"] = _pct
