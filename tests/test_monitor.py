"""The monitor: alerts that the loop can neither lose nor double, settings that apply everywhere.

Real parts: the bundled models, YuNet, real face photos from ../shared, a real SQLite store, video files
written here and played as cameras, the web app's real WebSocket, a real SMTP server (aiosmtpd).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from maskwatch.config import apply_overrides
from maskwatch.monitor import Monitor
from maskwatch.store import Store
from maskwatch.web import create_app
from smtp_sink import SmtpSink, free_port
from web_helpers import FAST_ALERTS, PASSWORD, face_tiles, jpeg, login, scene, shared_yunet, web_settings


@pytest.fixture(scope="module")
def tiles():
    t = face_tiles()
    if not t["real"] or shared_yunet() is None:
        pytest.skip("needs the real face photos and YuNet of ../shared")
    return t


def settings_for(tmp_path: Path, **extra):
    return web_settings(tmp_path, model_dir=None, yunet=shared_yunet(), **extra)  # the bundled models


def walking_clip(path: Path, tile: np.ndarray, frames: int = 20, fps: int = 10) -> Path:
    """One person crossing the picture from left to right (a camera file that then loops)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    th, tw = tile.shape[:2]
    for i in range(frames):
        canvas = np.full((480, 640, 3), 190, np.uint8)
        x = int(i * (640 - tw) / (frames - 1))
        canvas[140 : 140 + th, x : x + tw] = tile
        writer.write(canvas)
    writer.release()
    return path


def events_of(store: Store, camera: str):
    events, _total = store.list_events(camera=camera, limit=100)
    return sorted(events, key=lambda e: e.time)


@pytest.mark.timeout(90)
def test_a_looping_file_alerts_once_per_cooldown(tmp_path, tiles):
    clip = walking_clip(tmp_path / "walk.avi", tiles["unmasked"])  # a 2 s walk, played 5 times
    settings = settings_for(
        tmp_path, cameras=[{"name": "gate", "source": str(clip)}], alerts={**FAST_ALERTS, "cooldown_s": 6}
    )
    store = Store.from_settings(settings)
    monitor = Monitor(settings, store, run_mail=False)
    assert monitor.models.warm() is None
    monitor.start()
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not events_of(store, "gate"):
            time.sleep(0.2)
        first = time.time()
        assert events_of(store, "gate"), monitor.describe()
        time.sleep(max(0.0, first + 10 - time.time()))  # 10 s more: 5 more loops, one cooldown boundary
        cam = monitor.describe()[0]
    finally:
        monitor.stop()
    events = events_of(store, "gate")
    store.close()
    assert cam["frames"] >= 50, cam  # the file really looped while we watched
    assert 1 <= len(events) <= 2, [e.time for e in events]  # not once per loop (that was 5-6)
    if len(events) == 2:
        assert (events[1].time - events[0].time).total_seconds() >= 6 - 0.1
    assert len({e.track_id for e in events}) == len(events)  # track ids are never reused


def test_two_webcam_tabs_of_one_user_are_two_streams_and_each_alerts(tmp_path, tiles):
    settings = settings_for(tmp_path, alerts={**FAST_ALERTS, "cooldown_s": 300})
    store = Store.from_settings(settings)
    store.add_user("admin", PASSWORD)
    app = create_app(settings, store=store, start_background=False)
    frame = jpeg(scene(tiles, faces=("unmasked",)))
    events: dict[str, list] = {"a": [], "b": []}
    with TestClient(app, base_url="http://testserver") as client:
        login(client)
        with client.websocket_connect("/ws/webcam") as a, client.websocket_connect("/ws/webcam") as b:
            for _ in range(8):  # the two tabs take turns, as they would with one shared engine
                for name, ws in (("a", a), ("b", b)):
                    ws.send_bytes(frame)
                    msg = ws.receive_json()
                    assert msg["type"] == "result", msg
                    events[name] += msg["events"]
    store.close()
    assert len(events["a"]) == 1 and len(events["b"]) == 1, events
    cams = {events["a"][0]["camera"], events["b"][0]["camera"]}
    assert len(cams) == 2 and all(c.startswith("browser:admin#") for c in cams)


def test_a_pipeline_rebuild_mid_track_keeps_the_track_and_its_cooldown(tmp_path, tiles):
    settings = settings_for(tmp_path, alerts={**FAST_ALERTS, "cooldown_s": 300})
    store = Store.from_settings(settings)
    monitor = Monitor(settings, store, run_mail=False)
    session = monitor.open_session("test")
    image = scene(tiles, faces=("unmasked",))
    t0 = time.time()
    alerts, ids = [], []
    for i in range(6):
        result, events = session.process(image, t0 + i * 0.1)
        alerts += events
        ids += [f.track_id for f in result.faces]
    assert len(alerts) == 1
    generation = monitor.models.generation
    monitor.update_settings(apply_overrides(settings, {"models": {"reclassify_every": 4}}))
    assert monitor.models.generation == generation + 1  # the models are reloaded: a new pipeline
    for i in range(6, 16):
        result, events = session.process(image, t0 + i * 0.1)
        alerts += events
        ids += [f.track_id for f in result.faces]
    assert session.pipeline.reclassify_every == 4  # the rebuilt pipeline is in use
    assert len(set(ids)) == 1 and len(alerts) == 1  # same track, no second alert within the cooldown
    assert result.faces[0].mask.label == "no_mask"  # votes started again on the new models
    monitor.stop()
    store.close()


