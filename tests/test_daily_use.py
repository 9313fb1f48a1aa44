"""The routes and store methods behind the pages for daily use (TestClient, a real SQLite store):
acknowledge / delete events, outbox resend, statistics in the site's time zone and custom ranges,
upload progress ids, the server.timezone setting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from maskwatch.config import Settings
from maskwatch.store import MailDraft
from maskwatch.types import Attribute, Face, FrameResult
from web_helpers import csrf_from, login, make_app

T0 = datetime(2026, 7, 1, 22, 30, tzinfo=UTC)  # 00:30 on 2 July in Berlin


@pytest.fixture
def app(tmp_path, tiny_models):
    app, store = make_app(tmp_path, tiny_models, yunet=None, server={"timezone": "Europe/Berlin"})
    yield app, store
    store.close()


@pytest.fixture
def client(app):
    with TestClient(app[0]) as c:
        assert login(c).status_code == 303
        yield c


def _event(store, when=T0, camera="door"):
    return store.add_event(
        camera=camera,
        time=when,
        track_id=1,
        mask=Attribute("no_mask", 0.9),
        gender=None,
        snapshot_jpeg=b"\xff\xd8\xff\xe0 not really a jpeg",
    )


def test_acknowledge_keeps_the_first_and_delete_removes_the_snapshot(app):
    _, store = app
    e = _event(store)
    first = store.acknowledge_event(e.id, "ann", now=T0)
    again = store.acknowledge_event(e.id, "bob")
    assert (first.acknowledged_by, first.acknowledged_at) == ("ann", T0)
    assert (again.acknowledged_by, again.acknowledged_at) == ("ann", T0)
    assert store.acknowledge_event(e.id + 99, "ann") is None
    snapshot = store.snapshot_file(e)
    assert snapshot is not None and snapshot.exists()
    assert store.delete_event(e.id) and not snapshot.exists() and store.get_event(e.id) is None
    assert not store.delete_event(e.id)


def test_events_after_and_last_event_id(app):
    _, store = app
    assert store.last_event_id() == 0
    a, b = _event(store), _event(store, camera="lobby")
    assert store.last_event_id() == b.id
    assert [e.id for e in store.events_after(a.id)] == [b.id]


def test_resend_queues_a_copy_and_leaves_the_original(app):
    _, store = app
    e = _event(store)
    mid = store.queue_mail(MailDraft("alert", "text", "<p>h</p>", to=["a@example.org"]), event_ids=[e.id])
    store.claim_message(mid)
    store.finish_message(mid, status="sent")
    copy = store.resend_message(mid)
    assert copy is not None and copy != mid
    original, new = store.get_message(mid), store.get_message(copy)
    assert original.status == "sent" and new.status == "queued" and new.attempts == 0
    assert (new.subject, new.to, new.event_ids) == ("alert", ["a@example.org"], [e.id])
    assert store.resend_message(mid + 99) is None


def test_day_buckets_follow_the_site_zone(app):
    _, store = app
    face = Face((0, 0, 8, 8), 0.9, track_id=1, mask=Attribute("mask", 0.9))
    result = FrameResult("door", 0, T0.timestamp(), [face])
    store.record_frame("door", result, at=T0, flush=False)
    store.flush_stats(now=T0 + timedelta(minutes=2))
    utc_day = store.stats(bucket="day")["buckets"][0]["t"]
    berlin_day = store.stats(bucket="day", zone=ZoneInfo("Europe/Berlin"))["buckets"][0]["t"]
    assert utc_day == "2026-07-01T00:00:00+00:00"
    assert berlin_day == "2026-07-01T22:00:00+00:00"  # midnight of 2 July in Berlin, as UTC


def test_pages_show_site_times_and_actions_need_csrf(app, client):
    _, store = app
    e = _event(store)
    page = client.get(f"/events/{e.id}")
    assert "2026-07-02 00:30:00 CEST" in page.text
    assert client.post(f"/events/{e.id}/ack", data={}).status_code == 403
    assert client.post(f"/events/{e.id}/delete", data={}).status_code == 403
    token = csrf_from(page.text)
    r = client.post(f"/events/{e.id}/ack", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303 and store.get_event(e.id).acknowledged_by == "admin"
    assert "by admin, " in client.get(f"/events/{e.id}").text
    # typed times are the site's: 00:00-01:00 on 2 July in Berlin holds the event
    listed = client.get("/events", params={"since": "2026-07-02T00:00", "until": "2026-07-02T01:00"})
    assert f'data-event-id="{e.id}"' in listed.text
    assert "2026-07-01T22:30:00+00:00" in client.get("/events.csv").text  # exports stay UTC
    r = client.post(f"/events/{e.id}/delete", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303 and store.get_event(e.id) is None
    assert client.post(f"/events/{e.id}/delete", data={"csrf_token": token}).status_code == 404


def test_stats_custom_range(client):
    ok = client.get("/stats", params={"range": "custom", "since": "2026-07-01", "until": "2026-07-02"})
    assert ok.status_code == 200 and 'value="2026-07-01"' in ok.text
    assert "02 00:00" in ok.text  # hourly labels in the site's zone
    bad = client.get("/stats", params={"range": "custom", "since": "2026-07-03", "until": "2026-07-01"})
    assert bad.status_code == 400


def test_outbox_retry_resend_routes_and_test_email_without_smtp(app, client):
    _, store = app
    mid = store.queue_mail(MailDraft("alert", "t", "<p>h</p>"))
    store.claim_message(mid)
    store.finish_message(mid, status="failed", error="boom")
    token = csrf_from(client.get("/outbox").text)
    r = client.post(f"/outbox/{mid}/retry", data={"csrf_token": token})
    assert r.status_code == 200 and "queued again" in r.text and store.get_message(mid).status == "queued"
    assert client.post(f"/outbox/{mid}/retry", data={"csrf_token": token}).status_code == 404  # not failed
    r = client.post(f"/outbox/{mid}/resend", data={"csrf_token": token})
    assert "copy of message" in r.text
    r = client.post("/outbox/test", data={"csrf_token": token, "to": "x@example.org"})
    assert "Test email not sent: SMTP is not configured" in r.text
    assert client.post("/outbox/test", data={}).status_code == 403


def test_upload_progress_of_an_unknown_job(client):
    assert client.get("/upload/jobs/abcdefgh12").json() == {"state": "none", "done": 0, "total": 0}
    token = csrf_from(client.get("/upload").text)
    assert client.post("/upload/jobs/abcdefgh12/cancel", data={"csrf_token": token}).json() == {
        "cancelled": False
    }


def test_timezone_setting_is_validated():
    assert Settings(server={"timezone": "Asia/Tokyo"}).server.timezone == "Asia/Tokyo"
    with pytest.raises(ValidationError, match="IANA"):
        Settings(server={"timezone": "Mars/Olympus"})
    assert ZoneInfo(Settings().server.timezone)  # the machine's zone, or UTC
