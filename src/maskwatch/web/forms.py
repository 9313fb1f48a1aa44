"""The settings page's form <-> the settings overrides saved in the store.

The form covers detection thresholds, cameras, alert rules, SMTP + recipients, retention and privacy.
Values are only collected here; validation is the Settings model's (config.apply_overrides).

Example:
    >>> from maskwatch.config import Settings
    >>> o = settings_overrides({"detector.score_threshold": "0.7", "cam-0-name": "door",
    ...                         "cam-0-source": "0", "cam-0-enabled": "on"}, Settings())
    >>> o["detector"]["score_threshold"], o["cameras"][0]["name"]
    ('0.7', 'door')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from maskwatch.config import Settings
from maskwatch.sources import redact_source

CAMERA_ROWS_EXTRA = 2

# (section, key, kind, label, help)
FIELDS: list[tuple[str, str, str, str, str]] = [
    ("detector", "score_threshold", "float", "Face detection threshold", "0.05-0.99; lower finds more faces"),
    ("detector", "min_face_px", "int", "Smallest face (pixels)", ""),
    (
        "detector",
        "thorough_stills",
        "bool",
        "Thorough search on photos",
        "uploaded photos are also searched mirrored: more faces, twice the detection time",
    ),
    (
        "models",
        "uncertain_threshold",
        "optfloat",
        "Uncertain below",
        "0.5-1.0; empty: the model card's value",
    ),
    ("models", "reclassify_every", "int", "Re-classify a track every N frames", ""),
    ("alerts", "enabled", "bool", "Alerts on", ""),
    (
        "alerts",
        "incorrect_mask_alerts",
        "bool",
        "Alert on masks worn incorrectly",
        "nose or mouth uncovered; off: only faces without a mask alert",
    ),
    ("alerts", "min_frames", "int", "No mask for at least N frames", ""),
    ("alerts", "min_seconds", "float", "… and at least T seconds", ""),
    ("alerts", "min_confidence", "float", "… with confidence at least", "0.5-1.0"),
    ("alerts", "cooldown_s", "float", "Cooldown per person (s)", ""),
    ("alerts", "digest_minutes", "float", "Digest every N minutes", "0: one email per alert"),
    ("alerts", "max_emails_per_hour", "int", "At most N emails per hour", ""),
    ("alerts", "base_url", "str", "Link base URL in emails", "how recipients reach this app"),
    ("smtp", "host", "optstr", "SMTP host", "empty: emails stay in the outbox"),
    ("smtp", "port", "int", "SMTP port", ""),
    ("smtp", "security", "choice:starttls,ssl,none", "Security", ""),
    ("smtp", "username", "optstr", "SMTP user", ""),
    ("smtp", "sender", "str", "Sender address", ""),
    ("smtp", "recipients", "list", "Recipients", "comma or newline separated"),
    ("smtp", "timeout_s", "float", "SMTP timeout (s)", ""),
    ("privacy", "gender_enabled", "bool", "Show apparent gender", "off: gender is hidden everywhere"),
    ("privacy", "blur_snapshots", "bool", "Blur faces in stored snapshots", ""),
    ("privacy", "retention_days", "int", "Keep events for N days", ""),
    ("server", "timezone", "str", "Time zone", "IANA name, e.g. Europe/Berlin: every time shown is in it"),
]

SECTIONS = {
    "detector": "Detection",
    "models": "Classification",
    "alerts": "Alert rules",
    "smtp": "Email (SMTP)",
    "privacy": "Privacy and retention",
    "server": "Site",
}


def _text(form: Mapping[str, Any], key: str) -> str:
    v = form.get(key)
    return v.strip() if isinstance(v, str) else ""


def settings_overrides(form: Mapping[str, Any], current: Settings) -> dict[str, Any]:
    """The overrides dict for a submitted settings form (strings; pydantic converts and validates).

    Raises ValueError for camera rows without a name or with a repeated name."""
    out: dict[str, Any] = {}
    for section, key, kind, _label, _help in FIELDS:
        name = f"{section}.{key}"
        raw = _text(form, name)
        if kind == "bool":
            value: Any = form.get(name) in ("on", "true", "1")
        elif kind in ("optfloat", "optstr"):
            value = raw or None
        elif kind == "list":
            value = [a.strip() for a in re.split(r"[,\n;]", raw) if a.strip()]
        else:
            value = raw
        out.setdefault(section, {})[key] = value
    # the SMTP password is never sent to the browser: empty keeps it, the checkbox clears it
    password = form.get("smtp.password")
    if isinstance(password, str) and password:
        out["smtp"]["password"] = password
    elif form.get("smtp.password_clear") == "on":
        out["smtp"]["password"] = None
    else:
        out["smtp"]["password"] = current.smtp.password
    cameras: list[dict[str, object]] = []
    max_fps = {c.name: c.max_fps for c in current.cameras}  # not on the form: kept from the settings
    i = 0
    while f"cam-{i}-name" in form or f"cam-{i}-source" in form:
        name, source = _text(form, f"cam-{i}-name"), _text(form, f"cam-{i}-source")
        if "***@" in source:  # shown redacted: the stored source (with its credentials) stays
            source = _unredacted(source, name, current)
        if name or source:
            cameras.append(
                {
                    "name": name,
                    "source": source,
                    "enabled": form.get(f"cam-{i}-enabled") == "on",
                    "quiet_hours": _text(form, f"cam-{i}-quiet") or None,
                    "max_fps": max_fps.get(name),
                }
            )
        i += 1
    names = [str(c["name"]) for c in cameras]
    for name in names:
        if not name or "/" in name or names.count(name) > 1:
            raise ValueError(f"camera names must be present, unique and without '/': {name!r}")
    out["cameras"] = cameras
    return out


def _unredacted(shown: str, name: str, current: Settings) -> str:
    """The stored source a redacted one stands for (the same camera's first, else any camera's)."""
    same = [c.source for c in current.cameras if c.name == name] + [c.source for c in current.cameras]
    for source in same:
        if redact_source(source) == shown:
            return source
    raise ValueError(
        f"camera {name!r}: type the source's user and password again ('***' is how they are shown)"
    )


def form_values(settings: Settings, submitted: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The sections and fields to render, with current values, or with the values of a `submitted` form
    (a form that did not validate is shown again as it was typed; the SMTP password is never shown)."""
    sections: dict[str, dict[str, Any]] = {}
    for section, key, kind, label, help_ in FIELDS:
        name = f"{section}.{key}"
        if submitted is not None:
            value: Any = (
                submitted.get(name) in ("on", "true", "1") if kind == "bool" else _typed(submitted, name)
            )
        else:
            value = getattr(getattr(settings, section), key)
            if kind == "list":
                value = ", ".join(value)
        sec = sections.setdefault(section, {"id": section, "title": SECTIONS[section], "fields": []})
        sec["fields"].append(
            {
                "name": name,
                "kind": kind.split(":")[0],
                "choices": kind.split(":")[1].split(",") if kind.startswith("choice:") else [],
                "label": label,
                "help": help_,
                "value": "" if value is None else value,
            }
        )
    return list(sections.values())


def _typed(form: Mapping[str, Any], key: str) -> str:
    v = form.get(key)
    return v if isinstance(v, str) else ""


def camera_rows(settings: Settings, submitted: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The camera rows to render: the settings' cameras, or the rows of a `submitted` form as typed."""
    if submitted is None:
        rows = [{**c.model_dump(), "source": redact_source(c.source)} for c in settings.cameras]
    else:
        rows, i = [], 0
        while f"cam-{i}-name" in submitted or f"cam-{i}-source" in submitted:
            name, source = _typed(submitted, f"cam-{i}-name"), _typed(submitted, f"cam-{i}-source")
            if name.strip() or source.strip():
                rows.append(
                    {
                        "name": name,
                        "source": source,
                        "enabled": submitted.get(f"cam-{i}-enabled") == "on",
                        "quiet_hours": _typed(submitted, f"cam-{i}-quiet") or None,
                    }
                )
            i += 1
    rows += [{"name": "", "source": "", "enabled": True, "quiet_hours": None}] * CAMERA_ROWS_EXTRA
    return rows


def validation_messages(exc: Exception) -> list[str]:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors()]
    return [str(exc)]
