"""MQTT integration against a real mosquitto on 127.0.0.1 (started here): events, state, availability
with its last will, Home Assistant discovery, and a broker outage (0 events lost, the loop never waits).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import cv2
import pytest

mqtt = pytest.importorskip("paho.mqtt.client", reason="needs paho-mqtt (the mqtt extra)")

from maskwatch.integrations import mqtt as mw_mqtt  # noqa: E402
from maskwatch.monitor import Monitor  # noqa: E402
from maskwatch.store import Store  # noqa: E402
from smtp_sink import free_port  # noqa: E402
from web_helpers import FAST_ALERTS, face_tiles, scene, shared_yunet, web_settings  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto (apt-get install mosquitto)")


class Broker:
    """mosquitto on 127.0.0.1:port; persistence on, so a subscriber's session survives a restart.
    `listener`: more settings of the listener (password_file, TLS files); `anonymous` False refuses
    clients without credentials."""

    def __init__(self, tmp: Path, listener: str = "", anonymous: bool = True):
        self.port = free_port()
        self.dir = tmp
        conf = tmp / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n{listener}\nallow_anonymous {str(anonymous).lower()}\n"
            "persistence true\n"
            f"user {getpass.getuser()}\n"  # as root, mosquitto would switch to "mosquitto" (no access here)
            f"persistence_location {tmp}/\nlog_dest file {tmp}/mosquitto.log\n"
        )
        self.conf = conf
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)])
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Subscriber:
    """A paho client subscribed to `#` (QoS 1, persistent session): every message by topic.
    `auth` (user, password) and `ca` (TLS, trusting this CA file) for brokers that need them."""

    def __init__(self, port: int, auth: tuple[str, str] | None = None, ca: Path | None = None):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub", clean_session=False)
        if auth:
            self.c.username_pw_set(*auth)
        if ca:
            self.c.tls_set(ca_certs=str(ca))
        self.c.reconnect_delay_set(1, 1)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([("#", 1)])
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c, u, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _r in self.messages if t == topic]

    def wait(self, pred, timeout: float = 10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = pred()
            if got:
                return got
            time.sleep(0.05)
        return pred()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def retained(port: int, topic: str, timeout: float = 5.0) -> bytes | None:
    """What a fresh client gets as the retained message of `topic`."""
    got: list[bytes] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
    c.on_message = lambda c, u, m: got.append(m.payload) if m.retain else None
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.time() + timeout
    while not got and time.time() < deadline:
        time.sleep(0.05)
    c.loop_stop()
    c.disconnect()
    return got[-1] if got else None


@pytest.fixture(scope="module")
def tiles():
    t = face_tiles()
    if not t["real"] or shared_yunet() is None:
        pytest.skip("needs the real face photos and YuNet of ../shared")
    return t


@contextlib.contextmanager
def running_broker(d: Path, listener: str = "", anonymous: bool = True) -> Iterator[Broker]:
    """A `Broker` in the new folder `d`, started, stopped at the end."""
    d.mkdir()
    b = Broker(d, listener, anonymous=anonymous)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def broker(tmp_path):
    with running_broker(tmp_path / "broker") as b:
        yield b


def monitor_for(tmp_path: Path, port: int, cameras: list | None = None, url: str | None = None, **mqtt_extra):
    settings = web_settings(
        tmp_path,
        model_dir=None,
        yunet=shared_yunet(),
        cameras=cameras or [],
        alerts={**FAST_ALERTS, "base_url": "https://mw.example.org"},
        mqtt={"url": url or f"mqtt://127.0.0.1:{port}", "topic_prefix": "mwtest", **mqtt_extra},
    )
    store = Store.from_settings(settings)
    monitor = Monitor(settings, store, run_mail=False)
    return monitor, store


def alert_once(monitor: Monitor, image, times: list[float] | None = None) -> list:
    """One new stream, one unmasked person for 4 frames: one alert event."""
    session = monitor.open_session("test")
    events: list = []
    t0 = time.time()
    for i in range(4):
        start = time.perf_counter()
        _result, evs = session.process(image, t0 + i * 0.1)
        if times is not None:
            times.append(time.perf_counter() - start)
        events += evs
    return events


def test_events_state_availability_and_last_will(tmp_path, tiles, broker, monkeypatch):
    monkeypatch.setattr(mw_mqtt, "RECONNECT_MAX_S", 1.0)
    sub = Subscriber(broker.port)
    monitor, store = monitor_for(tmp_path, broker.port)
    assert monitor.mqtt is not None
    monitor.start()
    try:
        assert sub.wait(lambda: b"online" in sub.on("mwtest/status"))
        events = alert_once(monitor, scene(tiles, faces=("unmasked",)))
        assert len(events) == 1
        got = sub.wait(lambda: sub.on("mwtest/events"))
        assert len(got) == 1, got
        body = json.loads(got[0])
        ev = events[0]
        assert body["id"] == ev.id and body["camera"] == ev.camera and body["track_id"] == ev.track_id
        assert body["mask_label"] == "no_mask" and 0.6 <= body["mask_confidence"] <= 1
        assert body["url"] == f"https://mw.example.org/events/{ev.id}"
        assert body["time"].endswith("+00:00")
        assert "snapshot_jpeg" not in body  # no image by default
        assert "gender_label" in body  # privacy.gender_enabled defaults to true

        # last will: the publisher's connection dies without DISCONNECT -> the broker says offline
        client = monitor.mqtt._client
        assert client is not None
        n_online = len(sub.on("mwtest/status"))
        client.socket().shutdown(socket.SHUT_RDWR)
        assert sub.wait(lambda: b"offline" in sub.on("mwtest/status"))
        # ... and paho reconnects: online again
        assert sub.wait(lambda: len(sub.on("mwtest/status")) > n_online + 1)
        assert sub.on("mwtest/status")[-1] == b"online"
    finally:
        monitor.stop()
    assert retained(broker.port, "mwtest/status") == b"offline"  # a clean stop says offline too
    sub.close()
    store.close()


def test_camera_state_retained_and_home_assistant_discovery(tmp_path, tiles, broker):
    clip = tmp_path / "walk.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for _ in range(20):
        writer.write(scene(tiles, faces=("unmasked",)))
    writer.release()
    cams = [{"name": "Front door", "source": str(clip)}]
    monitor, store = monitor_for(tmp_path, broker.port, cams, homeassistant=True, state_every_s=1.0)
    assert monitor.models.warm() is None
    monitor.start()
    try:
        topic = "mwtest/cameras/Front door/state"
        deadline = time.time() + 30
        state = None
        while time.time() < deadline:
            raw = retained(broker.port, topic, timeout=1)
            state = json.loads(raw) if raw else None
            if state and state["people"] >= 1:
                break
        assert state and state["camera"] == "Front door" and state["people"] >= 1, state
        assert state["unmasked"] >= 1 and state["someone_unmasked"] is True and state["compliance"] == 0.0
        cfg_topic = "homeassistant/sensor/mwtest/front_door_compliance/config"
        cfg = json.loads(retained(broker.port, cfg_topic) or b"{}")
        assert cfg["state_topic"] == topic and cfg["unit_of_measurement"] == "%"
        assert cfg["value_template"] == "{{ value_json.compliance }}"
        assert cfg["availability_topic"] == "mwtest/status"
        for key in ("people", "masked", "unmasked"):
            c = json.loads(
                retained(broker.port, f"homeassistant/sensor/mwtest/front_door_{key}/config") or b"{}"
            )
            assert c["value_template"] == f"{{{{ value_json.{key} }}}}", c
        b = json.loads(
            retained(broker.port, "homeassistant/binary_sensor/mwtest/front_door_unmasked/config") or b"{}"
        )
        assert b["state_topic"] == topic and "someone_unmasked" in b["value_template"]
    finally:
        monitor.stop()
        store.close()


def test_snapshots_when_enabled(tmp_path, tiles, broker):
    sub = Subscriber(broker.port)
    monitor, store = monitor_for(tmp_path, broker.port, snapshots=True)
    monitor.start()
    try:
        assert len(alert_once(monitor, scene(tiles, faces=("unmasked",)))) == 1
        got = sub.wait(lambda: sub.on("mwtest/events"))
        import base64

        jpeg = base64.b64decode(json.loads(got[0])["snapshot_jpeg"])
        assert jpeg[:3] == b"\xff\xd8\xff"
    finally:
        monitor.stop()
        sub.close()
        store.close()


@pytest.mark.timeout(180)
def test_broker_outage_loses_no_event_and_never_blocks_the_loop(tmp_path, tiles, broker, monkeypatch):
    monkeypatch.setattr(mw_mqtt, "RECONNECT_MAX_S", 1.0)
    sub = Subscriber(broker.port)
    monitor, store = monitor_for(tmp_path, broker.port)
    image = scene(tiles, faces=("unmasked",))
    monitor.start()
    raised: list = []
    before: list[float] = []
    during: list[float] = []
    try:
        assert sub.wait(lambda: b"online" in sub.on("mwtest/status"))
        for _ in range(3):
            raised += alert_once(monitor, image, before)
        assert sub.wait(lambda: len(sub.on("mwtest/events")) >= 3)
        broker.stop()  # the outage
        assert sub.wait(lambda: not monitor.mqtt.health["connected"], timeout=10)
        for _ in range(8):
            raised += alert_once(monitor, image, during)
        assert monitor.alerts.flush()
        time.sleep(1.5)  # paho tries to reconnect meanwhile
        assert monitor.mqtt.health["pending"] >= 8
        broker.start()  # same port
        for _ in range(3):
            raised += alert_once(monitor, image)
        assert monitor.alerts.flush()
        ids = {e.id for e in raised}
        assert len(raised) == 14 and None not in ids

        def received():
            return {json.loads(p)["id"] for p in sub.on("mwtest/events")}

        sub.wait(lambda: received() >= ids, timeout=30)
        got = [json.loads(p)["id"] for p in sub.on("mwtest/events")]
        lost = ids - set(got)
        dupes = len(got) - len(set(got))
        print(
            f"outage: {len(ids)} events raised, {len(set(got))} received, {len(lost)} lost, {dupes} dupes;"
            f" process() max {max(before) * 1000:.0f} ms before, {max(during) * 1000:.0f} ms in the outage"
            f" (median {sorted(during)[len(during) // 2] * 1000:.0f} ms)"
        )
        assert not lost, (lost, got, monitor.mqtt.health, (broker.dir / "mosquitto.log").read_text()[-3000:])
        assert dupes <= 3  # only events in flight when the broker went away may come twice
        assert max(during) < max(1.0, 5 * max(before)), (before, during)  # the loop never waited
        assert sub.wait(lambda: monitor.mqtt.health["pending"] == 0)
    finally:
        monitor.stop()
        sub.close()
        store.close()


# -- credentials and TLS ------------------------------------------------------------------------

USER, PASSWORD = "maskwatch", "s3cret:p@ss/w0rd"  # ':', '@' and '/' percent-encoded in the URL


def connack(port: int, auth: tuple[str, str] | None = None) -> str:
    """The broker's answer to a plain client's CONNECT: 'Success' or why it refused."""
    got: list[str] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if auth:
        c.username_pw_set(*auth)
    c.on_connect = lambda c, u, f, rc, p: got.append(str(rc))
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.time() + 5
    while not got and time.time() < deadline:
        time.sleep(0.05)
    c.loop_stop()
    c.disconnect()
    return got[0] if got else "no answer"


def assert_alert_published(tmp_path: Path, port: int, sub: Subscriber, image, **mqtt_extra) -> None:
    """A monitor with these MQTT settings comes online and publishes its one alert's event to `sub`."""
    monitor, store = monitor_for(tmp_path, port, **mqtt_extra)
    monitor.start()
    try:
        assert sub.wait(lambda: b"online" in sub.on("mwtest/status"))
        events = alert_once(monitor, image)
        got = sub.wait(lambda: sub.on("mwtest/events"))
        assert [json.loads(p)["id"] for p in got] == [e.id for e in events]
    finally:
        monitor.stop()
        store.close()


