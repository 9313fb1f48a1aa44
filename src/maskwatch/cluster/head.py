"""The head of a cluster: a `Monitor` whose cameras run as Ray actors (`maskwatch.cluster.actor`).

    head (serve / monitor --ray ADDRESS)                 any node with capacity
    ┌──────────────────────────────────────┐            ┌──────────────────────────────┐
    │ web app, alert engine, mail worker,  │  drain()   │ CameraActor: reader, tracker, │
    │ MQTT, webhooks, webcam sessions      │ ◀───────── │ pipeline, one vision thread   │
    │ poller: every POLL_S, each camera    │ sightings, │ (num_cpus = the camera's      │
    │ ack → sightings → AlertEngine.observe│ health,    │  cpus; SPREAD; restarted by   │
    └──────────────────────────────────────┘ JPEG       │  Ray when its node dies)      │
                                                        └──────────────────────────────┘

Everything that must outlive a camera's actor is on the head: the alert rules (cooldowns, the paths of
alerted people used for re-entry), statistics, events, the outbox. A restarted actor starts with a new
tracker, so the people it sees get new track ids, and the head's re-entry rule recognises an alerted
person along their path: a node killed mid-alert gives neither a lost nor a second alert. The head
acknowledges the sightings it has handed to the alert engine; the actor resends the others, and numbers
already seen are skipped (at least once in, exactly once counted).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from maskwatch.cluster.actor import CameraActor, Sighting
from maskwatch.config import CameraSettings, Settings
from maskwatch.monitor.engine import Monitor
from maskwatch.monitor.stream import FrameDone, FrameObserver, Subscribers, idle_health, placeholder_jpeg
from maskwatch.store import Event
from maskwatch.types import FrameResult

log = logging.getLogger(__name__)

POLL_S = 0.1  # each camera is drained this often (sightings reach the alert engine within ~0.1 s)
WATCHED_FOR_S = 2.0  # a one-off frame request (frame.jpg) keeps live frames coming this long
DOWN_AFTER_S = 60.0  # an actor unreachable this long is "down" (Ray may still restart it)

Observe = Callable[[str, FrameResult, np.ndarray | None], list[Event]]  # Monitor.observe


class RemoteCamera:
    """The head's handle on one camera actor: its last health, its newest live frame, its viewers."""

    def __init__(self, cam: CameraSettings, create_actor: Any) -> None:
        self.cam = cam
        self._create_actor = create_actor
        self.actor: Any = None
        self.inflight: Any = None  # the ObjectRef of the drain call under way
        self.ack = 0
        self.incarnation: str | None = None
        self.restarts = 0
        self._frames_before = 0  # frames of the earlier incarnations
        self.seq = 0
        self._jpeg: bytes | None = None
        self._lock = threading.Lock()
        self._subscribers = Subscribers()
        self._wanted_until = 0.0
        self._stopped = False
        self._unreachable_since: float | None = None
        self._health: dict[str, Any] = idle_health(cam, "starting")

    @property
    def name(self) -> str:
        return self.cam.name

    # -- lifecycle (Monitor.reconcile / stop)
    def start(self) -> None:
        self.actor = self._create_actor(self.cam)

    def stop(self) -> None:
        self._stopped = True
        if self.actor is not None:
            import ray

            try:
                ray.kill(self.actor, no_restart=True)
            except Exception as exc:  # noqa: BLE001 - already gone
                log.debug("camera %s: %s", self.name, exc)

    def join(self, timeout: float | None = None) -> None:
        pass  # ray.kill ends the actor's process; nothing to wait for here

    @property
    def stopped(self) -> bool:
        return self._stopped

    # -- the poller's side
    def frame_after(self) -> int | None:
        """The frame number the head has, when a viewer wants newer ones; None: nobody watches."""
        return self.seq if self._subscribers or time.monotonic() < self._wanted_until else None

    def receive(self, reply: dict[str, Any], observe: Observe, observer: FrameObserver | None) -> None:
        """A drain reply: sightings to the alert engine (each once), health, the live frame."""
        if reply["incarnation"] != self.incarnation:
            if self.incarnation is not None:
                self.restarts += 1
                log.warning("camera %s: its actor restarted on node %s", self.name, reply["health"]["node"])
            self.incarnation, self.ack = reply["incarnation"], 0
            self._frames_before += self._health.get("frames", 0)  # counted on as one camera
        for s in reply["sightings"]:
            if s.seq <= self.ack:
                continue
            events = observe(self.name, s.result, _decode(s.snapshot_jpeg))
            if observer is not None:
                _observe(observer, self.name, s, events)
            self.ack = s.seq
        self._unreachable_since = None
        health = dict(reply["health"])
        health["reconnects"] = health.get("reconnects", 0)
        health["restarts"] = self.restarts
        health["frames"] = self._frames_before + health.get("frames", 0)
        frame = reply["frame"]
        with self._lock:
            self._health = health
            if frame is not None:
                self.seq, self._jpeg = frame
        if frame is not None:
            self._subscribers.notify()

    def unreachable(self, exc: BaseException) -> None:
        """The drain call failed: the actor died (Ray restarts it on a node with capacity) or is gone."""
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
            log.warning("camera %s: actor unreachable: %s", self.name, str(exc).splitlines()[0][:200])
        state = "down" if now - self._unreachable_since > DOWN_AFTER_S else "restarting"
        with self._lock:
            self._health = {
                **self._health,
                "state": state,
                "error": f"camera actor unreachable ({type(exc).__name__})",
                "fps": 0.0,
            }

    # -- the viewer side (what /ws/live and the MJPEG routes use)
    def subscribe(self) -> Any:
        return self._subscribers.subscribe()

    def unsubscribe(self, event: Any) -> None:
        self._subscribers.unsubscribe(event)

    def latest(self) -> tuple[int, bytes | None]:
        self._wanted_until = time.monotonic() + WATCHED_FOR_S
        with self._lock:
            seq, jpeg, state = self.seq, self._jpeg, self._health["state"]
        if jpeg is None and state in ("restarting", "down", "reconnecting", "stalled"):
            return seq, placeholder_jpeg(f"{self.name}: {state}")
        return seq, jpeg

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._health)


