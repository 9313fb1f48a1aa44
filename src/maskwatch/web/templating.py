"""Jinja2 templates with the values every page needs (user, CSRF token, gender switch)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates

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
    }


def _fmt_time(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if value.utcoffset() is not None else "")
    return "" if value is None else str(value)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.0f}%"


templates = Jinja2Templates(
    directory=str(Path(__file__).resolve().parent / "templates"), context_processors=[_page_context]
)
templates.env.filters["time"] = _fmt_time
templates.env.filters["pct"] = _pct
