"""MQTT: alert events, camera state, availability and Home Assistant discovery (docs/integrations.md).

    AlertEngine writer thread ─on_stored─▶ inbox (bounded) ─▶ publisher thread ─▶ paho client ─▶ broker
    Monitor.describe() ─────── every 0.25 s, published on change / every state_every_s ─┘

The video loop never waits for the broker: the alert engine's writer thread only puts the stored event
in a bounded inbox (never blocks); this module's own thread builds the JSON and hands it to paho, whose
network thread talks to the broker and reconnects with backoff.

At least once: an event stays in `_pending` (memory) until the broker acknowledges it (PUBACK, QoS 1).
paho keeps unacknowledged QoS 1 messages across reconnects and sends them again (DUP flag), and a new
client (settings changed) gets every pending event again. So while the process runs no event is lost
(unless more than `mqtt.max_pending` wait at once: the oldest are then dropped, counted and logged), and
an event may arrive twice when the connection broke after the broker received it but before its PUBACK
came back (dedupe on the event `id`). Events still unacknowledged when the process stops are logged
and not sent after a restart (they stay in the event store, `/api/events`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import re
import socket
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt  # the `mqtt` extra: this module is imported only when configured

from maskwatch.config import MqttSettings, Settings
from maskwatch.integrations.payload import event_payload
from maskwatch.store import Event

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0  # paho's reconnect backoff doubles up to this
KEEPALIVE_S = 30
TICK_S = 0.25  # the publisher thread's pace (acks, inbox, state changes)
STOP_DRAIN_S = 3.0  # stop(): wait this long for pending events to be acknowledged
HA_PREFIX = "homeassistant"

Describe = Callable[[], list[dict[str, Any]]]


def topic_part(name: str) -> str:
    """A camera name as one topic level (no '/', '+', '#')."""
    return re.sub(r"[/+#\x00]", "_", name) or "_"


def object_id(name: str) -> str:
    """A camera name as a Home Assistant object id ([a-z0-9_])."""
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "camera"


def event_message(ev: Event, settings: Settings, jpeg: bytes | None = None) -> dict[str, Any]:
    """The JSON of one stored alert event on `{prefix}/events`: the shared event payload, with the
    snapshot (base64 JPEG) when `mqtt.snapshots` is on."""
    out = event_payload(ev, settings)
    if jpeg is not None:
        out["snapshot_jpeg"] = base64.b64encode(jpeg).decode("ascii")
    return out


def camera_state(d: dict[str, Any]) -> dict[str, Any]:
    """The retained JSON on `{prefix}/cameras/{name}/state`, from one `Monitor.describe()` entry."""
    c = d.get("counts") or {}
    people, masked = int(c.get("people", 0)), int(c.get("masked", 0))
    unmasked, incorrect = int(c.get("unmasked", 0)), int(c.get("incorrect", 0))
    judged = masked + unmasked + incorrect
    return {
        "camera": d.get("name"),
        "state": d.get("state"),
        "fps": d.get("fps"),
        "people": people,
        "masked": masked,
        "unmasked": unmasked,
        "incorrect": incorrect,
        "uncertain": int(c.get("uncertain", 0)),
        "compliance": round(100.0 * masked / judged, 1) if judged else None,
        "someone_unmasked": unmasked + incorrect > 0,
    }


def discovery_configs(m: MqttSettings, camera: str) -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant discovery: (config topic, config) for one camera's sensors and binary sensor."""
    node, obj = object_id(m.topic_prefix), object_id(camera)
    common = {
        "state_topic": f"{m.topic_prefix}/cameras/{topic_part(camera)}/state",
        "availability_topic": f"{m.topic_prefix}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [f"{node}_{obj}"],
            "name": f"maskwatch {camera}",
            "manufacturer": "maskwatch",
            "model": "camera",
        },
    }
    out = []
    for key, name, unit in (
        ("people", "People", None),
        ("masked", "Masked", None),
        ("unmasked", "Unmasked", None),
        ("compliance", "Compliance", "%"),
    ):
        cfg: dict[str, Any] = {
            **common,
            "name": name,
            "unique_id": f"{node}_{obj}_{key}",
            "object_id": f"{node}_{obj}_{key}",
            "value_template": f"{{{{ value_json.{key} }}}}",  # null renders "None": unknown in HA
            "state_class": "measurement",
        }
        if unit:
            cfg["unit_of_measurement"] = unit
        out.append((f"{HA_PREFIX}/sensor/{node}/{obj}_{key}/config", cfg))
    out.append(
        (
            f"{HA_PREFIX}/binary_sensor/{node}/{obj}_unmasked/config",
            {
                **common,
                "name": "Someone unmasked",
                "unique_id": f"{node}_{obj}_someone_unmasked",
                "object_id": f"{node}_{obj}_someone_unmasked",
                "value_template": "{{ 'ON' if value_json.someone_unmasked else 'OFF' }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "problem",
            },
        )
    )
    return out


def _connection(m: MqttSettings) -> tuple[str, ...] | None:
    """What needs a new client when it changes."""
    return None if not m.url else (m.url, str(m.ca_file), str(m.client_id), m.topic_prefix)


