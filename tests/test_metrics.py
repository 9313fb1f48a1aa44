"""/metrics (Prometheus text format): a running monitor with a real file camera, scraped with a token;
access by token or `web.metrics_allow` (TestClient's `client=` sets the peer address the app sees)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from maskwatch.alerts import MailWorker
from maskwatch.store import MailDraft, Store
from maskwatch.web import create_app
from smtp_sink import free_port
from web_helpers import PASSWORD, face_tiles, make_app, scene, shared_yunet, web_settings, write_clip


def parse(text: str) -> dict[str, list]:
    """{family name: [(sample name, labels, value), ...]}"""
    return {
        f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)
    }


def value(families: dict, family: str, sample: str | None = None, **labels) -> float | None:
    for name, have, v in families.get(family, []):
        if (sample is None or name == sample) and all(have.get(k) == w for k, w in labels.items()):
            return v
    return None


def test_metrics_with_a_running_camera(tmp_path, tiny_models):
    image = scene(face_tiles())
    clip = tmp_path / "door.avi"
    write_clip(clip, [image] * 20)
    settings = web_settings(
        tmp_path, model_dir=tiny_models, yunet=shared_yunet(), cameras=[{"name": "door", "source": str(clip)}]
    )
    store = Store.from_settings(settings)
    store.add_user("admin", PASSWORD)
    token = store.create_token("admin", "prometheus")
    store.queue_mail(MailDraft(subject="s", text="t", html="<p>t</p>", to=["a@example.com"]))
    app = create_app(settings, store=store, mailer=MailWorker(settings, store))  # SMTP unset: it stays queued
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        deadline = time.time() + 30
        first: dict = {}
        while time.time() < deadline:
            r = client.get("/metrics", headers=auth)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            first = parse(r.text)
            if (value(first, "maskwatch_camera_frames_processed", camera="door") or 0) >= 3:
                break
            time.sleep(0.2)
        frames1 = value(first, "maskwatch_camera_frames_processed", camera="door")
        assert frames1 is not None and frames1 >= 3, first.get("maskwatch_camera_frames_processed")
        time.sleep(1.0)  # the file plays at 10 fps
        text = client.get("/metrics", headers=auth).text
    store.close()
    m = parse(text)
    frames2 = value(m, "maskwatch_camera_frames_processed", camera="door")
    assert frames2 is not None and frames2 > frames1
    assert (value(m, "maskwatch_camera_frames_read", camera="door") or 0) >= frames2
    assert value(m, "maskwatch_camera_frames_dropped", camera="door") is not None
    assert value(m, "maskwatch_camera_fps", camera="door") is not None
    # latency histogram: observations, in seconds, every bucket up to +Inf
    count = value(
        m, "maskwatch_frame_latency_seconds", "maskwatch_frame_latency_seconds_count", camera="door"
    )
    assert count is not None and count >= frames1
    total = value(m, "maskwatch_frame_latency_seconds", "maskwatch_frame_latency_seconds_sum", camera="door")
    assert total is not None and 0 < total / count < 2
    buckets = {s[1]["le"] for s in m["maskwatch_frame_latency_seconds"] if s[0].endswith("_bucket")}
    assert {"0.001", "2.0", "+Inf"} <= buckets
    detect = value(m, "maskwatch_inference_seconds", "maskwatch_inference_seconds_count", stage="detect")
    assert detect is not None and detect >= 1
    # faces by label: the scene has two faces a frame
    faces = {s[1]["label"]: s[2] for s in m["maskwatch_faces"] if s[1].get("camera") == "door"}
    assert faces and sum(faces.values()) >= 2 * frames1, faces
    assert "maskwatch_alerts" in m  # the family exists even before an alert
    # state: enum-style plus up
    assert value(m, "maskwatch_camera_state", camera="door", state="running") == 1.0
    assert value(m, "maskwatch_camera_state", camera="door", state="down") == 0.0
    assert value(m, "maskwatch_camera_up", camera="door") == 1.0
    # outbox depth
    assert value(m, "maskwatch_mail_outbox_messages", status="queued") == 1.0
    assert value(m, "maskwatch_mail_outbox_messages", status="failed") == 0.0
    assert value(m, "maskwatch_alert_frames") is not None and value(m, "maskwatch_alert_store_ok") == 1.0
    assert "process_resident_memory_bytes" in text and value(m, "maskwatch_build_info") == 1.0
    # no camera source (it may hold credentials), no token
    assert str(clip) not in text and token not in text


def _app(tmp_path, tiny_models, **web):
    return make_app(tmp_path, tiny_models, yunet=None, web=web)


def test_metrics_needs_a_token_or_an_allowed_address(tmp_path, tiny_models):
    app, store = _app(tmp_path, tiny_models, metrics_allow=["127.0.0.1", "10.0.0.0/8"])
    token = store.create_token("admin")
    try:
        with TestClient(app) as client:  # peer "testclient": not an address, so never allowed
            r = client.get("/metrics")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert client.get("/metrics", headers={"Authorization": "Bearer mw_wrong"}).status_code == 401
            assert client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            assert "/metrics" not in client.app.openapi()["paths"]
        for peer, code in (("127.0.0.1", 200), ("10.1.2.3", 200), ("192.0.2.7", 401), ("127.0.0.2", 401)):
            with TestClient(app, client=(peer, 40000)) as client:
                r = client.get("/metrics")
                assert r.status_code == code, (peer, r.text)
                if code == 200:
                    assert "maskwatch_mail_outbox_messages" in r.text
        # X-Forwarded-For from a peer that is not a trusted proxy is ignored
        with TestClient(app, client=("192.0.2.7", 40000)) as client:
            assert client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 401
    finally:
        store.close()


def test_metrics_allow_is_token_only_by_default(tmp_path, tiny_models):
    app, store = _app(tmp_path, tiny_models)
    try:
        with TestClient(app, client=("127.0.0.1", 40000)) as client:
            assert client.get("/metrics").status_code == 401
    finally:
        store.close()


def test_metrics_allow_rejects_bad_addresses(tmp_path):
    with pytest.raises(ValueError, match="not an IP address"):
        web_settings(tmp_path, model_dir=None, yunet=None, web={"metrics_allow": ["testclient"]})


def test_metrics_registries_are_per_app(tmp_path, tiny_models):
    a, sa = _app(tmp_path / "a", tiny_models)
    b, sb = _app(tmp_path / "b", tiny_models)
    try:
        assert a.state.metrics.registry is not b.state.metrics.registry
        assert "maskwatch_faces" in a.state.metrics.exposition().decode()
    finally:
        sa.close()
        sb.close()


class Hooks:
    """A real HTTP server answering each POST with the status code its path names (/200, /400, /500)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(int(self.path.strip("/")))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


