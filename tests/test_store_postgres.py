"""The store on a real PostgreSQL server (the `pg_url` fixture of conftest.py: a throwaway cluster). Skips
without `initdb` / `pg_ctl` on PATH or without the psycopg driver (`pip install "psycopg[binary]"`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from maskwatch.store import MailDraft, Store
from maskwatch.types import Attribute, Face, FrameResult

pytest.importorskip("psycopg")


def test_store_on_postgresql(pg_url, tmp_path):
    store = Store(pg_url, snapshots_dir=tmp_path / "snaps")
    t0 = datetime(2026, 5, 1, 8, 30, 10, tzinfo=UTC)
    face = Face(
        box=(0, 0, 40, 50),
        score=0.9,
        track_id=1,
        mask=Attribute("no_mask", 0.9),
        gender=Attribute("man", 0.9),
    )
    store.record_frame("door", FrameResult("door", 0, 0.0, (face,)), at=t0)
    store.flush_stats(now=t0)
    assert store.stats()["totals"]["unmasked"] == 1
    ev = store.add_event(
        camera="door",
        time=t0,
        track_id=1,
        mask=face.mask,
        gender=face.gender,
        snapshot_jpeg=b"\xff\xd8",
        compose=lambda e: MailDraft("s", "t", "h"),
    )
    assert store.get_event(ev.id).time == t0 and store.list_events(camera="door")[1] == 1
    (msg,), _ = store.list_outbox()
    assert msg.event_ids == [ev.id] and store.claim_message(msg.id) and not store.claim_message(msg.id)
    store.finish_message(msg.id, status="sent")
    assert store.get_event(ev.id).mail_status == "sent"
    store.add_user("admin", "long-password")
    assert (
        store.verify_user("admin", "long-password")
        and store.verify_token(store.create_token("admin")) == "admin"
    )
    store.set_setting_overrides({"alerts": {"cooldown_s": 10}})
    assert store.get_setting_overrides() == {"alerts": {"cooldown_s": 10}}
    assert store.purge_older_than(1, now=t0 + timedelta(days=2)) == 1
    store.close()
    Store(pg_url, snapshots_dir=tmp_path / "snaps").close()  # reopening checks the schema version
