"""Pages for daily use in Debian Chromium (Playwright) against a real uvicorn server on a free port:
no page wider than the viewport at 1280, 390 and 360 px, dark mode from prefers-color-scheme, upload
size check, progress (bytes, then frames) and cancel, acknowledge and delete, outbox retry / resend
and the test email against a real local SMTP server, the site time zone. Screenshots: /tmp/screens/.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import pytest

from smtp_sink import SmtpSink, free_port
from web_helpers import (
    PASSWORD,
    browser_test,
    face_tiles,
    jpeg,
    launch_chromium,
    make_app,
    scene,
    seed_history,
    write_clip,
)

pytestmark = browser_test
SCREENS = Path("/tmp/screens")
T_EVENT = datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC)
WIDE = "() => document.documentElement.scrollWidth - window.innerWidth"
BACKGROUND = "() => getComputedStyle(document.body).backgroundColor"


@pytest.fixture(scope="module")
def smtp():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, tiny_models, smtp):
    """(base URL, store, runtime): the app with no user yet (first-run setup), seeded history, SMTP
    pointing at the local sink, the site time zone UTC and a 2 MB upload limit."""
    import uvicorn

    tmp = tmp_path_factory.mktemp("daily")
    app, store = make_app(
        tmp,
        tiny_models,
        users={},
        yunet=None,
        smtp={"host": "127.0.0.1", "port": smtp.port, "security": "none", "recipients": ["ops@example.org"]},
        server={"timezone": "UTC"},
        cameras=[{"name": "door", "source": str(tmp / "none.avi"), "enabled": False}],
        web={"max_upload_mb": 2, "uploads_per_minute": 100},
    )
    seed_history(store, face_tiles(), hours=6, events=4)
    store.add_event(
        camera="door",
        time=T_EVENT,
        track_id=7,
        mask=_attr("no_mask", 0.93),
        gender=None,
        snapshot_jpeg=jpeg(scene(face_tiles(), faces=("unmasked",))),
    )
    rt = app.state.runtime
    rt.monitor.reconcile(rt.settings.cameras)  # the (disabled) camera's tile, without starting the monitor
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store, app.state.runtime
    server.should_exit = True
    thread.join(10)
    store.close()


def _attr(label, confidence):
    from maskwatch.types import Attribute

    return Attribute(label, confidence)


@pytest.fixture(scope="module")
def page(app_server):
    from playwright.sync_api import sync_playwright

    base, _, rt = app_server
    SCREENS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000)
        pg = context.new_page()
        pg.on("dialog", lambda d: d.accept())
        for width in (1280, 390):  # the setup and login pages before anyone is logged in
            pg.set_viewport_size({"width": width, "height": 900})
            pg.goto(f"{base}/login")
            assert pg.evaluate(WIDE) <= 0, f"login at {width} px"
            pg.goto(f"{base}/setup?token={rt.setup_token}")
            assert pg.evaluate(WIDE) <= 0, f"setup at {width} px"
        pg.screenshot(path=str(SCREENS / "setup-390-light.png"), full_page=True)
        pg.fill("input[name=username]", "admin")
        pg.fill("input[name=password]", PASSWORD)
        pg.fill("input[name=password2]", PASSWORD)
        pg.click("button[type=submit]")
        pg.wait_for_url(f"{base}/")
        pg.set_viewport_size({"width": 1280, "height": 900})
        yield pg
        browser.close()


def _event_id(store) -> int:
    events, _ = store.list_events(camera="door", since=T_EVENT, until=T_EVENT.replace(minute=1))
    return events[0].id


PAGES = ["/", "/upload", "/events", "/stats", "/outbox", "/settings", "/api/docs", "/events/999999"]


def test_no_page_wider_than_the_viewport_and_dark_mode(page, app_server):
    base, store, _ = app_server
    pages = [*PAGES, f"/events/{_event_id(store)}"]
    backgrounds: dict[str, set[str]] = {"light": set(), "dark": set()}
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for width in (1280, 390, 360):
            page.set_viewport_size({"width": width, "height": 900})
            for path in pages:
                page.goto(f"{base}{path}")
                assert page.evaluate(WIDE) <= 0, f"{path} scrolls sideways at {width} px ({scheme})"
                backgrounds[scheme].add(page.evaluate(BACKGROUND))
                if width != 360 and path in ("/", "/events", "/stats", "/outbox", "/settings"):
                    name = path.strip("/") or "live"
                    page.screenshot(path=str(SCREENS / f"{name}-{width}-{scheme}.png"), full_page=True)
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 1280, "height": 900})

    def luminance(css: str) -> float:
        r, g, b = (int(v) for v in re.findall(r"\d+", css)[:3])
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    assert len(backgrounds["light"]) == 1 and len(backgrounds["dark"]) == 1, backgrounds
    assert luminance(backgrounds["light"].pop()) > 200
    assert luminance(backgrounds["dark"].pop()) < 50


def test_tables_become_cards_on_a_phone(page, app_server):
    base, _, _ = app_server
    page.set_viewport_size({"width": 390, "height": 900})
    page.goto(f"{base}/events")
    cell = page.locator("#events-table tbody tr td:nth-child(3)").first
    assert cell.get_attribute("data-label") == "Camera"
    assert cell.evaluate("td => getComputedStyle(td).display") == "block"
    assert page.locator("#events-table thead").evaluate("t => getComputedStyle(t).display") == "none"
    page.goto(f"{base}/stats")  # the phone-width charts, not the wide ones shrunk
    assert page.locator("svg.chart-narrow").first.is_visible()
    assert page.locator("svg.chart-wide").first.is_hidden()
    page.set_viewport_size({"width": 1280, "height": 900})
    assert page.locator("svg.chart-wide").first.is_visible()


def test_acknowledge_and_delete(page, app_server):
    base, store, _ = app_server
    event_id = _event_id(store)
    page.goto(f"{base}/events?camera=door")
    row = page.locator(f'#events-table tr[data-event-id="{event_id}"]')
    row.locator("button", has_text="Acknowledge").click()
    page.wait_for_url(re.compile(r"/events\?camera=door"))
    assert "✓ admin" in page.locator(f'#events-table tr[data-event-id="{event_id}"]').inner_text()
    stored = store.get_event(event_id)
    assert stored.acknowledged_by == "admin" and stored.acknowledged_at is not None
    page.goto(f"{base}/events/{event_id}")
    assert page.inner_text("#event-ack").startswith("by admin, ")
    page.click("img.zoomable")  # the snapshot viewer opens, zooms, closes
    page.click("dialog.viewer img")
    assert page.locator("dialog.viewer.zoomed").count() == 1
    page.click("dialog.viewer button")
    page.locator("dialog.viewer").wait_for(state="detached")  # removed on its (asynchronous) close event
    ids = [e.id for e in store.list_events(limit=100)[0]]
    victim = next(i for i in ids if i != event_id)
    snapshot = store.snapshot_file(store.get_event(victim))
    page.goto(f"{base}/events/{victim}")
    page.click("#event-delete")  # confirmed by the dialog handler
    page.wait_for_url(re.compile(r"/events$"))
    assert store.get_event(victim) is None and snapshot is not None and not snapshot.exists()
    assert page.locator(f'#events-table tr[data-event-id="{victim}"]').count() == 0


def test_outbox_test_email_retry_and_resend(page, app_server, smtp):
    base, store, rt = app_server
    from maskwatch.store import MailDraft

    page.goto(f"{base}/outbox")
    before = len(smtp.messages)
    page.fill("#test-email input[name=to]", "tester@example.org")
    page.click("#test-email button")
    page.wait_for_selector("#outbox-notice")
    assert "Test email sent to tester@example.org" in page.inner_text("#outbox-notice")
    assert len(smtp.messages) == before + 1 and smtp.messages[-1]["To"] == "tester@example.org"
    failed = store.queue_mail(MailDraft("failed one", "text", "<p>html</p>", to=["a@example.org"]))
    store.claim_message(failed)
    store.finish_message(failed, status="failed", error="550 no")
    sent = store.queue_mail(MailDraft("sent one", "text", "<p>html</p>", to=["b@example.org"]))
    store.claim_message(sent)
    store.finish_message(sent, status="sent")
    page.goto(f"{base}/outbox")
    page.click("#outbox-table button.retry")
    page.wait_for_selector("#outbox-notice")
    assert store.get_message(failed).status == "queued"
    page.click("#outbox-table button.resend")
    page.wait_for_selector("#outbox-notice")
    assert "copy of message" in page.inner_text("#outbox-notice")
    before = len(smtp.messages)
    assert rt.monitor.mailer.send_pending_once() == 2  # the mail worker's pass (not started in tests)
    subjects = sorted(m["Subject"] for m in smtp.messages[before:])
    assert subjects == ["failed one", "sent one"]
    assert store.get_message(failed).status == "sent"


def test_time_zone_setting_changes_displayed_times(page, app_server):
    base, store, _ = app_server
    event_id = _event_id(store)
    page.goto(f"{base}/events/{event_id}")
    assert "2026-07-01 12:00:00 UTC" in page.inner_text("dl.facts")
    page.goto(f"{base}/settings")
    page.fill("input[name='server.timezone']", "Asia/Tokyo")
    page.click("#settings-save")
    page.wait_for_selector("#settings-saved")
    try:
        page.goto(f"{base}/events/{event_id}")
        assert "2026-07-01 21:00:00 JST" in page.inner_text("dl.facts")
        page.goto(f"{base}/events?since=2026-07-01T20:59&until=2026-07-01T21:01")  # typed in Tokyo time
        assert page.locator(f'#events-table tr[data-event-id="{event_id}"]').count() == 1
        with page.expect_download() as dl:
            page.click("#events-csv")
        assert "2026-07-01T12:00:00+00:00" in Path(dl.value.path()).read_text()  # exports stay UTC
    finally:
        page.goto(f"{base}/settings")
        page.fill("input[name='server.timezone']", "UTC")
        page.click("#settings-save")
        page.wait_for_selector("#settings-saved")


def test_upload_size_check_progress_and_cancel(page, app_server, tmp_path):
    base, _, _ = app_server
    page.goto(f"{base}/upload")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + bytes(3 << 20))
    page.set_input_files("#upload-file", str(big))
    assert "the limit is 2.0 MB" in page.inner_text("#upload-check")
    frames = [cv2.resize(scene(face_tiles()), (320, 240))] * 80
    clip = write_clip(tmp_path / "clip.avi", frames, fps=25)
    assert clip.stat().st_size < 2 << 20
    seen = (
        "() => { window.seen = []; const el = document.getElementById('upload-busy');"
        " new MutationObserver(() => window.seen.push(el.textContent))"
        ".observe(el, {childList: true, characterData: true, subtree: true}); }"
    )
    page.evaluate(seen)
    page.set_input_files("#upload-file", str(clip))
    page.click("#upload-submit")
    page.wait_for_selector("#upload-result", timeout=60_000)  # a shared 2-core machine may be slow
    texts = page.evaluate("() => window.seen")
    assert any(t.startswith("Uploading:") for t in texts), texts
    frames_seen = [int(m.group(1)) for t in texts if (m := re.match(r"Analysing: (\d+) of 80", t))]
    assert frames_seen and frames_seen[0] < 80, texts
    # cancel while the frames are analysed: the server stops and says so
    page.evaluate(seen)
    page.set_input_files("#upload-file", str(clip))
    page.click("#upload-submit")
    page.wait_for_function("() => window.seen.some(t => t.startsWith('Analysing:'))")
    page.click("#upload-cancel")
    page.wait_for_selector("#upload-error")
    assert "cancelled" in page.inner_text("#upload-error")
    assert page.locator("#upload-result").count() == 0


def test_live_banner_on_a_server_camera_alert_and_tile_compliance(page, app_server):
    base, store, _ = app_server
    page.goto(f"{base}/")
    page.wait_for_function(
        "() => /\\d+%/.test(document.querySelector('[data-camera=door] [data-field=compliance_1h]')"
        ".textContent)"
    )
    assert page.locator("#alert-banner").is_hidden()
    page.wait_for_timeout(1200)  # the page has connected and knows the newest event
    event = store.add_event(
        camera="door",
        time=datetime.now(UTC),
        track_id=42,
        mask=_attr("incorrect", 0.88),
        gender=None,
        snapshot_jpeg=None,
    )
    page.wait_for_selector("#alert-banner:not([hidden])")
    assert "door: mask worn incorrectly (track #42, 88%)" in page.inner_text("#alert-banner")
    assert page.get_attribute("#alert-link", "href") == f"/events/{event.id}"
    assert not page.is_checked("#alert-sound")  # off by default
    page.click("#alert-dismiss")
    assert page.locator("#alert-banner").is_hidden()


def test_webcam_stop_clears_counters(page, app_server):
    base, _, _ = app_server
    page.goto(f"{base}/")
    page.click("#webcam-start")
    page.wait_for_function("() => Number(document.getElementById('webcam-result').dataset.frame) >= 5")
    assert page.inner_text('#webcam-counters [data-counter="fps"]') != "–"
    page.click("#webcam-stop")
    assert page.inner_text('#webcam-counters [data-counter="fps"]') == "–"
    assert page.inner_text('#webcam-counters [data-counter="people"]') == "0"
    assert page.locator("#webcam-faces tbody tr").count() == 0