def _decode(jpeg: bytes | None) -> np.ndarray | None:
    if jpeg is None:
        return None
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return image if image is not None else None


def _observe(observer: FrameObserver, camera: str, s: Sighting, events: list[Event]) -> None:
    try:
        observer(FrameDone(camera, s.result, events, s.latency_s, s.detected, s.classified))
    except Exception as exc:  # noqa: BLE001 - metrics must never stop the alerts
        log.warning("camera %s: frame observer failed: %s", camera, exc)


class ClusterMonitor(Monitor):
    """A `Monitor` (same alerts, mail, integrations, webcam sessions, settings) whose cameras are Ray
    actors. `settings.cluster.address` names the cluster."""

    def __init__(self, settings: Settings, store: Any, **kwargs: Any) -> None:
        super().__init__(settings, store, **kwargs)
        self._actor_class: Any = None
        self._poller: threading.Thread | None = None
        self._owns_ray = False

    def start(self) -> None:
        import ray

        c = self.settings.cluster
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=c.address, namespace=c.namespace, log_to_driver=False, configure_logging=False)
        self._actor_class = ray.remote(CameraActor)
        self._start_services()
        with self._cond:
            self._running = True
        self._poller = threading.Thread(target=self._poll, name="cluster-poller", daemon=True)
        self._poller.start()
        self.reconcile(self.settings.cameras)

    def _make_stream(self, cam: CameraSettings) -> RemoteCamera:
        def create(cam: CameraSettings) -> Any:
            c = self.settings.cluster
            return self._actor_class.options(
                num_cpus=cam.cpus or c.camera_cpus,
                max_restarts=c.max_restarts,
                max_task_retries=0,  # a drain is never replayed: the next one asks again
                scheduling_strategy="SPREAD",
            ).remote(cam, self.settings)

        return RemoteCamera(cam, create)

    def update_settings(self, settings: Settings, *, reconcile: bool = True) -> None:
        super().update_settings(settings, reconcile=reconcile)
        for cam in self._remote_cameras():
            if cam.actor is not None:
                cam.actor.update_settings.remote(settings)

    def stop(self) -> None:
        with self._cond:
            self._running = False
        if self._poller is not None:
            self._poller.join(timeout=5)
        self._drain_all(timeout=3.0)  # what the actors still hold reaches the store
        super().stop()
        if self._owns_ray:  # a driver outliving its cluster's GCS is ended by Ray: disconnect now
            import ray

            ray.shutdown()
            self._owns_ray = False

    def health(self) -> dict[str, Any]:
        return {**super().health(), "cluster": self.settings.cluster.address}

    # -- the poller
    def _remote_cameras(self) -> list[RemoteCamera]:
        return [s for s in self.streams() if isinstance(s, RemoteCamera)]

    def _poll(self) -> None:
        while self._running:
            t0 = time.monotonic()
            try:
                self._drain_all(timeout=POLL_S)
            except Exception:  # noqa: BLE001 - the poller must never die
                log.exception("cluster poller")
            time.sleep(max(0.0, POLL_S - (time.monotonic() - t0)))

    def _drain_all(self, timeout: float) -> None:
        import ray
        from ray.exceptions import RayError

        cameras = self._remote_cameras()
        for cam in cameras:
            if cam.inflight is None and cam.actor is not None:
                cam.inflight = cam.actor.drain.remote(cam.ack, cam.frame_after())
        waiting = {cam.inflight: cam for cam in cameras if cam.inflight is not None}
        if not waiting:
            return
        ready, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=timeout)
        for ref in ready:
            cam = waiting[ref]
            cam.inflight = None
            try:
                reply = ray.get(ref)
            except RayError as exc:
                cam.unreachable(exc)
                continue
            cam.receive(reply, self.observe, self.frame_observer)
