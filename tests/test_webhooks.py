"""Webhooks (maskwatch.integrations.webhooks) against a real HTTP server on 127.0.0.1: signed POSTs,
a server that is down then up, one that answers 500 or 400, a restart; 0 lost, at least once."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from maskwatch.integrations import webhooks as mw_webhooks
from maskwatch.integrations.webhooks import WebhookWorker, signature
from maskwatch.monitor import Monitor
from maskwatch.store import Store
from smtp_sink import free_port
from web_helpers import FAST_ALERTS, face_tiles, scene, shared_yunet, web_settings

SECRET = "s3cret-for-tests"


class Server:
    """A real HTTP server in a thread: records each POST (headers, body) and answers `code`."""

    def __init__(self, port: int, code: int = 200):
        self.port, self.code = port, code
        self.got: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wait(pred, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


@pytest.fixture(scope="module")
def tiles():
    t = face_tiles()
    if not t["real"] or shared_yunet() is None:
        pytest.skip("needs the real face photos and YuNet of ../shared")
    return t


def settings_for(tmp_path: Path, url: str, **extra):
    return web_settings(
        tmp_path,
        model_dir=None,
        yunet=shared_yunet(),
        alerts={**FAST_ALERTS, "base_url": "https://mw.example.org"},
        webhooks=[{"url": url, "secret": SECRET, "name": "chat"}],
        **extra,
    )


def alert_once(monitor: Monitor, image) -> list:
    session = monitor.open_session("test")
    events: list = []
    t0 = time.time()
    for i in range(4):
        _result, evs = session.process(image, t0 + i * 0.1)
        events += evs
    return events


def test_alert_is_posted_signed(tmp_path, tiles):
    server = Server(free_port())
    settings = settings_for(tmp_path, server.url)
    store = Store.from_settings(settings)
    monitor = Monitor(settings, store, run_mail=False)
    assert monitor.webhooks is not None
    monitor.start()
    try:
        events = alert_once(monitor, scene(tiles, faces=("unmasked",)))
        assert len(events) == 1
        assert wait(lambda: server.got)
    finally:
        monitor.stop()
        server.close()
    assert len(server.got) == 1
    headers, body = server.got[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-maskwatch-signature"], expected)
    assert headers["x-maskwatch-event"] == "alert" and headers["content-type"] == "application/json"
    data = json.loads(body)
    ev = events[0]
    assert data["id"] == ev.id and data["camera"] == ev.camera and data["track_id"] == ev.track_id
    assert data["mask_label"] == "no_mask" and 0.6 <= data["mask_confidence"] <= 1
    assert data["time"].endswith("+00:00") and data["url"] == f"https://mw.example.org/events/{ev.id}"
    assert "gender_label" in data and "snapshot_jpeg" not in data and SECRET not in body.decode()
    deliveries, total = store.list_webhook_deliveries()
    assert total == 1 and deliveries[0].status == "sent" and deliveries[0].attempts == 1
    assert deliveries[0].webhook == "chat" and deliveries[0].event_id == ev.id
    store.close()


def test_no_gender_when_disabled(tmp_path, tiles):
    server = Server(free_port())
    settings = settings_for(tmp_path, server.url, privacy={"gender_enabled": False})
    store = Store.from_settings(settings)
    monitor = Monitor(settings, store, run_mail=False)
    monitor.start()
    try:
        assert len(alert_once(monitor, scene(tiles, faces=("unmasked",)))) == 1
        assert wait(lambda: server.got)
    finally:
        monitor.stop()
        server.close()
    assert "gender_label" not in json.loads(server.got[0][1])
    store.close()


def test_server_down_then_up_is_delivered_once(tmp_path, tiles, monkeypatch):
    monkeypatch.setattr(mw_webhooks, "RETRY_INITIAL_S", 0.2)
    monkeypatch.setattr(mw_webhooks, "TICK_S", 0.05)
    port = free_port()
    settings = settings_for(tmp_path, f"http://127.0.0.1:{port}/hook")
    store = Store.from_settings(settings)
    monitor = Monitor(settings, store, run_mail=False)
    monitor.start()
    server = None
    try:
        events = alert_once(monitor, scene(tiles, faces=("unmasked",)))
        assert len(events) == 1
        # the first attempt finds nothing listening: queued again with the error
        d = wait(lambda: [x for x in store.list_webhook_deliveries()[0] if x.last_error])
        assert d and d[0].status == "queued" and d[0].attempts >= 1
        server = Server(port)
        assert wait(lambda: store.list_webhook_deliveries()[0][0].status == "sent")
    finally:
        monitor.stop()
        if server is not None:
            server.close()
    assert server is not None and len(server.got) == 1  # 0 lost, no duplicate
    assert json.loads(server.got[0][1])["id"] == events[0].id
    store.close()


def queue_one(store: Store, event_id: int = 1) -> int:
    return store.queue_webhooks(event_id, [("chat", {"id": event_id, "camera": "door"})])[0]


def test_500_is_retried_then_failed(tmp_path):
    server = Server(free_port(), code=500)
    settings = settings_for(tmp_path, server.url)
    store = Store.from_settings(settings)
    worker = WebhookWorker(
        settings, store, retry_initial_s=0.05, retry_max_s=0.2, max_attempts=3, tick_s=0.02
    )
    did = queue_one(store)
    worker.start()
    try:
        assert wait(lambda: store.list_webhook_deliveries()[0][0].status == "failed")
    finally:
        worker.close()
        server.close()
    d = store.list_webhook_deliveries()[0][0]
    assert d.id == did and d.attempts == 3 and d.last_error == "HTTP 500"
    assert len(server.got) == 3
    store.close()


def test_400_fails_at_once(tmp_path):
    server = Server(free_port(), code=400)
    settings = settings_for(tmp_path, server.url)
    store = Store.from_settings(settings)
    worker = WebhookWorker(settings, store, retry_initial_s=0.05, tick_s=0.02)
    queue_one(store)
    worker.start()
    try:
        assert wait(lambda: store.list_webhook_deliveries()[0][0].status == "failed")
        time.sleep(0.3)
    finally:
        worker.close()
        server.close()
    d = store.list_webhook_deliveries()[0][0]
    assert d.attempts == 1 and d.last_error == "HTTP 400" and len(server.got) == 1
    store.close()


def test_restart_delivers_what_was_queued(tmp_path):
    port = free_port()
    settings = settings_for(tmp_path, f"http://127.0.0.1:{port}/hook")
    store = Store.from_settings(settings)
    ids = [queue_one(store, i) for i in (1, 2, 3)]
    store.close()  # the process stopped before anything was sent
    server = Server(port)
    store2 = Store.from_settings(settings)
    worker = WebhookWorker(settings, store2, tick_s=0.02)
    worker.start()
    try:
        assert wait(lambda: all(d.status == "sent" for d in store2.list_webhook_deliveries()[0]))
    finally:
        worker.close()
        server.close()
    assert sorted(json.loads(b)["id"] for _h, b in server.got) == [1, 2, 3]  # each exactly once
    assert sorted(d.id for d in store2.list_webhook_deliveries()[0]) == sorted(ids)
    for headers, body in server.got:
        assert headers["x-maskwatch-signature"] == signature(SECRET, body)
    store2.close()


def test_outbox_page_lists_deliveries_without_the_secret(tmp_path):
    from fastapi.testclient import TestClient

    from web_helpers import login, make_app

    app, store = make_app(
        tmp_path, None, yunet=None, webhooks=[{"url": "https://u:pw@hooks.example.org/x", "secret": SECRET}]
    )
    store.queue_webhooks(7, [(app_settings_key := "https://hooks.example.org/x", {"id": 7})])
    with TestClient(app) as client:
        login(client)
        r = client.get("/outbox")
    assert r.status_code == 200
    assert "Webhook deliveries" in r.text and app_settings_key in r.text and "queued" in r.text
    assert SECRET not in r.text and "pw@" not in r.text
    store.close()
