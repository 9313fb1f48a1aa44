"""Email against a real SMTP server (aiosmtpd on 127.0.0.1): content, outbox, retry, restart, auth, TLS."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("aiosmtpd")

from maskwatch.alerts import AlertEngine, MailError, MailWorker, send_test_email  # noqa: E402
from maskwatch.alerts.cli import alerts, events, users  # noqa: E402
from maskwatch.config import Settings  # noqa: E402
from maskwatch.store import MailDraft, Store  # noqa: E402
from maskwatch.types import Attribute, FrameResult  # noqa: E402
from simulate_alerts import video_results  # noqa: E402
from smtp_sink import SmtpSink, free_port  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

ADMIN = "admin@example.org"
NOMASK_VIDEO = "videos/yash42828_Detection-of-Face-Mask__test_no_mask.mp4"


@pytest.fixture
def sink():
    s = SmtpSink().start()
    yield s
    s.stop()


def settings_for(tmp_path, port, **smtp):
    smtp = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "recipients": [ADMIN],
        "retry_initial_s": 0.01,
        "retry_max_s": 0.05,
        "timeout_s": 5,
        **smtp,
    }
    return Settings(data_dir=tmp_path / "data", smtp=smtp, alerts={"base_url": "http://mw.example:8000"})


def attachment_jpegs(msg):
    return [p.get_content() for p in msg.iter_attachments() if p.get_content_type() == "image/jpeg"]


def test_real_no_mask_video_gives_exactly_one_email(tmp_path, sink, shared_data, yunet_path):
    settings = settings_for(tmp_path, sink.port)
    store = Store.from_settings(settings)
    engine = AlertEngine(settings, store)
    worker = MailWorker(settings, store, poll_s=0.05)
    worker.start()
    frames = list(video_results(shared_data / NOMASK_VIDEO, yunet_path, max_frames=40))
    assert sum(len(r.faces) for _, r, _ in frames) >= 30, "YuNet should find the face in the clip"
    events = [e for frame, r, _ in frames for e in engine.observe("entrance", r, frame)]
    # the same person walks in again 20 s later (new track ids): inside the 300 s cooldown
    for frame, r, _ in frames:
        faces = tuple(f.with_(track_id=f.track_id + 100) for f in r.faces)
        again = FrameResult(r.source, r.frame_index + 500, r.timestamp + 20, faces, frame_size=r.frame_size)
        events += engine.observe("entrance", again, frame)
    assert len(events) == 1
    assert engine.flush()
    assert sink.wait_for(1)
    time.sleep(0.3)  # nothing else arrives
    worker.stop()
    assert len(sink.messages) == 1
    msg = sink.messages[0]
    ev = store.get_event(events[0].id)
    assert msg["To"] == ADMIN and "No mask" in msg["Subject"] and "entrance" in msg["Subject"]
    assert msg["X-Maskwatch-Events"] == str(ev.id)
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Camera: entrance" in text and "confidence 95%" in text
    assert (
        f"http://mw.example:8000/events/{ev.id}" in text
        and f"href='http://mw.example:8000/events/{ev.id}'" in html
    )
    (jpeg,) = attachment_jpegs(msg)
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (360, 640, 3)
    assert ev.mail_status == "sent" and store.list_outbox(status="sent")[1] == 1
    engine.stop()
    store.close()


def test_server_down_then_back_delivers_the_queue(tmp_path, caplog):
    port = free_port()
    settings = settings_for(tmp_path, port)
    store = Store.from_settings(settings)
    store.queue_mail(MailDraft(subject="first", text="t", html="<p>t</p>"))
    store.queue_mail(MailDraft(subject="second", text="t", html="<p>t</p>"))
    worker = MailWorker(settings, store)
    with caplog.at_level(logging.ERROR, logger="maskwatch.alerts.mail"):
        assert worker.send_pending_once() == 0
    assert "refused the connection" in caplog.text
    msgs, _ = store.list_outbox(status="queued")
    assert len(msgs) == 2 and all(m.attempts == 1 and "refused" in m.last_error for m in msgs)
    assert worker.health["mail_ok"] is False and worker.health["send_failures"] == 2  # /metrics reads it
    with SmtpSink(port) as sink:
        time.sleep(0.06)  # the backoff
        assert worker.send_pending_once() == 2
        assert sorted(m["Subject"] for m in sink.messages) == ["first", "second"]
        assert worker.send_pending_once() == 0  # sent at most once
    assert store.list_outbox(status="sent")[1] == 2 and worker.health["mail_ok"] is True
    store.close()


def test_connection_lost_after_data_is_not_resent(tmp_path, sink):
    """The server kept the message but the connection broke before its "250": resending could make a
    duplicate, so the message is marked failed (visible in the app) instead."""
    settings = settings_for(tmp_path, sink.port)
    store = Store.from_settings(settings)
    first = store.queue_mail(MailDraft(subject="first", text="t", html="h"))
    store.queue_mail(MailDraft(subject="second", text="t", html="h"))
    sink.drop_after_data = 1
    worker = MailWorker(settings, store)
    assert worker.send_pending_once() == 0
    msg = store.get_message(first)
    assert msg.status == "failed" and "may have been delivered" in msg.last_error
    time.sleep(0.06)
    assert worker.send_pending_once() == 1  # the second one, on a new connection
    assert worker.send_pending_once() == 0
    assert sorted(m["Subject"] for m in sink.messages) == ["first", "second"]  # each exactly once
    store.close()


def test_display_names_and_rejected_recipients(tmp_path, sink):
    sink.reject = {"gone@example.org"}
    recipients = ['"Ops, Team" <ops@example.org>', "gone@example.org"]
    settings = settings_for(tmp_path, sink.port, recipients=recipients)
    store = Store.from_settings(settings)
    store.queue_mail(MailDraft(subject="Café door ✓", text="Caméra: Café\n.\n", html="<p>Café</p>"))
    worker = MailWorker(settings, store)
    assert worker.send_pending_once() == 1  # one good recipient is enough
    assert sink.envelopes[0][1] == ["ops@example.org"] and "Ops, Team" in sink.messages[0]["To"]
    msg = sink.messages[0]
    assert (
        msg["Subject"] == "Café door ✓"
        and msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Caméra: Café\n.\n"
    )
    only_bad = store.queue_mail(MailDraft(subject="nobody", text="t", html="h", to=["gone@example.org"]))
    assert worker.send_pending_once() == 0
    msg = store.get_message(only_bad)  # a permanent refusal: failed at once, not retried
    assert msg.status == "failed" and "550" in msg.last_error and "permanent" in msg.last_error
    store.close()


def test_queued_emails_survive_a_process_restart(tmp_path):
    """A process sees a no-mask person while the mail server is down and is killed; a new process sends."""
    port = free_port()
    data = tmp_path / "data"
    env = {
        **os.environ,
        "MASKWATCH_DATA_DIR": str(data),
        "MASKWATCH_SMTP__HOST": "127.0.0.1",
        "MASKWATCH_SMTP__PORT": str(port),
        "MASKWATCH_SMTP__SECURITY": "none",
        "MASKWATCH_SMTP__RECIPIENTS": f'["{ADMIN}"]',
        "MASKWATCH_SMTP__RETRY_INITIAL_S": "0.01",
    }
    first = textwrap.dedent("""
        import os, numpy as np
        from maskwatch.alerts import AlertEngine, MailWorker
        from maskwatch.config import Settings
        from maskwatch.store import Store
        from maskwatch.types import Attribute, Face, FrameResult
        s = Settings(); store = Store.from_settings(s)
        engine = AlertEngine(s, store); worker = MailWorker(s, store, poll_s=0.05); worker.start()
        frame = np.zeros((240, 320, 3), np.uint8)
        for i in range(30):
            face = Face(box=(100, 60, 160, 130), score=0.9, track_id=7, mask=Attribute("no_mask", 0.9))
            engine.observe("lobby", FrameResult("lobby", i, i / 10, (face,)), frame)
        assert engine.flush()
        import time; time.sleep(0.3)  # the worker tries (server down)
        os._exit(9)  # killed: no clean shutdown
    """)
    r = subprocess.run([sys.executable, "-c", first], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 9, r.stderr
    store = Store(f"sqlite:///{data / 'maskwatch.db'}", snapshots_dir=data / "snapshots")
    (queued,), _ = store.list_outbox(status="queued")
    assert queued.attempts >= 1 and "refused" in queued.last_error
    store.close()
    second = textwrap.dedent("""
        import time
        from maskwatch.alerts import MailWorker
        from maskwatch.config import Settings
        from maskwatch.store import Store
        s = Settings(); store = Store.from_settings(s)
        worker = MailWorker(s, store, poll_s=0.05); worker.start()
        deadline = time.time() + 20
        while store.list_outbox(status="queued")[1] and time.time() < deadline:
            time.sleep(0.05)
        worker.stop(); store.close()
    """)
    with SmtpSink(port) as sink:
        r = subprocess.run(
            [sys.executable, "-c", second], env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        assert len(sink.messages) == 1
        msg = sink.messages[0]
        assert "lobby" in msg["Subject"] and len(attachment_jpegs(msg)) == 1
    store = Store(f"sqlite:///{data / 'maskwatch.db'}", snapshots_dir=data / "snapshots")
    assert store.list_outbox(status="sent")[1] == 1 and store.list_events()[0][0].mail_status == "sent"
    store.close()


def test_wrong_credentials_clear_error_in_log_and_outbox(tmp_path, caplog):
    with SmtpSink(users={"mw": "right-password"}) as sink:
        settings = settings_for(tmp_path, sink.port, username="mw", password="wrong-password")
        store = Store.from_settings(settings)
        store.queue_mail(MailDraft(subject="alert", text="t", html="h"))
        worker = MailWorker(settings, store)
        with caplog.at_level(logging.ERROR, logger="maskwatch.alerts.mail"):
            assert worker.send_pending_once() == 0
        assert "SMTP authentication failed for user 'mw'" in caplog.text
        (msg,), _ = store.list_outbox()
        assert msg.status == "queued" and "SMTP authentication failed for user 'mw'" in msg.last_error
        assert "authentication failed" in worker.health["mail_error"]
        with pytest.raises(MailError, match="authentication failed"):
            send_test_email(settings)
        # fixed in the settings page: sent right away
        worker.update_settings(settings_for(tmp_path, sink.port, username="mw", password="right-password"))
        assert worker.send_pending_once() == 1 and len(sink.messages) == 1
        store.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cmd = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(d / "key.pem"),
        "-out",
        str(d / "cert.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make a self-signed certificate with openssl: {exc}")
    return d / "cert.pem", d / "key.pem"


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_tls_with_auth(tmp_path, cert, mode):
    with SmtpSink(users={"mw": "pw-123456"}, tls=cert, mode=mode) as sink:
        settings = settings_for(
            tmp_path, sink.port, security=mode, username="mw", password="pw-123456", ca_file=str(cert[0])
        )
        send_test_email(settings, to="other@example.org")
        assert sink.wait_for(1) and sink.envelopes[0][1] == ["other@example.org"]
        assert "Test email" in sink.messages[0]["Subject"]
        untrusted = settings_for(tmp_path, sink.port, security=mode, username="mw", password="pw-123456")
        with pytest.raises(MailError, match="TLS with SMTP server .* failed"):
            send_test_email(untrusted)


def test_plain_server_without_starttls_is_a_clear_error(tmp_path, sink):
    with pytest.raises(MailError, match="does not offer STARTTLS"):
        send_test_email(settings_for(tmp_path, sink.port, security="starttls"))


def test_cli_test_email_export_and_users(tmp_path, sink, monkeypatch):
    monkeypatch.setenv("MASKWATCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MASKWATCH_SMTP__HOST", "127.0.0.1")
    monkeypatch.setenv("MASKWATCH_SMTP__PORT", str(sink.port))
    monkeypatch.setenv("MASKWATCH_SMTP__SECURITY", "none")
    runner = CliRunner()
    r = runner.invoke(alerts, ["test-email", "--to", ADMIN])
    assert r.exit_code == 0, r.output
    assert sink.wait_for(1) and sink.envelopes[0][1] == [ADMIN]
    r = runner.invoke(alerts, ["test-email", "--to", "not-an-address"])
    assert r.exit_code == 1 and "not a valid email address" in r.output
    r = runner.invoke(alerts, ["test-email"])
    assert r.exit_code == 1 and "no recipient" in r.output
    monkeypatch.setenv("MASKWATCH_SMTP__PORT", str(free_port()))
    r = runner.invoke(alerts, ["test-email", "--to", ADMIN])
    assert r.exit_code == 1 and "refused the connection" in r.output

    settings = Settings()
    store = Store.from_settings(settings)
    from datetime import UTC, datetime

    store.add_event(
        camera="gate, north",
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        track_id=3,
        mask=Attribute("no_mask", 0.91),
        gender=Attribute("man", 0.8),
        snapshot_jpeg=None,
    )
    store.add_event(
        camera="gate, north",
        time=datetime(2026, 1, 2, 3, 5, 0, tzinfo=UTC),
        track_id=4,
        mask=Attribute("incorrect", 0.87),
        gender=None,
        snapshot_jpeg=None,
    )
    store.close()
    out = tmp_path / "events.csv"
    r = runner.invoke(events, ["export", "--csv", str(out)])
    assert r.exit_code == 0, r.output
    assert "2 event(s) written" in r.output and "(incorrect 1, no_mask 1)" in r.output
    lines = out.read_text().splitlines()
    assert (
        lines[0].startswith("id,time_utc,camera")
        and '"gate, north"' in lines[1]
        and "no_mask,0.91,man" in lines[1]
        and ",4,incorrect,0.87," in lines[2]
    )

    r = runner.invoke(users, ["add", "admin", "--password-stdin"], input="long-password\n")
    assert r.exit_code == 0, r.output
    r = runner.invoke(users, ["add", "bob"], input="bob-password\nbob-password\n")
    assert r.exit_code == 0, r.output
    r = runner.invoke(users, ["add", "eve", "--password-stdin"], input="short\n")
    assert r.exit_code == 1 and "at least 8" in r.output
    r = runner.invoke(users, ["list"])
    assert r.output.split() == ["admin", "bob"]
    store = Store.from_settings(Settings())
    assert store.verify_user("admin", "long-password")
    store.close()


def test_registered_in_main_cli():
    from maskwatch import cli

    names = dict(cli.COMMAND_MODULES)["maskwatch.alerts.cli"]
    assert {"alerts", "events", "users", "tokens"} <= set(names)
    assert all(name in cli.main.commands for name in names)  # and really on the command line


def test_compose_escapes_html(tmp_path):
    from datetime import UTC, datetime

    from maskwatch.alerts.mail import compose_alert
    from maskwatch.store import Event

    ev = Event(1, "<script>x</script>", datetime.now(UTC), 1, "no_mask", 0.9, "man", 0.9, None, "queued")
    draft = compose_alert(Settings(data_dir=Path(tmp_path)), ev)
    assert "<script>" not in draft.html and "&lt;script&gt;" in draft.html


def test_incorrect_mask_alert_email_says_so(tmp_path, sink):
    """A person with the mask under the nose, through the real rules, store, outbox and SMTP."""
    from maskwatch.types import Face

    settings = settings_for(tmp_path, sink.port)
    store = Store.from_settings(settings)
    engine = AlertEngine(settings, store)
    frame = np.full((360, 640, 3), 90, np.uint8)
    face = Face((100, 100, 180, 200), 0.9, track_id=1, mask=Attribute("incorrect", 0.9))
    for i in range(20):
        engine.observe("door", FrameResult("door", i, i / 10, (face,), frame_size=(640, 360)), frame)
    assert engine.flush()
    (ev,), _ = store.list_events()
    assert ev.mask_label == "incorrect"
    assert MailWorker(settings, store).send_pending_once() == 1
    (msg,) = sink.messages
    assert msg["Subject"].startswith("[maskwatch] Mask worn incorrectly: door at ")
    text = msg.get_body(("plain",)).get_content()
    html_body = msg.get_body(("html",)).get_content()
    assert "wearing a mask incorrectly (nose or mouth uncovered)" in text and "no mask" not in text.lower()
    assert "Mask: mask worn incorrectly, nose or mouth uncovered (confidence 90%)" in text
    assert "wearing a mask incorrectly (nose or mouth uncovered)" in html_body
    assert len(attachment_jpegs(msg)) == 1
    engine.stop()
    store.close()


def test_digest_names_each_kind(tmp_path):
    from datetime import UTC, datetime

    from maskwatch.alerts.mail import compose_digest
    from maskwatch.store import Event

    def ev(i, label):
        return Event(i, "door", datetime.now(UTC), i, label, 0.9, None, None, None, "digest")

    s = Settings(data_dir=Path(tmp_path))
    assert compose_digest(s, [ev(1, "no_mask"), ev(2, "no_mask")]).subject.startswith(
        "[maskwatch] No mask: 2"
    )
    only = compose_digest(s, [ev(1, "incorrect")])
    assert only.subject.startswith("[maskwatch] Mask worn incorrectly: 1 people")
    both = compose_digest(s, [ev(1, "no_mask"), ev(2, "incorrect"), ev(3, "incorrect")])
    assert both.subject.startswith("[maskwatch] No mask or mask worn incorrectly: 3 people")
    assert "without a mask (1) or wearing one with nose or mouth uncovered (2)" in both.text
    assert both.text.count("mask worn incorrectly, nose or mouth uncovered") == 2
