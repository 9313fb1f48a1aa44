"""Real-browser end-to-end tests: Debian Chromium (Playwright) against `maskwatch serve` on a free port.

The fake webcam plays a .y4m file written here from two real face photos (one masked, one not).
Label and alert assertions need the trained models shipped in src/maskwatch/models; without them the
tests use a tiny stand-in model and check only the mechanics (faces found, overlay drawn, pages work).
Screenshots are saved under test-artifacts/.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from vision_helpers import GREEN, RED
from web_helpers import (
    ARTIFACTS,
    PASSWORD,
    browser_test,
    bundled_models,
    face_tiles,
    jpeg,
    launch_chromium,
    scene,
    seed_history,
    shared_yunet,
    write_y4m,
)

pytestmark = browser_test


@pytest.fixture(scope="session")
def tiles():
    """Two face photos (one masked, one not): ../shared's real ones, else a fallback (web_helpers)."""
    return face_tiles()


@pytest.fixture(scope="module")
def cam_tiles(tiles):
    """What the fake webcam and the upload show: the photos; until trained models ship, tinted red /
    green, because then the server runs a tiny colour-based stand-in model (red: mask, green: no_mask)."""
    if bundled_models():
        return tiles

    def tint(img, bgr, a=0.45):
        return cv2.addWeighted(img, 1 - a, np.full_like(img, bgr), a, 0)

    return {**tiles, "masked": tint(tiles["masked"], RED), "unmasked": tint(tiles["unmasked"], GREEN)}


def labels_checked(tiles) -> bool:
    """Label and alert assertions: with the trained models on the real photos, or with the stand-in."""
    return tiles["real"] or not bundled_models()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiles):
    """`maskwatch serve` in a subprocess with an empty data directory; yields (base_url, setup_url)."""
    tmp = tmp_path_factory.mktemp("serve")
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "MASKWATCH_DATA_DIR": str(tmp / "data"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "MASKWATCH_ALERTS__MIN_FRAMES": "3",
        "MASKWATCH_ALERTS__MIN_SECONDS": "0.5",
    }
    env.pop("MASKWATCH_CONFIG", None)
    yunet = shared_yunet()
    if yunet:
        env.update(MASKWATCH_DETECTOR__BACKEND="yunet", MASKWATCH_DETECTOR__YUNET_PATH=str(yunet))
    else:
        env.update(MASKWATCH_DETECTOR__BACKEND="res10")
    if not bundled_models():
        from vision_helpers import make_tiny_model

        env["MASKWATCH_MODELS__MODEL_DIR"] = str(make_tiny_model(tmp / "models"))
    from maskwatch.config import load_settings
    from maskwatch.store import Store

    store = Store.from_settings(load_settings(data_dir=tmp / "data"))
    seed_history(store, tiles)  # a day of statistics and 30 older events, for the pages
    store.close()
    log = open(tmp / "serve.log", "w+")  # noqa: SIM115 - read while the server runs
    proc = subprocess.Popen(
        [sys.executable, "-c", "from maskwatch.cli import main; main()", "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    setup_url = None
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            text = (tmp / "serve.log").read_text()
            m = re.search(r"(http://\S+/setup\?token=\S+)", text)
            if m and "Uvicorn running" in text:
                setup_url = m.group(1)
                break
            assert proc.poll() is None, f"server exited:\n{text}"
            time.sleep(0.2)
        assert setup_url, f"no setup link printed:\n{(tmp / 'serve.log').read_text()}"
        yield base, setup_url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, cam_tiles):
    from playwright.sync_api import sync_playwright

    y4m = write_y4m(tmp_path_factory.mktemp("cam") / "webcam.y4m", [scene(cam_tiles)] * 2)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = launch_chromium(p, f"--use-file-for-fake-video-capture={y4m}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, server):
    """A logged-in page: first-run setup through the printed link, then log out and in again."""
    base, setup_url = server
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(20_000)
    pg = context.new_page()
    pg.goto(setup_url)
    pg.fill("input[name=username]", "admin")
    pg.fill("input[name=password]", PASSWORD)
    pg.fill("input[name=password2]", PASSWORD)
    pg.click("button[type=submit]")
    pg.wait_for_url(f"{base}/")
    pg.click("form.logout button")
    pg.wait_for_url(re.compile(r"/login"))
    pg.fill("input[name=username]", "admin")
    pg.fill("input[name=password]", "not the password")
    pg.click("button[type=submit]")
    assert "Wrong user name or password" in pg.inner_text("main")
    pg.screenshot(path=str(ARTIFACTS / "browser-login-error.png"))
    pg.fill("input[name=username]", "admin")
    pg.fill("input[name=password]", PASSWORD)
    pg.click("button[type=submit]")
    pg.wait_for_url(f"{base}/")
    yield pg
    context.close()


def test_live_webcam_overlay_and_alert(page, server, tiles):
    base, _ = server
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{base}/")
    page.click("#webcam-start")
    page.wait_for_selector('#webcam-result[data-count="2"]', state="attached")
    if labels_checked(tiles):
        page.wait_for_function(
            "() => { const l = document.getElementById('webcam-result').dataset.labels.split(',');"
            " return l.includes('mask') && l.includes('no_mask'); }"
        )
    # left face (masked) first in x order
    faces = page.evaluate(
        "() => JSON.parse(document.getElementById('webcam-result').textContent).faces"
        ".sort((a, b) => a.box[0] - b.box[0]).map(f => [f.mask.label, f.track_id])"
    )
    assert len(faces) == 2 and all(tid is not None for _, tid in faces)
    if labels_checked(tiles):
        assert [label for label, _ in faces] == ["mask", "no_mask"], faces
        page.wait_for_selector("#webcam-events li.webcam-event")  # the unmasked person became an alert
    page.wait_for_function("() => Number(document.getElementById('webcam-result').dataset.frame) >= 10")
    fps = float(page.inner_text('#webcam-counters [data-counter="fps"]'))
    assert fps > 2
    assert page.inner_text('#webcam-counters [data-counter="people"]') == "2"
    # the overlay canvas has boxes drawn on it (some non-transparent pixels)
    drawn = page.evaluate(
        "() => { const c = document.getElementById('webcam-overlay'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4)"
        " if (d[i]) n++; return n; }"
    )
    assert drawn > 500
    page.screenshot(path=str(ARTIFACTS / "browser-live.png"), full_page=True)
    page.click("#webcam-stop")
    assert not [e for e in errors if "Content Security Policy" in e], errors
    if labels_checked(tiles):
        page.goto(f"{base}/events")
        page.wait_for_selector("#events-table tr[data-event-id]")
        assert "browser:admin" in page.inner_text("#events-table")
        assert "no_mask" in page.inner_text("#events-table")
        page.screenshot(path=str(ARTIFACTS / "browser-events.png"), full_page=True)
        page.goto(f"{base}/outbox")  # no SMTP configured: the alert email waits in the outbox
        page.click("#outbox-table tbody a")
        page.wait_for_url(re.compile(r"/outbox/\d+$"))
        mail = page.inner_text("pre.mail")
        assert "browser:admin" in mail and f"{base}/events/" in mail  # links point at this server
        page.screenshot(path=str(ARTIFACTS / "browser-outbox-message.png"), full_page=True)


def test_upload_photo(page, server, cam_tiles, tmp_path):
    base, _ = server
    photo = tmp_path / "people.jpg"
    photo.write_bytes(jpeg(scene(cam_tiles)))
    page.goto(f"{base}/upload")
    page.set_input_files("#upload-file", str(photo))
    page.click("#upload-submit")
    page.wait_for_selector("#upload-result")
    rows = page.locator("#upload-faces tbody tr[data-mask]")
    assert rows.count() == 2
    if labels_checked(cam_tiles):
        labels = sorted(rows.nth(i).get_attribute("data-mask") for i in range(2))
        assert labels == ["mask", "no_mask"]
    assert page.evaluate("() => document.querySelector('#upload-result img').naturalWidth") == 640
    page.screenshot(path=str(ARTIFACTS / "browser-upload.png"), full_page=True)


def test_events_page_filters_paging_csv(page, server):
    base, _ = server
    page.goto(f"{base}/events")
    assert page.locator("#events-table tr[data-event-id]").count() == 25
    page.wait_for_function("() => document.querySelector('#events-table img.thumb').naturalWidth > 0")
    page.screenshot(path=str(ARTIFACTS / "browser-events-list.png"), full_page=True)
    page.click(".pager a[rel=next]")
    page.wait_for_url(re.compile(r"page=2"))
    assert page.locator("#events-table tr[data-event-id]").count() >= 5
    page.select_option("select[name=camera]", "door")
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r"camera=door"))
    cameras = page.locator("#events-table tr[data-event-id] td:nth-child(3)").all_inner_texts()
    assert cameras and set(cameras) == {"door"}
    with page.expect_download() as dl:
        page.click("#events-csv")
    lines = Path(dl.value.path()).read_text().strip().splitlines()
    assert lines[0].startswith("id,time_utc,camera") and len(lines) == len(cameras) + 1
    page.click("#events-table tr[data-event-id] a")
    page.wait_for_url(re.compile(r"/events/\d+$"))
    page.wait_for_function("() => document.querySelector('img.result-media').naturalWidth === 640")


