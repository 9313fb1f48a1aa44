"""Uploads that cannot exhaust the server, bad numbers that answer 4xx, snapshots for API tokens, and a
settings form that keeps what was typed (issue 13, items 2 and 5).

Decompression bombs (a 20000x20000 PNG of ~400 KB, a JPEG whose frame header declares 20000x20000, a
video with 4200-pixel frames) are refused from their headers before anything is decoded; decoding and
analysis run in the bounded vision pool (503 + Retry-After when it stays full); uploads are rate limited
per user (429 + Retry-After). `test_png_bomb_against_real_server` posts the bomb to a real `maskwatch serve`
and measures its memory (/proc/PID/status) and `/api/health` meanwhile.
"""

from __future__ import annotations

import re
import struct
import threading
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from maskwatch.config import SmtpSettings, WebSettings
from maskwatch.types import Attribute
from maskwatch.web import analysis
from maskwatch.web.analysis import BadMedia, MediaTooLarge, RateLimiter, check_image_header, image_size
from web_helpers import PASSWORD, csrf_from, jpeg, login, make_app, shared_yunet

HUGE = "99999999999999999999"  # over 2**63: SQLite cannot even bind it


# -- files whose headers lie about their size ------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(w: int = 20000, h: int = 20000) -> bytes:
    """A valid grayscale PNG of w x h black pixels: a real IHDR and an IDAT of zlib-compressed zeros
    (400 MB of rows in ~390 KB; decoded as BGR it is 1.2 GB)."""
    comp = zlib.compressobj(9)
    row_block = b"\0" * ((w + 1) * 100)  # filter byte + w pixels, 100 rows at a time
    parts = [comp.compress(row_block) for _ in range(h // 100)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )


def jpeg_declaring(w: int, h: int) -> bytes:
    """A real (tiny) JPEG whose SOF0 frame header is rewritten to declare w x h."""
    data = bytearray(jpeg(np.full((16, 16, 3), 128, np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = png_bomb()
    assert len(data) < 400_000 and image_size(data) == (20000, 20000)
    return data


# -- the header parser ------


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp"])
@pytest.mark.parametrize("size", [(37, 23), (640, 480), (1, 3000)])
def test_image_size_reads_real_encoder_output(ext, size):
    w, h = size
    img = np.random.default_rng(w).integers(0, 255, (h, w, 3), np.uint8)
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []  # 101: lossless (VP8L)
    for p in [params, []] if ext == ".webp" else [params]:  # lossy WebP (VP8) too
        ok, buf = cv2.imencode(ext, img, p)
        assert ok
        assert image_size(buf.tobytes()) == (w, h)


def test_image_size_of_real_photos_matches_decoder(shared_data):
    photos = (
        sorted((shared_data / "mask").rglob("*.jpg"))[:40]
        + sorted((shared_data / "mask").rglob("*.png"))[:10]
    )
    assert photos
    for path in photos:
        data = path.read_bytes()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image_size(data) == (img.shape[1], img.shape[0]), path


def test_header_checks_refuse_without_decoding(bomb):
    t0 = time.perf_counter()
    with pytest.raises(MediaTooLarge) as err:
        check_image_header(bomb)
    assert err.value.status_code == 413 and "20000x20000" in str(err.value)
    with pytest.raises(MediaTooLarge):
        analysis.decode_image(jpeg_declaring(20000, 20000))
    with pytest.raises(MediaTooLarge):  # a long thin strip: few pixels, too long a side
        check_image_header(jpeg_declaring(30000, 100))
    with pytest.raises(MediaTooLarge):  # a webcam frame over MAX_STREAM_SIDE
        analysis.decode_image(jpeg_declaring(4000, 3000), max_side=analysis.MAX_STREAM_SIDE)
    assert time.perf_counter() - t0 < 0.5
    vp8x = b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\0" * 4
    vp8x += (19999).to_bytes(3, "little") * 2
    assert image_size(vp8x) == (20000, 20000)
    bmp = b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, 20000, -20000)
    assert image_size(bmp) == (20000, 20000)
    with pytest.raises(BadMedia) as unreadable:
        check_image_header(b"\xff\xd8\xff\xda" + b"\0" * 100)  # scan data before any frame header
    assert unreadable.value.status_code == 422


def test_rate_limiter_window():
    r = RateLimiter(window_s=60)
    assert [r.hit("ann", 3, now=t) for t in (0, 10, 20)] == [0, 0, 0]
    assert r.hit("ann", 3, now=30) == 30 and r.hit("bob", 3, now=30) == 0
    assert r.hit("ann", 3, now=60.5) == 0  # the first one left the window


# -- the app (TestClient) ------


def _make(tmp_path, tiny_models, *, users=True, **extra):
    return make_app(tmp_path, tiny_models, users=None if users else {}, **extra)


@pytest.fixture
def authed(tmp_path, tiny_models):
    app, store = _make(tmp_path, tiny_models)
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as client:
        assert login(client).status_code == 303
        yield client, app.state.runtime
    store.close()


def _api(client):
    return {"X-CSRF-Token": csrf_from(client.get("/upload").text)}


def _photo() -> bytes:
    return jpeg(np.full((240, 320, 3), 150, np.uint8))


def test_png_bomb_refused_from_header(authed, bomb):
    client, _ = authed
    headers = _api(client)
    t0 = time.perf_counter()
    r = client.post("/api/detect", files={"file": ("bomb.png", bomb, "image/png")}, headers=headers)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 413, r.text
    assert "20000x20000" in r.json()["detail"] and elapsed < 0.5, elapsed
    page = client.post(
        "/upload",
        data={"csrf_token": headers["X-CSRF-Token"]},
        files={"file": ("bomb.png", bomb, "image/png")},
    )
    assert page.status_code == 413 and "too large" in page.text


def test_jpeg_sof_bomb_refused_from_header(authed):
    client, _ = authed
    headers = _api(client)
    for w, h in [(20000, 20000), (30000, 1000)]:
        t0 = time.perf_counter()
        r = client.post(
            "/api/detect", files={"file": ("x.jpg", jpeg_declaring(w, h), "image/jpeg")}, headers=headers
        )
        assert r.status_code == 413, r.text
        assert f"{w}x{h}" in r.json()["detail"] and time.perf_counter() - t0 < 0.5
    ok = client.post("/api/detect", files={"file": ("ok.jpg", _photo(), "image/jpeg")}, headers=headers)
    assert ok.status_code == 200 and ok.json()["frame_size"] == [320, 240]


def test_video_with_too_large_frames_refused(authed, tmp_path):
    client, _ = authed
    path = tmp_path / "wide.avi"
    w, h = 4200, 240  # 1 MP a frame, but a side over MAX_VIDEO_SIDE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (w, h))
    assert writer.isOpened()
    for i in range(3):
        writer.write(np.full((h, w, 3), 60 * i, np.uint8))
    writer.release()
    r = client.post(
        "/upload",
        data={"csrf_token": csrf_from(client.get("/upload").text)},
        files={"file": ("wide.avi", path.read_bytes(), "video/x-msvideo")},
    )
    assert r.status_code == 413, r.text[:500]
    assert "4200x240" in r.text and "too large" in r.text


def test_busy_pool_answers_503_with_retry_after(authed):
    client, rt = authed
    headers = _api(client)
    limiter = rt.vision_limiter
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for b in holders:  # every place in the pool taken, as by long analyses
        client.portal.call(limiter.acquire_on_behalf_of, b)
    out: list = []

    def post():
        t0 = time.perf_counter()
        r = client.post("/api/detect", files={"file": ("a.jpg", _photo(), "image/jpeg")}, headers=headers)
        out.append((r, time.perf_counter() - t0))

    worker = threading.Thread(target=post)
    worker.start()
    try:
        time.sleep(0.3)
        t0 = time.perf_counter()
        assert client.get("/api/health").status_code == 200
        health_s = time.perf_counter() - t0
        worker.join(timeout=8)
        waited_forever = worker.is_alive()
    finally:
        for b in holders:
            client.portal.call(limiter.release_on_behalf_of, b)
        worker.join(timeout=30)
    assert not waited_forever, "the request waited for the pool for more than 8 s"
    r, elapsed = out[0]
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1 and 1.5 <= elapsed <= 4.0, elapsed
    assert health_s < 0.5
    assert limiter.borrowed_tokens == 0  # the refused request left nothing behind
    again = client.post("/api/detect", files={"file": ("a.jpg", _photo(), "image/jpeg")}, headers=headers)
    assert again.status_code == 200


def test_upload_rate_limit_per_user(tmp_path, tiny_models):
    app, store = _make(tmp_path, tiny_models, web={"uploads_per_minute": 2})
    store.add_user("bob", PASSWORD)
    bob = {"Authorization": f"Bearer {store.create_token('bob', 'test')}"}
    with TestClient(app, base_url="http://testserver") as client:
        assert login(client).status_code == 303
        headers = _api(client)
        files = {"file": ("a.jpg", _photo(), "image/jpeg")}
        codes = [client.post("/api/detect", files=files, headers=headers).status_code for _ in range(2)]
        assert codes == [200, 200]
        r = client.post("/api/detect", files=files, headers=headers)
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        page = client.post("/upload", data={"csrf_token": headers["X-CSRF-Token"]}, files=files)
        assert page.status_code == 429 and "Retry-After" in page.headers and "too many uploads" in page.text
        assert client.post("/api/detect", files=files, headers=bob).status_code == 200  # per user
    store.close()


@pytest.mark.parametrize(
    "path",
    [
        f"/events/{HUGE}",
        f"/events/{HUGE}/snapshot.jpg",
        f"/events/{HUGE}/thumb.jpg",
        "/events/0",
        "/events/-5",
        f"/events?page={HUGE}",
        f"/outbox/{HUGE}",
        "/outbox/0",
        f"/outbox?page={HUGE}",
        f"/api/events?offset={HUGE}",
        "/api/events?offset=-1",
        f"/api/events?limit={HUGE}",
        "/api/events?since=0001-01-01T00:00:00%2B01:00",  # before year 1 once in UTC
        "/api/stats?until=9999-12-31T23:59:59-01:00",
        "/events?since=0001-01-01T00:00%2B01:00",
        "/events.csv?since=0001-01-01T00:00%2B01:00",
    ],
)
def test_bad_numbers_answer_4xx(authed, path):
    client, _ = authed
    r = client.get(path, follow_redirects=False)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:300])


def test_largest_numbers_are_answered(authed):
    client, _ = authed
    top = str(2**63 - 1)
    assert client.get(f"/events/{top}").status_code == 404
    assert client.get(f"/outbox/{top}").status_code == 404
    r = client.get(f"/api/events?offset={top}")
    assert r.status_code == 200 and r.json()["events"] == []


def test_snapshot_url_works_with_a_bearer_token(tmp_path, tiny_models):
    app, store = _make(tmp_path, tiny_models)
    event = store.add_event(
        camera="door",
        time=datetime.now(UTC),
        track_id=1,
        mask=Attribute("no_mask", 0.9),
        gender=Attribute("woman", 0.8),
        snapshot_jpeg=jpeg(np.full((120, 160, 3), 90, np.uint8)),
    )
    token = store.create_token("admin", "script")
    with TestClient(app, base_url="http://testserver") as client:  # no session: the token only
        auth = {"Authorization": f"Bearer {token}"}
        url = client.get("/api/events", headers=auth).json()["events"][0]["snapshot_url"]
        assert url == f"/events/{event.id}/snapshot.jpg"
        r = client.get(url, headers=auth)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
        assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        browser = client.get(url, follow_redirects=False)  # a browser without a session: the login page
        assert browser.status_code == 303 and browser.headers["location"].startswith("/login")
    store.close()


def test_settings_error_keeps_typed_values_and_port_range(authed):
    client, rt = authed
    page = client.get("/settings")
    form = dict(re.findall(r'<input name="([\w.]+)" value="([^"]*)"', page.text))
    form.update(
        {
            "csrf_token": csrf_from(page.text),
            "detector.score_threshold": "0.42",
            "smtp.host": "mail.example.org",
            "smtp.port": "99999",
            "smtp.security": "ssl",
            "smtp.password": "typed-secret-pw",
            "smtp.recipients": "ops@example.org, b@example.org",
            "privacy.blur_snapshots": "on",
            "cam-0-name": "door",
            "cam-0-source": "2",
            "cam-0-enabled": "on",
        }
    )
    bad = client.post("/settings", data=form)
    assert bad.status_code == 400 and "smtp.port" in bad.text and "65535" in bad.text
    text = bad.text
    assert 'name="detector.score_threshold" value="0.42"' in text
    assert 'name="smtp.host" value="mail.example.org"' in text and 'name="smtp.port" value="99999"' in text
    assert "ops@example.org, b@example.org</textarea>" in text
    assert 'name="privacy.blur_snapshots" checked' in text and "<option selected>ssl</option>" in text
    assert 'name="cam-0-name" value="door"' in text and 'name="cam-0-source" value="2"' in text
    assert "typed-secret-pw" not in text  # never sent back
    s = rt.settings
    assert s.smtp.port == 587 and s.smtp.host is None and s.detector.score_threshold != 0.42
    form["smtp.port"] = "0"
    assert client.post("/settings", data=form).status_code == 400
    form["smtp.port"] = "2525"
    ok = client.post("/settings", data=form, follow_redirects=False)
    assert ok.status_code == 303, re.findall(r"<li>(.*?)</li>", ok.text)
    assert rt.settings.smtp.port == 2525 and rt.settings.smtp.password == "typed-secret-pw"
    with pytest.raises(ValidationError):
        SmtpSettings(port=99999)
    with pytest.raises(ValidationError):
        WebSettings(port=70000)


# -- a real server: memory and /api/health while the bomb is refused ------


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def test_png_bomb_against_real_server(tmp_path, bomb, capsys):
    import httpx

    from web_bench import Server, _pct

    env = {}
    yunet = shared_yunet()
    if yunet:
        env.update(MASKWATCH_DETECTOR__BACKEND="yunet", MASKWATCH_DETECTOR__YUNET_PATH=str(yunet))
    server = Server(tmp_path, env)
    try:
        server.wait_ready()
        client = server.login()
        headers = {"X-CSRF-Token": csrf_from(client.get("/upload").text)}
        warm = client.post("/api/detect", files={"file": ("a.jpg", _photo(), "image/jpeg")}, headers=headers)
        assert warm.status_code in (200, 503)  # models loaded (or not available: not needed here)
        pid = server.proc.pid
        base = _rss_mb(pid)
        peak = [base]
        health_ms: list[float] = []
        stop = threading.Event()

        def probe_health():
            with httpx.Client(base_url=server.base, timeout=10) as probe:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    probe.get("/api/health")
                    health_ms.append((time.perf_counter() - t0) * 1000)
                    time.sleep(0.01)

        def sample_rss():  # on its own, so that a stalled server cannot hide its memory
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_mb(pid))
                time.sleep(0.005)

        watchers = [threading.Thread(target=probe_health), threading.Thread(target=sample_rss)]
        for t in watchers:
            t.start()
        time.sleep(0.3)
        times, codes = [], []
        for name, data in [("bomb.png", bomb), ("bomb.jpg", jpeg_declaring(20000, 20000))] * 3:
            t0 = time.perf_counter()
            r = client.post("/api/detect", files={"file": (name, data, "image/png")}, headers=headers)
            times.append(time.perf_counter() - t0)
            codes.append(r.status_code)
        time.sleep(0.3)
        stop.set()
        for t in watchers:
            t.join()
        growth = peak[0] - base
        p95 = _pct(health_ms, 95)
        with capsys.disabled():
            print(
                f"\nbomb against serve: {codes}, slowest {max(times) * 1000:.0f} ms, RSS {base:.0f} MB "
                f"-> peak {peak[0]:.0f} MB (+{growth:.1f} MB), /api/health p50 {_pct(health_ms, 50):.1f} ms "
                f"p95 {p95:.1f} ms max {max(health_ms):.1f} ms over {len(health_ms)} probes"
            )
        assert set(codes) == {413}
        assert max(times) < 0.5 and growth < 100 and p95 < 50
    finally:
        server.stop()
