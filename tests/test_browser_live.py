"""The Live page with 16 server cameras over ONE WebSocket (`/ws/live`), against a real `maskwatch serve`.

Each camera plays its own small MJPG clip (160x120, 2 fps) written here. The protocol is checked with a
plain WebSocket client; the page in Debian Chromium (Playwright), in two tabs, while other pages of the
app must still load (one MJPEG connection per tile used up the browser's 6 connections per host).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from smtp_sink import free_port
from web_helpers import ARTIFACTS, PASSWORD, launch_chromium, login, needs_chromium, shared_yunet

NAMES = [f"c{i}" for i in range(16)]
SIZE = (160, 120)


def _clip(path: Path, index: int, frames: int = 10, fps: int = 2) -> Path:
    """A small MJPG clip: a moving square and the camera's number."""
    w, h = SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZE)
    for t in range(frames):
        img = np.full((h, w, 3), (40 + 12 * index, 90, 160), np.uint8)
        x = 10 + (t * 6) % (w - 50)
        cv2.rectangle(img, (x, 40), (x + 40, 80), (255, 255, 255), -1)
        cv2.putText(img, f"c{index}", (6, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2)
        writer.write(img)
    writer.release()
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """`maskwatch serve` with 16 file cameras and an administrator; yields the base URL."""
    tmp = tmp_path_factory.mktemp("serve-live")
    cameras = [{"name": n, "source": str(_clip(tmp / f"{n}.avi", i))} for i, n in enumerate(NAMES)]
    port = free_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "MASKWATCH_DATA_DIR": str(tmp / "data"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "MASKWATCH_CAMERAS": json.dumps(cameras),
        "MASKWATCH_DETECTOR__DETECT_EVERY": "5",  # 16 cameras on a small machine
    }
    env.pop("MASKWATCH_CONFIG", None)
    yunet = shared_yunet()
    if yunet:
        env.update(MASKWATCH_DETECTOR__BACKEND="yunet", MASKWATCH_DETECTOR__YUNET_PATH=str(yunet))
    else:
        env.update(MASKWATCH_DETECTOR__BACKEND="res10")
    from maskwatch.config import load_settings
    from maskwatch.store import Store

    store = Store.from_settings(load_settings(data_dir=tmp / "data"))
    store.add_user("admin", PASSWORD)
    store.close()
    log_path = tmp / "serve.log"
    log = open(log_path, "w+")  # noqa: SIM115 - read while the server runs
    proc = subprocess.Popen(
        [sys.executable, "-c", "from maskwatch.cli import main; main()", "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.time() + 60
        while "Uvicorn running" not in log_path.read_text():
            assert proc.poll() is None, f"server exited:\n{log_path.read_text()}"
            assert time.time() < deadline, f"server did not start:\n{log_path.read_text()}"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def cookie(server: str) -> str:
    with httpx.Client(base_url=server, timeout=30) as client:
        r = login(client)
        assert r.status_code == 303, r.text
        return client.cookies["maskwatch_session"]


def _live(server: str, cookie: str | None, origin: str | None = None) -> ClientConnection:
    headers = {"Origin": origin or server}
    if cookie:
        headers["Cookie"] = f"maskwatch_session={cookie}"
    url = server.replace("http://", "ws://") + "/ws/live"
    return connect(url, additional_headers=headers, max_size=16 << 20, open_timeout=20)


def _split(message: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(message[:4], "big")
    return json.loads(message[4 : 4 + n].decode()), message[4 + n :]


def test_live_socket_refuses_anonymous_and_cross_site(server, cookie):
    for who, origin in ((None, None), (cookie, "http://evil.example")):
        with pytest.raises(InvalidStatus) as exc, _live(server, who, origin):
            pass
        assert exc.value.response.status_code == 403  # closed (1008) before the handshake completed


def test_live_socket_frames_and_states(server, cookie):
    wanted = {"c0", "c7"}
    seqs: dict[str, list[int]] = {n: [] for n in wanted}
    states: list[dict] = []
    with _live(server, cookie) as ws:
        ws.send(json.dumps({"cameras": sorted(wanted)}))
        deadline = time.time() + 60
        while not states or min(len(s) for s in seqs.values()) < 3:
            assert time.time() < deadline, (seqs, states)
            message = ws.recv(timeout=20)
            if isinstance(message, str):
                msg = json.loads(message)
                assert msg["type"] == "cameras"
                states = msg["cameras"]
                continue
            head, jpeg = _split(message)
            assert head["camera"] in wanted, head
            assert jpeg[:2] == b"\xff\xd8"
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape[:2] == (SIZE[1], SIZE[0])
            assert head["state"] and isinstance(head["counts"], dict) and "fps" in head
            seqs[head["camera"]].append(head["seq"])
        assert all(s == sorted(set(s)) for s in seqs.values()), seqs  # each frame once, newest only
        assert sorted(c["name"] for c in states) == sorted(NAMES)
        assert all({"state", "fps", "counts"} <= c.keys() for c in states)

        ws.send(json.dumps({"cameras": []}))  # nothing visible: frames stop, states go on
        after: list[str] = []
        while after.count("cameras") < 3:  # the second state message comes >= 1 s after the []
            message = ws.recv(timeout=20)
            after.append(json.loads(message)["type"] if isinstance(message, str) else "frame")
        between = after[after.index("cameras") + 1 :]
        assert "frame" not in between, after


@pytest.mark.browser
@needs_chromium
def test_live_page_16_cameras_one_connection(server, cookie):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            _check_live_page(browser, server)
        finally:
            browser.close()


def _all_streaming(min_frames: int) -> str:
    return (
        "() => [...document.querySelectorAll('figure.cam[data-camera]')].every(f =>"
        f" Number(f.dataset.received || 0) >= {min_frames} && f.querySelector('img').naturalWidth === 160)"
    )


def _check_live_page(browser, base: str) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 3400})  # every tile visible
    context.set_default_timeout(60_000)
    requests: list[str] = []
    sockets: list[str] = []
    errors: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{base}/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    assert page.locator("figure.cam[data-camera]").count() == 16

    page.wait_for_function(_all_streaming(2))  # every tile drew at least two different frames
    states = page.locator("figure.cam [data-field=state]").all_inner_texts()
    assert set(states) <= {"starting", "running", "stalled", "reconnecting"}, states
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "browser-live-16.png"), full_page=True)

    # a second tab, showing only the top of the grid: the tiles far out of sight (more than one screen
    # below) get no frames until scrolled to
    second = context.new_page()
    second.set_viewport_size({"width": 1280, "height": 600})
    second.on("websocket", lambda ws: sockets.append(ws.url))
    second.goto(f"{base}/")
    first, last = (second.locator(f'figure.cam[data-camera="{n}"]') for n in ("c0", "c15"))
    first.scroll_into_view_if_needed()  # the grid is below the webcam part
    second.wait_for_function("() => Number(document.querySelector('figure.cam').dataset.received) >= 2")
    assert last.get_attribute("data-received") is None
    last.scroll_into_view_if_needed()
    second.wait_for_selector('figure.cam[data-camera="c15"][data-received]', state="attached")

    # with the Live page open in two tabs, the rest of the app still loads at once
    other = context.new_page()
    for path in ("/events", "/stats", "/api/health"):
        t0 = time.monotonic()
        r = other.goto(f"{base}{path}", timeout=10_000)
        assert r is not None and r.ok, path
        assert time.monotonic() - t0 < 5, f"{path} took {time.monotonic() - t0:.1f} s"
    received = page.evaluate("() => Number(document.querySelector('figure.cam').dataset.received)")
    page.wait_for_function(
        f"() => Number(document.querySelector('figure.cam').dataset.received) > {received}"
    )  # the first tab kept streaming

    assert sockets == [f"{base.replace('http', 'ws')}/ws/live"] * 2, sockets  # one socket per tab
    assert not [u for u in requests if re.search(r"/live/cameras/|\.mjpg", u)], requests
    assert not [e for e in errors if "Content Security Policy" in e], errors
    context.close()