def test_stats_and_settings_pages(page, server):
    base, _ = server
    page.goto(f"{base}/stats?range=24h")
    assert page.locator("svg.chart").count() >= 4
    assert page.locator("svg.chart circle.dot").count() >= 20
    page.screenshot(path=str(ARTIFACTS / "browser-stats.png"), full_page=True)
    page.goto(f"{base}/settings")
    page.fill("input[name='alerts.cooldown_s']", "120")
    page.click("#settings-save")
    page.wait_for_selector("#settings-saved")
    assert page.input_value("input[name='alerts.cooldown_s']") == "120.0"
    page.screenshot(path=str(ARTIFACTS / "browser-settings.png"), full_page=True)


def test_server_camera_added_in_settings_streams_to_live_page(page, server, tiles, tmp_path):
    base, _ = server
    clip = tmp_path / "camera.avi"  # a server-side video file as the camera source
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for _ in range(30):
        writer.write(scene(tiles))
    writer.release()
    page.goto(f"{base}/settings")
    page.fill("input[name='cam-0-name']", "lobby")
    page.fill("input[name='cam-0-source']", str(clip))
    page.click("#settings-save")
    page.wait_for_selector("#settings-saved")
    try:
        page.goto(f"{base}/")
        fig = page.locator('figure.cam[data-camera="lobby"]')
        page.wait_for_function(
            "() => { const f = document.querySelector('figure.cam[data-camera=\"lobby\"]');"
            " return f.querySelector('[data-field=state]').textContent === 'running'"
            " && Number(f.querySelector('[data-field=fps]').textContent) > 1"
            " && f.querySelector('img').naturalWidth > 0; }"
        )
        assert fig.locator("img").evaluate("img => img.naturalWidth") == 640
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "browser-live-camera.png"), full_page=True)
    finally:
        page.goto(f"{base}/settings")
        page.fill("input[name='cam-0-name']", "")
        page.fill("input[name='cam-0-source']", "")
        page.click("#settings-save")
        page.wait_for_selector("#settings-saved")
