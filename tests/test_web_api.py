"""Web app through FastAPI's TestClient: auth, CSRF, REST API, uploads, pages, settings, live WebSocket.

Uses the real Store, AlertEngine, detector (YuNet copy from ../shared, else res10) and a tiny on-the-fly
attribute model (tests/vision_helpers.py), so no trained model is needed here.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from maskwatch.alerts import MailWorker
from maskwatch.sources import redact_source
from maskwatch.store import MailDraft, Store
from maskwatch.types import MASK_LABELS, Attribute, Face, FrameResult
from maskwatch.web import create_app
from maskwatch.web.auth import LoginLimiter, safe_next
from web_helpers import (
    PASSWORD,
    csrf_from,
    face_tiles,
    jpeg,
    login,
    make_app,
    scene,
    shared_yunet,
    web_settings,
    write_clip,
)


@pytest.fixture(scope="session")
def tiles():
    """Two face photos (one masked, one not): ../shared's real ones, else a fallback (web_helpers)."""
    return face_tiles()


def _make(tmp_path, tiny_models, *, users=True, **extra):
    return make_app(tmp_path, tiny_models, users=None if users else {}, **extra)


@pytest.fixture
def web(tmp_path, tiny_models):
    app, store = _make(tmp_path, tiny_models)
    with TestClient(app, base_url="http://testserver") as client:
        yield client, app.state.runtime
    store.close()


@pytest.fixture
def authed(web):
    client, rt = web
    assert login(client).status_code == 303
    return client, rt


def _csrf(client, path="/settings"):
    return csrf_from(client.get(path).text)


# -- health, headers, anonymous access ------------------------------------------------------------