def _address(m: MqttSettings) -> tuple[str, int]:
    """(host, port) of the broker; never the credentials."""
    u = urlsplit(m.url or "")
    return u.hostname or "localhost", u.port or (8883 if u.scheme == "mqtts" else 1883)


class MqttPublisher:
    """Publishes stored alert events, camera state and availability to `settings.mqtt.url`.

    `on_event` is the AlertEngine `on_stored` hook (never blocks); `describe` gives the cameras
    (`Monitor.describe`). `start()`/`stop()`; `update_settings()` applies new settings (a changed URL,
    CA, client id or prefix reconnects; pending events are kept and sent again)."""

    def __init__(self, settings: Settings, describe: Describe, *, snapshots_dir: Path | None = None) -> None:
        self.settings = settings
        self.describe = describe
        self.snapshots_dir = snapshots_dir
        self.health: dict[str, Any] = {
            "connected": False,
            "last_error": None,
            "events_published": 0,
            "events_acked": 0,
            "pending": 0,
            "dropped": 0,
            "disconnects": 0,
        }
        self._inbox: queue.Queue[Event] = queue.Queue(maxsize=settings.mqtt.max_pending)
        self._pending: OrderedDict[int, tuple[str, bytes]] = OrderedDict()  # seq -> (topic, payload)
        self._unsent: deque[int] = deque()  # seqs not yet handed to the current client
        self._mids: dict[int, int] = {}  # paho mid -> seq (current client)
        self._acks: deque[int] = deque()  # mids acknowledged (appended by paho's thread)
        self._seq = 0
        self._client: mqtt.Client | None = None
        self._connected = False
        self._announce = False  # just (re)connected: availability, discovery, state again
        self._states: dict[str, tuple[Any, ...]] = {}  # camera -> what was last published
        self._state_at = 0.0
        self._discovered: set[str] = set()
        self._reported: str | None = None  # the connection error last logged (logged once, not per retry)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the alert engine side (its writer thread)

    def on_event(self, ev: Event) -> None:
        """Queue a stored event for publishing; never blocks, never raises."""
        try:
            self._inbox.put_nowait(ev)
            self._wake.set()
        except queue.Full:
            self.health["dropped"] += 1
            log.error("MQTT: %d events waiting; event %s not published", self._inbox.maxsize, ev.id)

    # -- control

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._connect()
        self._thread = threading.Thread(target=self._run, name="maskwatch-mqtt", daemon=True)
        self._thread.start()

    def update_settings(self, settings: Settings) -> None:
        old, self.settings = self.settings, settings
        if _connection(old.mqtt) != _connection(settings.mqtt) and self._thread is not None:  # started
            log.info("MQTT settings changed: reconnecting")
            self._disconnect(graceful=True)
            self._unsent = deque(self._pending)  # the new client sends every pending event again
            self._mids.clear()
            self._states.clear()
            self._discovered.clear()
            self._connect()
        self._wake.set()

    def stop(self, timeout: float = STOP_DRAIN_S) -> None:
        """Publish what is pending (waiting up to `timeout` for acknowledgements), go offline, stop."""
        deadline = time.monotonic() + timeout
        while self._thread is not None and time.monotonic() < deadline:
            self._wake.set()
            if self._inbox.empty() and not self._pending and not self._acks:
                break
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._pending:
            log.error("MQTT: %d event(s) not acknowledged by the broker at stop", len(self._pending))
        self._disconnect(graceful=True)

    # -- paho client

    def _connect(self) -> None:
        m = self.settings.mqtt
        assert m.url
        u = urlsplit(m.url)
        tls = u.scheme == "mqtts"
        client_id = m.client_id or f"maskwatch-{socket.gethostname()}-{os.getpid()}"
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if u.username:
            c.username_pw_set(unquote(u.username), unquote(u.password) if u.password else None)
        if tls:
            try:
                c.tls_set(ca_certs=str(m.ca_file) if m.ca_file else None)  # None: the system's CAs
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                self._client, self._connected = None, False
                self._failed(f"mqtt.ca_file {m.ca_file}: {exc}; not connecting until the settings change")
                return
        c.will_set(f"{m.topic_prefix}/status", "offline", qos=1, retain=True)
        c.reconnect_delay_set(min_delay=int(RECONNECT_MIN_S), max_delay=int(RECONNECT_MAX_S))
        c.max_queued_messages_set(m.max_pending)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self._client = c
        self._connected = False
        self._reported = None
        c.connect_async(*_address(m), keepalive=KEEPALIVE_S)
        c.loop_start()  # paho's network thread; retries the first connection too

    def _disconnect(self, *, graceful: bool) -> None:
        c, self._client = self._client, None
        if c is None:
            return
        try:
            if graceful and self._connected:
                info = c.publish(f"{self.settings.mqtt.topic_prefix}/status", "offline", qos=1, retain=True)
                info.wait_for_publish(timeout=2)
            c.disconnect()
        except Exception as exc:  # noqa: BLE001
            log.warning("MQTT disconnect: %s", exc)
        c.loop_stop()
        self._connected = False
        self.health["connected"] = False

    def _failed(self, error: str) -> None:
        """A connection attempt failed: into health; logged once until it changes or a connection works
        (paho retries with backoff). Never the URL: it may hold the password."""
        self.health["last_error"] = error
        if error != self._reported:
            self._reported = error
            log.error("MQTT: %s", error)

    # paho's thread: set flags only (publishing from here could deadlock with paho's locks)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if client is not self._client:
            return
        if reason_code.is_failure:
            self._failed(f"the broker refused the connection: {reason_code}; retrying")
            return
        self._connected = self._announce = True
        self._reported = None
        self.health["connected"] = True
        log.info("MQTT connected to %s", urlsplit(self.settings.mqtt.url or "").hostname)
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        """No connection (refused port, DNS, TLS handshake, certificate): paho calls this inside its
        `except OSError`, so the exception is at hand."""
        if client is not self._client:
            return
        host, port = _address(self.settings.mqtt)
        self._failed(f"cannot connect to {host}:{port}: {sys.exc_info()[1]}; retrying")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if client is not self._client:
            return
        if self._connected:  # a refused connection also ends here: its reason is already in health
            self.health["disconnects"] += 1
            self.health["last_error"] = f"disconnected: {reason_code}"
            log.warning("MQTT connection lost (%s); reconnecting, events kept", reason_code)
        self._connected = False
        self.health["connected"] = False

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if client is self._client:
            self._acks.append(mid)
            self._wake.set()

    # -- the publisher thread

    def _run(self) -> None:
        while True:
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - keep publishing whatever one step did
                self.health["last_error"] = str(exc)
                log.error("MQTT publisher error: %s", exc, exc_info=True)
            if self._stop.is_set():
                return
            self._wake.wait(TICK_S)
            self._wake.clear()

    def _step(self) -> None:
        while self._acks:
            seq = self._mids.pop(self._acks.popleft(), None)
            if seq is not None and self._pending.pop(seq, None) is not None:
                self.health["events_acked"] += 1
        self._take_inbox()
        c = self._client
        if c is None:
            return
        m = self.settings.mqtt
        if self._connected and self._announce:
            self._announce = False
            c.publish(f"{m.topic_prefix}/status", "online", qos=1, retain=True)
            self._states.clear()
            self._discovered.clear()
        while self._unsent:
            seq = self._unsent[0]
            item = self._pending.get(seq)
            if item is None:
                self._unsent.popleft()
                continue
            info = c.publish(item[0], item[1], qos=m.qos)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE or (m.qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS):
                break  # not taken: try again on a later step
            self._unsent.popleft()
            self.health["events_published"] += 1
            if m.qos == 0:
                self._pending.pop(seq, None)
            else:
                self._mids[info.mid] = seq
        self.health["pending"] = len(self._pending)
        if self._connected:
            self._publish_states(c, m)

    def _take_inbox(self) -> None:
        m = self.settings.mqtt
        while True:
            try:
                ev = self._inbox.get_nowait()
            except queue.Empty:
                return
            jpeg = None
            if m.snapshots and ev.snapshot and self.snapshots_dir is not None:
                try:
                    jpeg = (self.snapshots_dir / ev.snapshot).read_bytes()
                except OSError as exc:
                    log.warning("MQTT: snapshot of event %s unreadable: %s", ev.id, exc)
            payload = json.dumps(event_message(ev, self.settings, jpeg)).encode()
            self._seq += 1
            self._pending[self._seq] = (f"{m.topic_prefix}/events", payload)
            self._unsent.append(self._seq)
            while len(self._pending) > m.max_pending:
                self._pending.popitem(last=False)
                self.health["dropped"] += 1
                log.error("MQTT: more than %d events unacknowledged; the oldest dropped", m.max_pending)

    def _publish_states(self, c: mqtt.Client, m: MqttSettings) -> None:
        now = time.monotonic()
        periodic = now - self._state_at >= m.state_every_s
        if periodic:
            self._state_at = now
        seen = set()
        for d in self.describe():
            name = str(d.get("name"))
            seen.add(name)
            if m.homeassistant and name not in self._discovered:
                for topic, cfg in discovery_configs(m, name):
                    c.publish(topic, json.dumps(cfg), qos=1, retain=True)
                self._discovered.add(name)
            state = camera_state(d)
            key = tuple(v for k, v in state.items() if k != "fps")
            if periodic or self._states.get(name) != key:
                c.publish(
                    f"{m.topic_prefix}/cameras/{topic_part(name)}/state", json.dumps(state), retain=True
                )
                self._states[name] = key
        for gone in set(self._states) - seen:  # a camera removed: clear its retained topics
            c.publish(f"{m.topic_prefix}/cameras/{topic_part(gone)}/state", b"", retain=True)
            if gone in self._discovered:
                for topic, _cfg in discovery_configs(m, gone):
                    c.publish(topic, b"", qos=1, retain=True)
                self._discovered.discard(gone)
            del self._states[gone]
