"""The alert engine: events, snapshots, privacy, quiet hours, cap, digest, and a failing database or disk."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from datetime import datetime

import cv2
import numpy as np
import pytest

from maskwatch.alerts import AlertEngine, MailWorker
from maskwatch.config import Settings, apply_overrides
from maskwatch.store import Store
from maskwatch.types import Attribute, Face, FrameResult

T0 = 1_770_000_000.0  # a fixed wall-clock time for the engine's clock


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


def textured_frame():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)


def person(tid, x=100, label="no_mask", gender="woman"):
    return Face(
        box=(x, 100, x + 80, 200),
        score=0.9,
        track_id=tid,
        mask=Attribute(label, 0.93),
        gender=Attribute(gender, 0.88),
    )


def feed(engine, clock, people, n=20, fps=10.0, cam="door", start=0):
    frame = textured_frame()
    events = []
    for i in range(start, start + n):
        clock.t = T0 + i / fps
        r = FrameResult(
            source=cam, frame_index=i, timestamp=i / fps, faces=tuple(people), frame_size=(640, 360)
        )
        events += engine.observe(cam, r, frame)
    return events


def make(tmp_path, busy_timeout_s=5.0, **kw):
    settings = Settings(data_dir=tmp_path / "data", **kw)
    store = Store(
        settings.db_url, snapshots_dir=settings.data_dir / "snapshots", busy_timeout_s=busy_timeout_s
    )
    clock = Clock()
    return settings, store, AlertEngine(settings, store, clock=clock), clock


def test_one_alert_event_with_snapshot_and_queued_email_without_smtp(tmp_path):
    settings, store, engine, clock = make(tmp_path)
    events = feed(engine, clock, [person(1)], n=40)
    assert len(events) == 1
    assert engine.flush()
    ev = store.get_event(events[0].id)
    assert ev.camera == "door" and ev.track_id == 1 and ev.mask_label == "no_mask"
    assert (
        ev.gender_label == "woman"
        and ev.mail_status == "queued"
        and ev.time.timestamp() == pytest.approx(T0 + 1.0)
    )
    img = cv2.imread(str(store.snapshot_file(ev)))
    assert img.shape == (360, 640, 3)
    assert abs(int(img[100, 140, 2]) - 230) < 40  # the red box on the top edge of the person
    # no SMTP configured: the email stays in the outbox, viewable
    assert MailWorker(settings, store).send_pending_once() == 0
    (msg,), total = store.list_outbox()
    assert total == 1 and msg.status == "queued" and msg.event_ids == [ev.id] and "door" in msg.subject
    stats = store.stats()
    assert stats["totals"]["people"] == 1 and stats["totals"]["unmasked"] == 1
    assert engine.health["store_ok"] and engine.health["alerts"] == 1
    engine.stop()
    store.close()


def test_privacy_blur_and_no_gender(tmp_path):
    settings, store, engine, clock = make(tmp_path, privacy={"blur_snapshots": True, "gender_enabled": False})
    (ev,) = feed(engine, clock, [person(1), person(2, x=400, label="mask")], n=20)
    engine.flush()
    ev = store.get_event(ev.id)
    assert ev.gender_label is None
    img = cv2.imread(str(store.snapshot_file(ev))).astype(float)
    original = textured_frame().astype(float)
    for x in (100, 400):  # both faces pixelated: far less detail than the original noise
        face = img[115:185, x + 15 : x + 65]
        assert (
            np.abs(np.diff(face, axis=1)).mean()
            < 0.3 * np.abs(np.diff(original[115:185, x + 15 : x + 65], axis=1)).mean()
        )
    (msg,), _ = store.list_outbox()
    assert "gender" not in msg.text.lower() and "woman" not in msg.html
    engine.stop()
    store.close()


def test_quiet_hours_suppress_alerts(tmp_path):
    now = datetime.fromtimestamp(T0)
    window = f"{now.hour:02d}:00-{(now.hour + 1) % 24:02d}:00"
    cams = [{"name": "door", "source": "0", "quiet_hours": window}]
    settings, store, engine, clock = make(tmp_path, cameras=cams)
    assert feed(engine, clock, [person(1)], n=30) == []
    assert feed(engine, clock, [person(1)], n=30, cam="other") != []  # other cameras still alert
    engine.flush()
    assert engine.health["quiet_suppressed"] == 1 and store.list_events()[1] == 1
    engine.stop()
    store.close()


def test_hourly_cap_stores_events_without_email(tmp_path):
    settings, store, engine, clock = make(tmp_path, alerts={"max_emails_per_hour": 2})
    events = feed(engine, clock, [person(i, x=10 + 120 * i) for i in range(4)], n=20)
    engine.flush()
    assert len(events) == 4
    statuses = sorted(store.get_event(e.id).mail_status for e in events)
    assert statuses == ["capped", "capped", "queued", "queued"]
    assert store.list_outbox()[1] == 2 and engine.health["capped"] == 2
    engine.stop()
    store.close()


def test_digest_mode_one_email_for_several_people(tmp_path):
    settings, store, engine, clock = make(tmp_path, alerts={"digest_minutes": 1})
    events = feed(engine, clock, [person(i, x=10 + 120 * i) for i in range(3)], n=20)
    engine.flush()
    assert len(events) == 3 and store.list_outbox()[1] == 0
    assert {store.get_event(e.id).mail_status for e in events} == {"digest"}
    wclock = Clock(T0 + 30)
    worker = MailWorker(settings, store, clock=wclock)
    assert worker.queue_digest_if_due() is None  # the oldest waited only 29 s
    wclock.t = T0 + 62
    mid = worker.queue_digest_if_due()
    msg = store.get_message(mid)
    assert sorted(msg.event_ids) == sorted(e.id for e in events) and len(msg.attachments) == 3
    assert "3 people" in msg.subject and all(f"/events/{e.id}" in msg.html for e in events)
    assert worker.queue_digest_if_due() is None  # each event in one digest only
    engine.stop()
    store.close()


def _timed_feed(engine, clock, n, start=0):
    worst = 0.0
    for i in range(start, start + n):
        a = time.perf_counter()
        feed(engine, clock, [person(1)], n=1, start=i)
        worst = max(worst, time.perf_counter() - a)
    return worst


def test_locked_database_video_loop_keeps_running_and_recovers(tmp_path):
    settings, store, engine, clock = make(tmp_path, busy_timeout_s=0.05)
    engine.flush_every_s, engine.retry_s = 0.0, 0.2
    con = sqlite3.connect(settings.data_dir / "maskwatch.db")
    con.execute("BEGIN EXCLUSIVE")  # another program holds the database
    try:
        worst = _timed_feed(engine, clock, 40)
        deadline = time.monotonic() + 5
        while engine.health["store_ok"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worst < 0.25, f"observe blocked the loop for {worst:.3f} s"
        assert not engine.health["store_ok"] and "locked" in engine.health["last_error"]
        assert engine.health["pending"] == 1
    finally:
        con.rollback()
        con.close()
    engine.flush(timeout=10)
    assert engine.health["store_ok"] and engine.health["pending"] == 0
    assert store.list_events()[1] == 1 and store.list_outbox()[1] == 1
    engine.stop()
    store.close()


def test_disk_full_video_loop_keeps_running_and_reports(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs to simulate a full disk: {r.stderr.decode().strip()}")
    try:
        settings = Settings(data_dir=mnt)
        store = Store(settings.db_url, snapshots_dir=mnt / "snapshots")
        clock = Clock()
        engine = AlertEngine(settings, store, clock=clock, retry_s=0.2)
        filler = mnt / "filler"
        with open(filler, "wb") as fh:  # fill the disk
            try:
                while True:
                    fh.write(b"\0" * 65536)
            except OSError:
                pass
        worst = _timed_feed(engine, clock, 40)
        assert worst < 0.25
        deadline = time.monotonic() + 5
        while engine.health["store_ok"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not engine.health["store_ok"]
        assert (
            "no space" in engine.health["last_error"].lower() or "full" in engine.health["last_error"].lower()
        )
        filler.unlink()  # space again: the kept alert is stored
        assert engine.flush(timeout=10) and store.list_events()[1] == 1
        engine.stop()
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_observe_never_raises(tmp_path):
    settings, store, engine, clock = make(tmp_path)

    def broken(*a, **k):
        raise RuntimeError("boom")

    store.record_frame = broken
    assert feed(engine, clock, [person(1)], n=3) == []
    assert "boom" in engine.health["last_error"]
    engine.stop()
    store.close()


def test_simulation_small_no_loss_no_duplicates(tmp_path):
    pytest.importorskip("aiosmtpd")
    from simulate_alerts import simulate_sightings

    out = simulate_sightings(
        people=8, sightings=1200, seconds=120, workdir=tmp_path, max_emails_per_hour=1000
    )
    assert out["sightings"] == 1200
    assert out["events_not_matching_reference"] == 0
    assert out["emails_received"] == out["expected_alerts"] == out["events_stored"]
    assert out["lost"] == 0 and out["duplicates"] == 0


def test_simulate_tool_leaves_no_files_behind(tmp_path, monkeypatch, capsys):
    pytest.importorskip("aiosmtpd")
    import json
    import tempfile

    from simulate_alerts import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = main(["--people", "3", "--sightings", "200", "--minutes", "1"])
    assert out["lost"] == 0 and json.loads(capsys.readouterr().out) == out
    assert list(tmp_path.iterdir()) == []  # the run's databases went with its temporary folder


def test_alerts_disabled_still_records_statistics(tmp_path):
    settings, store, engine, clock = make(tmp_path, alerts={"enabled": False})
    assert feed(engine, clock, [person(1), person(2, x=300, label="mask")], n=30) == []
    assert engine.flush()
    assert store.list_events()[1] == 0
    totals = store.stats()["totals"]
    assert totals["people"] == 2 and totals["compliance"] == 0.5
    engine.stop()
    store.close()


def test_incorrect_mask_event_and_the_setting_that_turns_it_off(tmp_path):
    settings, store, engine, clock = make(tmp_path)
    (ev,) = feed(engine, clock, [person(1, label="incorrect"), person(2, x=300, label="mask")], n=30)
    assert engine.flush()
    stored = store.get_event(ev.id)
    assert stored.mask_label == "incorrect" and stored.mail_status == "queued"
    (msg,), _ = store.list_outbox()
    assert msg.subject.startswith("[maskwatch] Mask worn incorrectly: door")
    totals = store.stats()["totals"]
    assert (totals["incorrect"], totals["masked"], totals["compliance"]) == (1, 1, 0.5)
    # off (as saved from the settings page): no alert for masks worn incorrectly, still counted
    engine.update_settings(apply_overrides(settings, {"alerts": {"incorrect_mask_alerts": False}}))
    assert feed(engine, clock, [person(3, x=500, label="incorrect")], n=30, cam="hall") == []
    assert engine.flush() and store.list_events()[1] == 1
    assert store.stats(camera="hall")["totals"]["incorrect"] == 1
    engine.stop()
    store.close()
