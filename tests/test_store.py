"""The event store: schema, statistics, events, outbox, users, tokens, settings, retention, errors."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from maskwatch.config import Settings
from maskwatch.store import SCHEMA_VERSION, MailDraft, Store, StoreError
from maskwatch.types import Attribute, Face, FrameResult

T0 = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'db' / 'm.db'}", snapshots_dir=tmp_path / "snaps")
    yield s
    s.close()


def face(tid, mask="no_mask", gender="man", x=0):
    return Face(
        box=(x, 0, x + 50, 60),
        score=0.9,
        track_id=tid,
        mask=Attribute(mask, 0.9),
        gender=Attribute(gender, 0.9),
    )


def frame(*faces, i=0):
    return FrameResult(source="cam", frame_index=i, timestamp=i / 10, faces=faces)


def test_from_settings_uses_data_dir_and_wal(tmp_path):
    settings = Settings(data_dir=tmp_path / "d")
    s = Store.from_settings(settings)
    assert s.schema_version() == SCHEMA_VERSION
    assert (tmp_path / "d" / "maskwatch.db").is_file()
    assert s.snapshots_dir == tmp_path / "d" / "snapshots"
    with s.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    s.close()


def test_newer_schema_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    Store(url, snapshots_dir=tmp_path).close()
    con = sqlite3.connect(tmp_path / "m.db")
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer than this maskwatch"):
        Store(url, snapshots_dir=tmp_path)


def test_stats_count_distinct_tracks_per_minute(store):
    # track 1 seen in 30 frames (uncertain first, then no_mask: latest label wins), track 2 masked woman
    for i in range(30):
        f1 = face(1, "uncertain" if i < 5 else "no_mask")
        store.record_frame(
            "door", frame(f1, face(2, "mask", "woman", x=100), i=i), at=T0 + timedelta(seconds=i)
        )
    # next minute: track 2 again and an untracked face (counted as the most seen in one frame)
    untracked = Face(box=(300, 0, 350, 60), score=0.9, mask=Attribute("mask", 0.9))
    store.record_frame(
        "door", frame(face(2, "mask", "woman", x=100), untracked), at=T0 + timedelta(minutes=1)
    )
    store.record_frame("hall", frame(face(7, "mask", "uncertain")), at=T0 + timedelta(minutes=61))
    out = store.stats(bucket="minute")
    assert [b["people"] for b in out["buckets"]] == [2, 2, 1]
    first = out["buckets"][0]
    assert (first["masked"], first["unmasked"], first["uncertain"], first["man"], first["woman"]) == (
        1,
        1,
        0,
        1,
        1,
    )
    assert first["compliance"] == 0.5
    assert out["per_camera"]["door"]["people"] == 4 and out["per_camera"]["hall"]["people"] == 1
    assert out["totals"]["masked"] == 4 and out["totals"]["compliance"] == pytest.approx(0.8)
    hourly = store.stats(bucket="hour")
    assert [b["people"] for b in hourly["buckets"]] == [4, 1]
    assert store.stats(camera="hall")["totals"]["people"] == 1
    assert (
        store.stats(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=2))["totals"]["people"] == 2
    )
    assert store.cameras() == ["door", "hall"]


def test_stats_flushes_survive_reopen_and_add_up(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    s = Store(url, snapshots_dir=tmp_path)
    s.record_frame("door", frame(face(1), face(2, x=100)), at=T0)
    s.close()  # flushes
    s = Store(url, snapshots_dir=tmp_path)  # same minute, new process: adds up
    s.record_frame("door", frame(face(9)), at=T0 + timedelta(seconds=3))
    assert s.stats()["totals"]["people"] == 3
    s.close()


def test_stats_count_masks_worn_incorrectly_as_not_compliant(store):
    faces = [face(1, "mask"), face(2, "no_mask", x=60), face(3, "incorrect", x=120), face(4, "mask", x=180)]
    store.record_frame("door", frame(*faces), at=T0)
    # a person whose label goes from no_mask to incorrect counts once, with the latest label
    store.record_frame("door", frame(face(2, "incorrect", x=60), i=1), at=T0 + timedelta(seconds=1))
    store.record_frame("hall", frame(face(9, "incorrect")), at=T0)
    out = store.stats()
    door = out["per_camera"]["door"]
    assert (door["people"], door["masked"], door["unmasked"], door["incorrect"]) == (4, 2, 0, 2)
    assert door["compliance"] == 0.5  # 2 masked of 4: masks worn incorrectly do not comply
    assert out["per_camera"]["hall"]["compliance"] == 0.0
    assert out["totals"]["incorrect"] == 3 and out["buckets"][0]["incorrect"] == 3


def test_schema_1_database_is_migrated_and_keeps_its_statistics(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    s = Store(url, snapshots_dir=tmp_path)
    s.record_frame("door", frame(face(1, "mask"), face(2, x=60)), at=T0)
    s.close()
    con = sqlite3.connect(tmp_path / "m.db")  # make it a database written before `incorrect` existed
    con.execute("ALTER TABLE minute_stats DROP COLUMN incorrect")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    s = Store(url, snapshots_dir=tmp_path)
    assert s.schema_version() == SCHEMA_VERSION == 3  # 1 -> 2 -> 3
    s.record_frame("door", frame(face(3, "incorrect")), at=T0 + timedelta(seconds=5))
    totals = s.stats()["totals"]
    assert (totals["people"], totals["masked"], totals["unmasked"], totals["incorrect"]) == (3, 1, 1, 1)
    s.close()


def test_events_snapshots_and_paging(store):
    for i in range(5):
        store.add_event(
            camera="door" if i % 2 else "hall",
            time=T0 + timedelta(seconds=i),
            track_id=i,
            mask=Attribute("no_mask", 0.91),
            gender=Attribute("woman", 0.8) if i else None,
            snapshot_jpeg=b"\xff\xd8jpeg" if i == 4 else None,
        )
    events, total = store.list_events(limit=2)
    assert total == 5 and [e.track_id for e in events] == [4, 3]  # newest first
    assert events[0].time == T0 + timedelta(seconds=4) and events[0].time.tzinfo is not None
    assert store.snapshot_file(events[0]).read_bytes() == b"\xff\xd8jpeg"
    assert store.snapshot_file(events[1]) is None
    assert store.list_events(camera="door")[1] == 2
    assert store.list_events(since=T0 + timedelta(seconds=3))[1] == 2
    assert store.list_events(label="mask")[1] == 0
    store.add_event(
        camera="door", time=T0, track_id=9, mask=Attribute("incorrect", 0.88), gender=None, snapshot_jpeg=None
    )
    (inc,), n = store.list_events(label="incorrect")
    assert n == 1 and inc.mask_label == "incorrect" and inc.to_dict()["mask_label"] == "incorrect"
    e = store.get_event(events[0].id)
    assert e == events[0] and e.gender_label == "woman"
    assert store.get_event(999) is None
    assert [ev.track_id for ev in store.iter_events(batch=2)] == [0, 1, 2, 3, 4, 9]


def test_event_and_email_are_one_transaction(store):
    def boom(ev):
        raise RuntimeError("compose failed")

    with pytest.raises(RuntimeError):
        store.add_event(
            camera="c",
            time=T0,
            track_id=1,
            mask=Attribute("no_mask", 0.9),
            gender=None,
            snapshot_jpeg=b"x",
            compose=boom,
        )
    assert store.list_events()[1] == 0 and store.list_outbox()[1] == 0
    ev = store.add_event(
        camera="c",
        time=T0,
        track_id=1,
        mask=Attribute("no_mask", 0.9),
        gender=None,
        snapshot_jpeg=b"x",
        compose=lambda e: MailDraft(subject=f"event {e.id}", text="t", html="h"),
    )
    assert ev.mail_status == "queued"
    (msg,), _ = store.list_outbox()
    assert msg.subject == f"event {ev.id}" and msg.event_ids == [ev.id] and msg.attachments == [ev.snapshot]


def test_outbox_claim_is_exclusive_and_recovery_never_resends(store):
    mid = store.queue_mail(MailDraft(subject="s", text="t", html="h", to=["a@example.org"]))
    assert [m.id for m in store.due_messages()] == [mid]
    assert store.claim_message(mid) is True
    assert store.claim_message(mid) is False  # a second worker cannot take it
    assert store.due_messages() == []
    assert store.recover_interrupted(stale_s=60) == 0  # maybe another worker is still sending it
    assert store.recover_interrupted() == 1  # the process died mid-send
    m = store.get_message(mid)
    assert m.status == "failed" and "never sent twice" in m.last_error and m.attempts == 1
    assert store.retry_message(mid) and store.get_message(mid).status == "queued"


def test_claim_due_takes_oldest_due_once_and_release_gives_back_uncounted(store):
    ids = [store.queue_mail(MailDraft(subject=f"m{i}", text="t", html="h")) for i in range(3)]
    first = store.claim_due(2)
    assert [m.id for m in first] == ids[:2] and {m.status for m in first} == {"sending"}
    assert [m.attempts for m in first] == [1, 1]
    assert [m.id for m in store.claim_due(5)] == [ids[2]]  # the claimed ones are nobody else's
    assert store.claim_due(5) == []
    later = datetime.now(UTC) + timedelta(hours=1)
    store.release_message(ids[0], error="no recipients", next_attempt=later)
    m = store.get_message(ids[0])
    assert (m.status, m.attempts, m.last_error) == ("queued", 0, "no recipients")
    assert store.claim_due(5) == []  # not due before `later`
    assert [m.id for m in store.claim_due(5, now=later)] == [ids[0]]


def test_users_and_tokens(store):
    assert not store.has_users()
    store.add_user("admin", "s3cret-pass")
    assert store.has_users() and store.list_users() == ["admin"]
    assert store.verify_user("admin", "s3cret-pass")
    assert not store.verify_user("admin", "wrong-pass") and not store.verify_user("nobody", "s3cret-pass")
    with pytest.raises(ValueError):
        store.add_user("x", "short")
    token = store.create_token("admin", "script")
    assert store.verify_token(token) == "admin" and store.verify_token(token + "x") is None
    with store.engine.connect() as c:  # only hashes are stored
        stored = " ".join(
            str(r)
            for r in c.exec_driver_sql(
                "SELECT token_hash, user, label, created FROM tokens"
                " UNION ALL SELECT name, password_hash, '', created FROM users"
            )
        )
    assert token not in stored and "s3cret-pass" not in stored
    assert store.revoke_token(token) and store.verify_token(token) is None
    with pytest.raises(ValueError):
        store.create_token("nobody")


def test_setting_overrides_roundtrip(store):
    assert store.get_setting_overrides() == {}
    store.set_setting_overrides({"alerts": {"cooldown_s": 60}, "smtp": {"recipients": ["a@example.org"]}})
    assert store.get_setting_overrides()["alerts"]["cooldown_s"] == 60


def test_purge_deletes_old_events_snapshots_stats_and_sent_mail(store):
    now = datetime.now(UTC)
    old = store.add_event(
        camera="c",
        time=now - timedelta(days=40),
        track_id=1,
        mask=Attribute("no_mask", 0.9),
        gender=None,
        snapshot_jpeg=b"old",
        compose=lambda e: MailDraft("s", "t", "h"),
    )
    new = store.add_event(
        camera="c", time=now, track_id=2, mask=Attribute("no_mask", 0.9), gender=None, snapshot_jpeg=b"new"
    )
    old_file = store.snapshot_file(old)
    store.finish_message(store.list_outbox()[0][0].id, status="sent")
    store.record_frame("c", frame(face(1)), at=now - timedelta(days=40))
    store.flush_stats(now=now)
    assert store.purge_older_than(30) == 1
    assert not old_file.exists() and store.snapshot_file(new) is not None
    assert store.get_event(old.id) is None and store.list_outbox()[1] == 0
    assert store.stats()["totals"]["people"] == 0


def test_locked_database_gives_a_clear_store_error(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'm.db'}", snapshots_dir=tmp_path, busy_timeout_s=0.1)
    con = sqlite3.connect(tmp_path / "m.db")
    con.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            s.add_event(
                camera="c",
                time=T0,
                track_id=1,
                mask=Attribute("no_mask", 0.9),
                gender=None,
                snapshot_jpeg=b"jpeg",
            )
        assert list((tmp_path / "2026-03-01").glob("*.jpg")) == []  # no orphan snapshot left behind
    finally:
        con.rollback()
        con.close()
    s.close()


def test_purge_deletes_finished_webhook_deliveries_but_keeps_queued_ones(store):
    now = datetime.now(UTC)
    ev = store.add_event(
        camera="c", time=now, track_id=1, mask=Attribute("no_mask", 0.9), gender=None, snapshot_jpeg=None
    )
    done, waiting = store.queue_webhooks(ev.id, [("a", {"id": ev.id}), ("b", {"id": ev.id})])
    store.finish_webhook(done, status="sent")
    store.purge_older_than(30, now=now + timedelta(days=40))
    assert [d.id for d in store.list_webhook_deliveries()[0]] == [waiting]  # still to be delivered