@pytest.mark.timeout(90)
def test_settings_saved_on_the_settings_page_apply_after_a_restart(tmp_path, tiles):
    """The file says: no SMTP server, 50 emails an hour; the settings page saved an SMTP server and a cap
    of 1. After a restart the rules, the alert engine and the mail worker use the saved ones."""
    file_settings = settings_for(tmp_path, alerts={**FAST_ALERTS, "max_emails_per_hour": 50})
    with SmtpSink() as sink:
        store = Store.from_settings(file_settings)
        store.add_user("admin", PASSWORD)
        store.set_setting_overrides(
            {
                "smtp": {
                    "host": "127.0.0.1",
                    "port": sink.port,
                    "security": "none",
                    "recipients": ["a@example.org"],
                },
                "alerts": {"max_emails_per_hour": 1, "min_frames": 2, "cooldown_s": 300},
            }
        )
        store.close()
        store = Store.from_settings(file_settings)  # "the restart": a new process would open it so
        app = create_app(file_settings, store=store)
        rt = app.state.runtime
        assert rt.settings.smtp.host == "127.0.0.1"
        assert rt.monitor.mailer.settings.smtp.port == sink.port
        assert rt.alerts.rules.settings.min_frames == 2
        with TestClient(app, base_url="http://testserver"):  # starts the monitor and the mail worker
            image = scene(tiles, faces=("unmasked",))
            for name in ("tab1", "tab2"):  # two people (two streams): two alerts, one email (the cap)
                session = rt.session(name)
                for i in range(4):
                    session.process(image, i, time.time())
            assert rt.alerts.flush()
            assert sink.wait_for(1, timeout=20), "the mail worker did not use the saved SMTP server"
            events = sorted(store.list_events(limit=10)[0], key=lambda e: e.time)
        store.close()
    assert [e.mail_status for e in events][:2] in (["queued", "capped"], ["sent", "capped"]), events
    assert len(sink.messages) == 1


def test_camera_errors_never_show_credentials(tmp_path, caplog):
    url = f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/live"  # nothing listens there
    settings = settings_for(tmp_path, cameras=[{"name": "door", "source": url}])
    store = Store.from_settings(settings)
    monitor = Monitor(settings, store, run_mail=False)
    monitor.start()
    try:
        deadline = time.time() + 20
        cam = monitor.describe()[0]
        while time.time() < deadline and not cam.get("error"):
            time.sleep(0.1)
            cam = monitor.describe()[0]
    finally:
        monitor.stop()
        store.close()
    assert cam["state"] in ("reconnecting", "down") and "***@127.0.0.1" in cam["error"], cam
    assert "s3cret" not in repr(cam) and "s3cret" not in caplog.text


def test_the_data_directory_is_private(tmp_path):
    import stat

    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "old.db").write_bytes(b"x")
    (data / "old.db").chmod(0o644)  # made by an older version
    settings = web_settings(tmp_path, model_dir=None, yunet=None)
    store = Store.from_settings(settings)
    store.close()
    app = create_app(settings, start_background=False)
    app.state.runtime.store.close()
    modes = {p.relative_to(data).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [data, *data.rglob("*")]}
    assert modes["."] == 0o700 and modes["old.db"] == 0o600 and modes["maskwatch.db"] == 0o600, modes
    assert all(m & 0o077 == 0 for m in modes.values()), modes  # nothing readable by group or others


def test_another_person_under_a_track_gets_a_new_track_and_none_of_the_old_labels(tmp_path, tiles):
    """A masked person, then (same place, next frame) another, unmasked person: the appearance check makes
    the second one a new track, so the first one's `mask` votes never show on them."""
    settings = settings_for(tmp_path, alerts={**FAST_ALERTS, "cooldown_s": 300})
    store = Store.from_settings(settings)
    monitor = Monitor(settings, store, run_mail=False)
    session = monitor.open_session("swap")
    first, second = scene(tiles, faces=("masked",)), scene(tiles, faces=("unmasked",))
    t0, seen = time.time(), []
    for i in range(12):
        result, _ = session.process(first if i < 6 else second, t0 + i * 0.1)
        seen.append([(f.track_id, f.mask.label) for f in result.faces])
    monitor.stop()
    store.close()
    assert all(len(s) == 1 for s in seen), seen
    ids = [s[0][0] for s in seen]
    assert len(set(ids[:6])) == 1 and ids[-1] != ids[0], seen  # a new id once the face changed
    assert ids.index(ids[-1]) <= 8, seen  # within two frames of the swap
    assert all(label != "mask" for tid, label in (s[0] for s in seen[6:]) if tid != ids[0]), seen
    assert seen[-1][0][1] == "no_mask"