def assert_never_waits(monitor: Monitor, image) -> list:
    """Alerts while the publisher cannot deliver: each frame as fast as usual (no network wait)."""
    times: list[float] = []
    events = alert_once(monitor, image, times)
    assert monitor.alerts.flush()
    assert len(events) == 1 and max(times) < 1.0, times
    return events


@pytest.fixture
def auth_broker(tmp_path):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), USER, PASSWORD], check=True)
    with running_broker(tmp_path / "auth-broker", f"password_file {passwd}", anonymous=False) as b:
        yield b


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_credentials_in_the_url(tmp_path, tiles, auth_broker, caplog):
    caplog.set_level(logging.DEBUG)
    port = auth_broker.port
    assert connack(port) == "Not authorized"  # anonymous clients are refused
    sub = Subscriber(port, auth=(USER, PASSWORD))
    image = scene(tiles, faces=("unmasked",))
    url = f"mqtt://{quote(USER)}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}"
    assert_alert_published(tmp_path / "right", port, sub, image, url=url)

    wrong = url.replace(quote(PASSWORD, safe=""), "wrong")
    monitor, store = monitor_for(tmp_path / "wrong", port, url=wrong)
    monitor.start()
    try:
        assert_never_waits(monitor, image)
        publisher = monitor.mqtt
        assert publisher is not None
        assert sub.wait(lambda: publisher.health["last_error"], timeout=10)
        assert not publisher.health["connected"] and publisher.health["pending"] == 1
        assert "Not authorized" in publisher.health["last_error"], publisher.health
        refused = [r for r in caplog.records if r.name == mw_mqtt.__name__ and r.levelno >= logging.ERROR]
        assert refused and "refused the connection: Not authorized" in refused[0].getMessage()
        assert len(refused) == 1  # once, not on every retry
    finally:
        monitor.stop()
        store.close()
    sub.close()
    for secret in (PASSWORD, quote(PASSWORD, safe=""), "wrong"):
        assert secret not in caplog.text
        assert secret not in json.dumps(publisher.health)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    """A throwaway CA (openssl): (certificate, key)."""
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def make_server_cert(d: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by `ca`: (certificate, key)."""
    cert, key, csr, ext = d / "server.pem", d / "server.key", d / "server.csr", d / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    subprocess.run(
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_mqtts_with_a_ca_file(tmp_path, tiles, caplog):
    caplog.set_level(logging.INFO)
    pki = tmp_path / "pki"
    ca = make_ca(pki, "maskwatch-test-ca")
    other_ca = make_ca(pki, "someone-else")
    cert, key = make_server_cert(pki, ca)
    with running_broker(tmp_path / "tls-broker", f"certfile {cert}\nkeyfile {key}") as broker:
        image = scene(tiles, faces=("unmasked",))
        url = f"mqtts://127.0.0.1:{broker.port}"
        sub = Subscriber(broker.port, ca=ca[0])
        try:
            assert_alert_published(tmp_path / "right", broker.port, sub, image, url=url, ca_file=str(ca[0]))

            # a CA that did not sign the broker's certificate, or none (the system CAs): refused, logged
            for name, ca_file in (("other", str(other_ca[0])), ("system", None)):
                caplog.clear()
                monitor, store = monitor_for(tmp_path / name, broker.port, url=url, ca_file=ca_file)
                monitor.start()
                try:
                    assert_never_waits(monitor, image)
                    publisher = monitor.mqtt
                    assert publisher is not None
                    assert sub.wait(lambda p=publisher: p.health["last_error"], timeout=10)
                    assert not publisher.health["connected"] and publisher.health["pending"] == 1
                    assert "certificate verify failed" in publisher.health["last_error"], publisher.health
                    errors = [r.getMessage() for r in caplog.records if r.name == mw_mqtt.__name__]
                    assert any("certificate verify failed" in m for m in errors), errors
                finally:
                    monitor.stop()
                    store.close()
            assert len(sub.on("mwtest/events")) == 1  # nothing came through the refused connections

            # an unreadable ca_file: logged, the monitor runs on; fixing the setting connects
            missing = tmp_path / "missing-ca.pem"
            monitor, store = monitor_for(tmp_path / "missing", broker.port, url=url, ca_file=str(missing))
            monitor.start()
            try:
                assert_never_waits(monitor, image)
                publisher = monitor.mqtt
                assert publisher is not None and str(missing) in (publisher.health["last_error"] or "")
                publisher.update_settings(
                    publisher.settings.model_copy(
                        update={"mqtt": publisher.settings.mqtt.model_copy(update={"ca_file": ca[0]})}
                    )
                )
                assert sub.wait(lambda: len(sub.on("mwtest/events")) == 2)  # the pending event, now
            finally:
                monitor.stop()
                store.close()
        finally:
            sub.close()