def test_health_is_public_and_headers_are_safe(web):
    client, _ = web
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/upload",
        "/events",
        "/events.csv",
        "/stats",
        "/outbox",
        "/settings",
        "/api/docs",
        "/events/1/snapshot.jpg",
    ],
)
def test_pages_redirect_to_login(web, path):
    client, _ = web
    r = client.get(path, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize(
    "path", ["/api/events", "/api/stats", "/api/cameras", "/api/status", "/api/openapi.json"]
)
def test_api_needs_auth(web, path):
    client, _ = web
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_detect_needs_auth(web, tiles):
    client, _ = web
    r = client.post("/api/detect", files={"file": ("a.jpg", jpeg(scene(tiles)), "image/jpeg")})
    assert r.status_code == 401


def test_safe_next_blocks_open_redirects():
    assert safe_next("/events?page=2") == "/events?page=2"
    for bad in ("https://evil.example", "//evil.example", "/\\evil", None, ""):
        assert safe_next(bad) == "/"


def test_redact_source_hides_credentials():
    assert redact_source("rtsp://user:secret@10.0.0.5/stream") == "rtsp://***@10.0.0.5/stream"


# -- login, CSRF, rate limit, setup -----------------------------------------------------------------


def test_login_logout_and_csrf(web):
    client, _ = web
    r = client.post("/login", data={"username": "admin", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 403  # no CSRF token
    r = login(client, password="wrong password")
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    r = login(client)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert client.get("/").status_code == 200
    token = _csrf(client, "/")
    assert client.post("/logout", data={}, follow_redirects=False).status_code == 403
    assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303


def test_login_rate_limit(web):
    client, rt = web
    rt.limiter = LoginLimiter(name_failures=3, address_failures=4, window_s=60)
    for _ in range(2):
        assert login(client, password="wrong password").status_code == 401
    r = login(client, password="wrong password")  # the name backs off failed attempts
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert login(client).status_code == 303  # never the right password (tests/test_access.py)
    client.cookies.clear()
    assert login(client, user="other", password="wrong password").status_code == 401
    r = login(client)  # 4 failures from this address: now it waits, whatever it sends
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_first_run_setup(tmp_path, tiny_models):
    app, store = _make(tmp_path, tiny_models, users=False)
    rt = app.state.runtime
    assert rt.setup_token
    with TestClient(app) as client:
        assert "one-time setup link" in client.get("/login").text
        assert client.get("/setup").status_code == 404
        assert client.get("/setup?token=wrong").status_code == 404
        page = client.get(f"/setup?token={rt.setup_token}")
        assert page.status_code == 200
        form = {"csrf_token": csrf_from(page.text), "token": rt.setup_token, "username": "boss"}
        r = client.post("/setup", data={**form, "password": "short", "password2": "short"})
        assert r.status_code == 400 and "at least 8" in r.text
        r = client.post(
            "/setup", data={**form, "password": PASSWORD, "password2": PASSWORD}, follow_redirects=False
        )
        assert r.status_code == 303
        assert client.get("/").status_code == 200  # logged in
        assert store.verify_user("boss", PASSWORD)
        assert client.get(f"/setup?token={form['token']}").status_code == 404  # once only
    store.close()


# -- REST API -----------------------------------------------------------------------------------------


def test_api_with_bearer_token(authed, tiles):
    client, rt = authed
    page = client.post("/settings/tokens", data={"csrf_token": _csrf(client), "label": "test"})
    token = re.search(r"(mw_[\w-]+)", page.text).group(1)
    api = TestClient(client.app)  # no cookies: only the token
    h = {"Authorization": f"Bearer {token}"}
    assert api.get("/api/cameras", headers=h).json()["cameras"] == []
    assert api.get("/api/events", headers=h).json()["total"] == 0
    assert "buckets" in api.get("/api/stats?bucket=minute", headers=h).json()
    assert "/api/detect" in api.get("/api/openapi.json", headers=h).json()["paths"]
    r = api.post("/api/detect", headers=h, files={"file": ("s.jpg", jpeg(scene(tiles)), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["frame_size"] == [640, 480]
    assert len(body["faces"]) == 2
    for face in body["faces"]:
        assert set(face) >= {"box", "score", "landmarks", "track_id", "mask", "gender"}
        assert face["mask"]["label"] in MASK_LABELS
        assert 0 <= face["mask"]["confidence"] <= 1
        x1, y1, x2, y2 = face["box"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480


def test_session_api_post_needs_csrf_header(authed, tiles):
    client, _ = authed
    files = {"file": ("s.jpg", jpeg(scene(tiles)), "image/jpeg")}
    assert client.post("/api/detect", files=files).status_code == 403
    r = client.post("/api/detect", files=files, headers={"X-CSRF-Token": _csrf(client)})
    assert r.status_code == 200


def test_detect_rejects_bad_uploads(authed):
    client, _ = authed
    h = {"X-CSRF-Token": _csrf(client)}
    cases = [
        ({"file": ("a.txt", b"hello, not an image", "text/plain")}, 415),
        ({"file": ("a.jpg", b"", "image/jpeg")}, 400),
        ({"file": ("a.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 100, "image/jpeg")}, 422),  # corrupt JPEG
        ({"file": ("evil.jpg", b"#!/bin/sh\nrm -rf /\n", "image/jpeg")}, 415),  # name/type lie
        ({"other": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")}, 422),  # no 'file' field
    ]
    for files, status in cases:
        r = client.post("/api/detect", files=files, headers=h)
        assert r.status_code == status, (files, r.status_code, r.text)
        assert "detail" in r.json()


def test_upload_size_limit(tmp_path, tiny_models):
    app, store = _make(tmp_path, tiny_models, web={"max_upload_mb": 1})
    with TestClient(app) as client:
        login(client)
        big = b"\xff\xd8\xff\xe0" + b"\x00" * (2 << 20)
        r = client.post(
            "/api/detect",
            files={"file": ("big.jpg", big, "image/jpeg")},
            headers={"X-CSRF-Token": _csrf(client)},
        )
        assert r.status_code == 413 and "limit is 1 MB" in r.json()["detail"]
    store.close()


# -- pages ---------------------------------------------------------------------------------------------


def _add_event(store, camera="door", minutes_ago=0, label="no_mask"):
    img = np.full((120, 160, 3), 90, np.uint8)
    return store.add_event(
        camera=camera,
        time=datetime.now(UTC) - timedelta(minutes=minutes_ago),
        track_id=3,
        mask=Attribute(label, 0.93),
        gender=Attribute("woman", 0.81),
        snapshot_jpeg=jpeg(img),
    )


def test_events_pages_csv_and_api(authed):
    client, rt = authed
    ev = _add_event(rt.store, "=cmd|calc")
    _add_event(rt.store, "lobby", minutes_ago=90)
    page = client.get("/events")
    assert page.status_code == 200 and f'data-event-id="{ev.id}"' in page.text and "2 events" in page.text
    assert "apparent" in page.text.lower()
    only = client.get("/events?camera=lobby")
    assert "1 event" in only.text and f'data-event-id="{ev.id}"' not in only.text
    since = (datetime.now(UTC) - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M")
    assert "1 event" in client.get(f"/events?since={since}").text
    assert client.get("/events?since=yesterday").status_code == 400
    thumb = client.get(f"/events/{ev.id}/thumb.jpg")
    assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"
    assert client.get(f"/events/{ev.id}/snapshot.jpg").status_code == 200
    assert client.get(f"/events/{ev.id}").status_code == 200
    assert client.get("/events/999999").status_code == 404
    assert client.get("/events/../../etc/passwd/snapshot.jpg").status_code == 404
    csv_text = client.get("/events.csv").text
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("id,time_utc,camera") and len(lines) == 3
    assert "'=cmd|calc" in csv_text  # spreadsheet formula neutralised
    api = client.get("/api/events?limit=1").json()
    assert api["total"] == 2 and api["events"][0]["snapshot_url"].endswith("/snapshot.jpg")
    assert "snapshot" not in api["events"][0]


def test_incorrect_mask_events_in_pages_csv_and_api(authed):
    client, rt = authed
    ev = _add_event(rt.store, "door", label="incorrect")
    _add_event(rt.store, "door", minutes_ago=5)
    page = client.get("/events?label=incorrect")
    assert "1 event" in page.text and '<td class="label-incorrect">incorrect</td>' in page.text
    assert '<option value="incorrect" selected>' in page.text
    assert 'class="label-incorrect">incorrect (0.93)' in client.get(f"/events/{ev.id}").text
    lines = client.get("/events.csv").text.strip().splitlines()
    assert len(lines) == 3 and f"{ev.id}," in lines[1] and ",door,3,incorrect,0.93," in lines[1]
    only = client.get("/events.csv?label=incorrect").text.strip().splitlines()
    assert len(only) == 2 and ",incorrect," in only[1]
    api = client.get("/api/events?label=incorrect").json()
    assert api["total"] == 1 and api["events"][0]["mask_label"] == "incorrect"


def test_stats_page_and_api(authed, tiles):
    client, rt = authed
    rt.session("door").process(scene(tiles), 0, time.time())  # counted through the alert engine
    assert rt.alerts.flush()
    page = client.get("/stats?range=1h")
    assert page.status_code == 200 and page.text.count("<svg") >= 3 and "apparent gender" in page.text
    data = client.get("/api/stats?bucket=minute").json()
    assert data["totals"]["people"] == 2 and "man" in data["totals"]


def test_stats_page_shows_masks_worn_incorrectly(authed):
    client, rt = authed
    faces = [
        Face((0, 0, 50, 50), 0.9, track_id=1, mask=Attribute("mask", 0.9)),
        Face((60, 0, 110, 50), 0.9, track_id=2, mask=Attribute("incorrect", 0.9)),
        Face((120, 0, 170, 50), 0.9, track_id=3, mask=Attribute("incorrect", 0.9)),
        Face((180, 0, 230, 50), 0.9, track_id=4, mask=Attribute("no_mask", 0.9)),
    ]
    rt.store.record_frame("door", FrameResult("door", 0, 0.0, faces))
    page = client.get("/stats?range=1h").text
    assert '<div class="incorrect"><dt>Worn incorrectly</dt><dd>2</dd></div>' in page
    assert "<td>door</td><td>4</td><td>1</td><td>1</td><td>2</td><td>0</td>" in page  # per camera
    assert "25%" in page  # compliance: 1 of 4, masks worn incorrectly do not comply
    assert 'class="bar incorrect"' in page and '<span class="key incorrect"></span>' in page
    totals = client.get("/api/stats").json()["totals"]
    assert (totals["incorrect"], totals["compliance"]) == (2, 0.25)


def test_outbox_pages(authed):
    client, rt = authed
    mid = rt.store.queue_mail(MailDraft(subject="No mask at door", text="Someone <b>", html="<p>hi</p>"))
    page = client.get("/outbox")
    assert "No mask at door" in page.text and "queued" in page.text
    msg = client.get(f"/outbox/{mid}")
    assert msg.status_code == 200 and "Someone &lt;b&gt;" in msg.text and 'sandbox=""' in msg.text
    assert client.get("/outbox/424242").status_code == 404


def test_upload_photo_page(authed, tiles):
    client, _ = authed
    page = client.get("/upload")
    r = client.post(
        "/upload",
        data={"csrf_token": csrf_from(page.text)},
        files={"file": ("people.jpg", jpeg(scene(tiles)), "image/jpeg")},
    )
    assert r.status_code == 200, r.text
    assert r.text.count("<tr data-mask=") == 2
    rid = re.search(r"/upload/([\w-]+)/media", r.text).group(1)
    media = client.get(f"/upload/{rid}/media")
    assert media.status_code == 200 and media.content[:3] == b"\xff\xd8\xff"
    result = client.get(f"/upload/{rid}/result.json")
    assert "attachment" in result.headers["content-disposition"] and len(result.json()["faces"]) == 2
    assert TestClient(client.app).get(f"/upload/{rid}/media", follow_redirects=False).status_code == 303
    bad = client.post(
        "/upload",
        data={"csrf_token": csrf_from(page.text)},
        files={"file": ("x.exe", b"MZ\x90\x00binary", "application/octet-stream")},
    )
    assert bad.status_code == 415 and "unsupported file type" in bad.text


def test_upload_video(authed, tiles, tmp_path):
    client, _ = authed
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    frame = scene(tiles)
    for _ in range(8):
        writer.write(frame)
    writer.release()
    page = client.get("/upload")
    r = client.post(
        "/upload",
        data={"csrf_token": csrf_from(page.text)},
        files={"file": ("clip.avi", path.read_bytes(), "video/x-msvideo")},
    )
    assert r.status_code == 200, r.text
    assert "8 frames analysed, 2 tracked people" in r.text
    rid = re.search(r"/upload/([\w-]+)/media", r.text).group(1)
    media = client.get(f"/upload/{rid}/media")
    assert media.headers["content-type"] == "video/webm" and media.content[:4] == b"\x1a\x45\xdf\xa3"
    assert len(client.get(f"/upload/{rid}/result.json").json()["frames"]) == 8


def test_settings_save_validate_and_gender_off(authed):
    client, rt = authed
    page = client.get("/settings")
    assert page.status_code == 200 and "apparent gender" in page.text.lower()
    form = {k: v for k, v in re.findall(r'<input name="([\w.]+)" value="([^"]*)"', page.text)}
    form.update(
        {
            "csrf_token": csrf_from(page.text),
            "detector.score_threshold": "0.7",
            "alerts.enabled": "on",
            "smtp.recipients": "a@example.org, b@example.org",
            "smtp.security": "ssl",
            "privacy.retention_days": "7",
            "cam-0-name": "door",
            "cam-0-source": "rtsp://u:p@cam/1",
            "cam-0-enabled": "on",
        }
    )
    r = client.post("/settings", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    s = rt.settings
    assert s.detector.score_threshold == 0.7 and s.privacy.retention_days == 7
    assert s.smtp.recipients == ["a@example.org", "b@example.org"] and s.smtp.security == "ssl"
    assert [c.name for c in s.cameras] == ["door"] and not s.privacy.gender_enabled  # checkbox left off
    assert "Thorough search on photos" in page.text and not s.detector.thorough_stills  # left off too
    assert 'name="alerts.incorrect_mask_alerts" checked' in page.text  # on by default
    assert not s.alerts.incorrect_mask_alerts and rt.alerts.rules.settings.incorrect_mask_alerts is False
    assert rt.store.get_setting_overrides()["detector"]["score_threshold"] == "0.7"
    cams = client.get("/api/cameras").json()
    assert cams["gender"] is False and cams["cameras"][0]["source"] == "rtsp://***@cam/1"
    # the settings page shows the source redacted, and saving it unchanged keeps the credentials
    again = client.get("/settings").text
    assert "rtsp://***@cam/1" in again and "u:p@" not in again
    form2 = {k: v for k, v in re.findall(r'<input name="([\w.-]+)" value="([^"]*)"', again)}
    form2.update({"csrf_token": csrf_from(again), "cam-0-enabled": "on", "smtp.security": "ssl"})
    r2 = client.post("/settings", data=form2, follow_redirects=False)
    assert r2.status_code == 303, r2.text
    assert rt.settings.cameras[0].source == "rtsp://u:p@cam/1"
    assert "Man" not in client.get("/").text and "apparent gender" not in client.get("/stats").text
    form["detector.score_threshold"] = "5"
    bad = client.post("/settings", data=form)
    assert bad.status_code == 400 and "score_threshold" in bad.text
    assert rt.settings.detector.score_threshold == 0.7
    form.update({"detector.score_threshold": "0.7", "cam-1-name": "door", "cam-1-source": "1"})
    dup = client.post("/settings", data=form)
    assert dup.status_code == 400 and "unique" in dup.text
    assert len(rt.settings.cameras) == 1


def test_add_user_from_settings(authed):
    client, rt = authed
    r = client.post(
        "/settings/users",
        data={"csrf_token": _csrf(client), "username": "ops", "password": "another long password"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and rt.store.verify_user("ops", "another long password")


# -- live -----------------------------------------------------------------------------------------------


def test_webcam_websocket(authed, tiles):
    client, rt = authed
    frame = jpeg(scene(tiles))
    with client.websocket_connect("/ws/webcam") as ws:
        for i in range(3):
            ws.send_bytes(frame)
            msg = ws.receive_json()
            assert msg["type"] == "result" and msg["seq"] == i + 1
            assert len(msg["result"]["faces"]) == 2 and msg["counts"]["people"] == 2
            assert msg["counts"]["incorrect"] == 0  # a two-label model never answers incorrect
        assert msg["result"]["faces"][0]["track_id"] is not None
        ws.send_bytes(b"garbage")
        assert ws.receive_json()["type"] == "error"
    assert rt.alerts.health["frames"] >= 3  # the webcam goes through the alert engine


def test_live_page_legend_and_counters_show_incorrect_masks(authed):
    page = authed[0].get("/").text
    assert '<span class="key incorrect"></span> incorrect mask (nose or mouth uncovered)' in page
    assert 'data-counter="incorrect"' in page


def test_webcam_websocket_refuses_anonymous_and_cross_site(web):
    client, _ = web
    with pytest.raises(WebSocketDisconnect) as exc, client.websocket_connect("/ws/webcam") as ws:
        ws.receive_json()
    assert exc.value.code == 1008
    login(client)
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect("/ws/webcam", headers={"Origin": "http://evil.example"}) as ws,
    ):
        ws.receive_json()


def test_camera_streams(tmp_path, tiny_models, tiles):
    image = scene(tiles)
    clip = tmp_path / "door.avi"  # a server-side video file as the camera
    write_clip(clip, [image] * 20)
    settings = web_settings(
        tmp_path, model_dir=tiny_models, yunet=shared_yunet(), cameras=[{"name": "door", "source": str(clip)}]
    )
    store = Store.from_settings(settings)
    store.add_user("admin", PASSWORD)
    app = create_app(settings, store=store, mailer=MailWorker(settings, store))
    with TestClient(app) as client:
        login(client)
        deadline = time.time() + 20
        cam = {}
        while time.time() < deadline:
            cam = client.get("/api/cameras").json()["cameras"][0]
            if cam["frames"] >= 3:
                break
            time.sleep(0.2)
        assert cam["state"] == "running" and cam["counts"]["people"] == 2, cam
        frame = client.get("/live/cameras/door/frame.jpg")
        assert cv2.imdecode(np.frombuffer(frame.content, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
        assert client.get("/live/cameras/nope/stream.mjpg").status_code == 404
        page = client.get("/").text
        assert 'data-camera="door"' in page and "stream.mjpg" not in page  # tiles come over /ws/live
        assert cam["latency_ms"]["p95"] > 0 and cam["dropped"] >= 0 and cam["last_frame_age_s"] < 5
    store.close()


def test_api_docs_page(authed):
    client, _ = authed
    page = client.get("/api/docs")
    assert page.status_code == 200 and "/api/detect" in page.text and "/api/health" in page.text


def test_no_inline_scripts_in_pages(authed):
    client, _ = authed
    for path in ("/", "/upload", "/events", "/stats", "/outbox", "/settings", "/api/docs"):
        html = client.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert not re.search(r"<[^>]+\son[a-z]+=", html), path
        assert not re.search(r"<[^>]+\sstyle=", html), path


def test_csv_exports_share_one_keyset_paged_formula_safe_writer(authed, tmp_path, monkeypatch):
    """The web and CLI exports are the same rows; an alert stored mid-export neither repeats nor shifts
    rows (ids only grow), and formulas are neutralised in both."""
    import maskwatch.alerts.export as export

    client, rt = authed
    monkeypatch.setattr(export, "BATCH", 2)  # several batches with a handful of events
    for i in range(5):
        _add_event(rt.store, "=cmd|calc" if i == 0 else "door", minutes_ago=i)
    chunks = export.csv_chunks(rt.store, gender=True)
    first = next(chunks) + next(chunks)  # header and the first two rows read
    _add_event(rt.store, "door")  # an alert arrives during the export
    text = first + "".join(chunks)
    ids = [line.split(",")[0] for line in text.strip().splitlines()[1:]]
    assert len(ids) == len(set(ids)) == 6 and ids == sorted(ids, key=int)  # none repeated, oldest first
    assert "'=cmd|calc" in text
    web = client.get("/events.csv").text
    assert web.replace("\r\n", "\n") == text.replace("\r\n", "\n")