STATUSES = ("queued", "sent", "failed")


def test_webhook_queue_depth_and_failures(tmp_path, tiny_models):
    hooks = Hooks()
    webhooks = [
        {"url": f"{hooks.url}/200", "name": "ok"},
        {"url": f"{hooks.url}/400", "name": "refuses"},  # failed at once
        {"url": f"{hooks.url}/500", "name": "broken", "secret": "hook-secret"},  # queued for a retry in 5 s
    ]
    settings = web_settings(tmp_path, model_dir=tiny_models, yunet=None, webhooks=webhooks)
    store = Store.from_settings(settings)
    store.add_user("admin", PASSWORD)
    auth = {"Authorization": f"Bearer {store.create_token('admin')}"}
    app = create_app(settings, store=store)  # the monitor runs the webhook worker
    store.queue_webhooks(1, [(name, {"id": 1}) for name in ("ok", "refuses", "broken")])
    try:
        with TestClient(app) as client:
            deadline = time.time() + 20
            while True:
                m = parse(client.get("/metrics", headers=auth).text)
                depth = {
                    s: value(m, "maskwatch_webhook_deliveries", status=s)
                    for s in ("queued", "sent", "failed")
                }
                attempts = [d.attempts for d in store.list_webhook_deliveries()[0]]
                if depth == {"queued": 1.0, "sent": 1.0, "failed": 1.0} and attempts == [1, 1, 1]:
                    break
                assert time.time() < deadline, (depth, attempts)
                time.sleep(0.2)
            m = parse(client.get("/metrics", headers=auth).text)
            text = client.get("/metrics", headers=auth).text
    finally:
        hooks.close()
        store.close()
    assert value(m, "maskwatch_webhook_send_failures") == 2.0  # the 400 and the 500
    assert "hook-secret" not in text and hooks.url not in text
