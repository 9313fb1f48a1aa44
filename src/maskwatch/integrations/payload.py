"""The JSON of one stored alert event, as MQTT (`{prefix}/events`) and webhooks send it."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from maskwatch.config import Settings
from maskwatch.store import Event


def event_payload(ev: Event, settings: Settings) -> dict[str, Any]:
    """id, camera, UTC time, track, mask label and confidence, the event's URL; apparent gender only
    while `privacy.gender_enabled`. Never the snapshot (MQTT adds it when `mqtt.snapshots` is on)."""
    out: dict[str, Any] = {
        "id": ev.id,
        "camera": ev.camera,
        "time": ev.time.astimezone(UTC).isoformat(),
        "track_id": ev.track_id,
        "mask_label": ev.mask_label,
        "mask_confidence": round(ev.mask_confidence, 4),
        "url": f"{settings.alerts.base_url.rstrip('/')}/events/{ev.id}",
    }
    if settings.privacy.gender_enabled and ev.gender_label is not None:
        out["gender_label"] = ev.gender_label
        out["gender_confidence"] = None if ev.gender_confidence is None else round(ev.gender_confidence, 4)
    return out
