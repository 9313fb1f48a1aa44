"""Alert events as CSV: the one writer behind the web export (`/events.csv`) and `maskwatch events export`.

Rows come oldest first, read in batches by event id (keyset paging: an alert stored during an export is
at most appended, never repeated or skipped), and every text cell that a spreadsheet would run as a
formula (starting with = + - @, a tab or a carriage return) is prefixed with a quote.

Example:
    >>> escape_cell("=HYPERLINK(1)"), escape_cell("door"), escape_cell(0.5)
    ("'=HYPERLINK(1)", 'door', 0.5)
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from maskwatch.store import Event, Store

BATCH = 500


def columns(gender: bool) -> list[str]:
    gender_columns = ["apparent_gender", "gender_confidence"] if gender else []
    return [
        "id",
        "time_utc",
        "camera",
        "track_id",
        "mask_label",
        "mask_confidence",
        *gender_columns,
        "mail_status",
        "snapshot_url",
    ]


def escape_cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas in exported text cells."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def event_row(e: Event, gender: bool) -> list[Any]:
    row: list[Any] = [
        e.id,
        e.time.isoformat(),
        e.camera,
        e.track_id,
        e.mask_label,
        round(e.mask_confidence, 4),
    ]
    if gender:
        row += [e.gender_label, None if e.gender_confidence is None else round(e.gender_confidence, 4)]
    row += [e.mail_status, f"/events/{e.id}/snapshot.jpg" if e.snapshot else ""]
    return [escape_cell(v) for v in row]


def csv_chunks(
    store: Store,
    *,
    gender: bool,
    camera: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    label: str | None = None,
) -> Iterator[str]:
    """The CSV text (header, then the matching events oldest first), a batch of rows at a time."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns(gender))
    for n, e in enumerate(
        store.iter_events(camera=camera, since=since, until=until, label=label, batch=BATCH), start=1
    ):
        writer.writerow(event_row(e, gender))
        if n % BATCH == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
