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


def test_claim_due_skips_rows_another_worker_has_locked(pg_url, tmp_path):
    """`claim_due` reads FOR UPDATE SKIP LOCKED: a row another transaction holds is passed over at once
    (no waiting on it, no second claim of it); it is claimable again once that transaction ends."""
    import concurrent.futures

    import sqlalchemy as sa

    store = Store(pg_url, snapshots_dir=tmp_path / "snaps")
    first, second = (store.queue_mail(MailDraft(f"m{i}", "t", "h")) for i in range(2))
    engine = sa.create_engine(pg_url)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    with engine.connect() as other:
        other.execute(sa.text("SELECT id FROM outbox WHERE id = :id FOR UPDATE"), {"id": first})
        try:
            claimed = pool.submit(store.claim_due, 1).result(timeout=20)  # a lock wait times out
        finally:
            other.rollback()  # lets a waiting claim go on, so the test fails instead of hanging
            pool.shutdown()
        assert [m.id for m in claimed] == [second]
    assert [m.id for m in store.claim_due(5)] == [first] and store.claim_due(5) == []
    engine.dispose()
    store.close()
