"""A batch video's minutes in the event store, so the web app's statistics cover audited footage.

Rows of the existing `minute_stats` table under the camera `batch:NAME`; a re-run replaces that
camera's rows (one transaction), so resuming or repeating a batch never counts a video twice.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from maskwatch.store import Store
from maskwatch.store.base import StoreError
from maskwatch.store.minutes import COUNT_KEYS
from maskwatch.store.rows import MinuteRow


def replace_minutes(url: str, camera: str, minutes: dict[datetime, Counter]) -> None:
    """Make `camera`'s statistics exactly `minutes` (UTC minute -> counts)."""
    store = Store(url, snapshots_dir=Path("."))  # opening upgrades the schema; no snapshot is written
    try:
        with Session(store.engine) as session, session.begin():
            session.execute(delete(MinuteRow).where(MinuteRow.camera == camera))
            for minute, counts in sorted(minutes.items()):
                session.add(MinuteRow(camera=camera, minute=minute, **{k: counts[k] for k in COUNT_KEYS}))
    except SQLAlchemyError as exc:
        raise StoreError(f"saving batch statistics for {camera} failed: {exc}") from exc
    finally:
        store.engine.dispose()
