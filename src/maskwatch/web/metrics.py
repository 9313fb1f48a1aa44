"""Prometheus metrics of one app (`/metrics`; the route is in `web/routes/metrics.py`).

Each app has its own `CollectorRegistry` (never the process-wide default one: tests build many apps in
one process). Values that already exist are read at scrape time by `StateCollector` (cameras from
`Monitor.describe()`, the alert engine's `health`, the outbox's counts from the store, the mail
worker's `health`); what needs an observation per frame (latency and inference-time histograms, faces
and alerts by label) is recorded by `AppMetrics.observe_frame`, the monitor's `frame_observer`.

Labels are camera *names* and fixed label sets only: never a camera source (it may hold credentials),
never a face image, never a user.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from maskwatch import __version__
from maskwatch.monitor.stream import FrameDone

if TYPE_CHECKING:
    from maskwatch.web.runtime import Runtime

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# capture-to-result latency: 1 ms .. 2 s
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
# one detector or classifier call: 0.5 ms .. 1 s
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
CAMERA_STATES = ("starting", "running", "stalled", "reconnecting", "down", "stopped", "disabled")
OUTBOX_STATUSES = ("queued", "sending", "sent", "failed")
WEBHOOK_STATUSES = ("queued", "sent", "failed")
ALERT_COUNTERS = {  # AlertEngine.health key -> (metric name without maskwatch_alert_, help)
    "frames": ("frames", "Frames handed to the alert engine (every stream, webcams included)"),
    "alerts": ("events_raised", "Alert events raised (every stream)"),
    "events_stored": ("events_stored", "Alert events written to the store"),
    "dropped": ("events_dropped", "Alert events lost because too many waited for the store"),
    "quiet_suppressed": ("quiet_suppressed", "Alerts suppressed by a camera's quiet hours"),
    "capped": ("capped", "Alert emails held back by the hourly cap (left for the digest)"),
}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class StateCollector(Collector):
    """Reads the app's existing state at scrape time (nothing duplicated, nothing to keep in sync)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterable[Metric]:
        yield from self._cameras()
        yield from self._alerts()
        yield from self._mail()
        yield from self._webhooks()

    def _cameras(self) -> Iterable[Metric]:
        monitor = self.runtime.monitor
        frames = CounterMetricFamily(
            "maskwatch_camera_frames_processed", "Frames processed (detected or tracked)", labels=["camera"]
        )
        read = CounterMetricFamily(
            "maskwatch_camera_frames_read", "Frames read from the source", labels=["camera"]
        )
        dropped = CounterMetricFamily(
            "maskwatch_camera_frames_dropped",
            "Frames read but replaced by a newer one before a worker took them",
            labels=["camera"],
        )
        reconnects = CounterMetricFamily(
            "maskwatch_camera_reconnects", "Times the source was opened again", labels=["camera"]
        )
        fps = GaugeMetricFamily(
            "maskwatch_camera_fps", "Frames processed per second (last 2 s)", labels=["camera"]
        )
        up = GaugeMetricFamily(
            "maskwatch_camera_up", "1 while the camera is running, else 0", labels=["camera"]
        )
        state = GaugeMetricFamily(
            "maskwatch_camera_state",
            "1 for the camera's current state, 0 for the others",
            labels=["camera", "state"],
        )
        age = GaugeMetricFamily(
            "maskwatch_camera_last_frame_age_seconds",
            "Seconds since the last frame was read",
            labels=["camera"],
        )
        interval = GaugeMetricFamily(
            "maskwatch_camera_detect_interval", "The detector runs on every Nth frame", labels=["camera"]
        )
        for cam in monitor.describe():
            name = str(cam["name"])
            for family, key in ((frames, "frames"), (read, "frames_read"), (dropped, "dropped")):
                family.add_metric([name], _num(cam.get(key)) or 0.0)
            reconnects.add_metric([name], _num(cam.get("reconnects")) or 0.0)
            fps.add_metric([name], _num(cam.get("fps")) or 0.0)
            current = str(cam.get("state"))
            up.add_metric([name], 1.0 if current == "running" else 0.0)
            for s in CAMERA_STATES if current in CAMERA_STATES else (*CAMERA_STATES, current):
                state.add_metric([name, s], 1.0 if s == current else 0.0)
            if (a := _num(cam.get("last_frame_age_s"))) is not None:
                age.add_metric([name], a)
            if (d := _num(cam.get("detect_interval"))) is not None:
                interval.add_metric([name], d)
        yield from (frames, read, dropped, reconnects, fps, up, state, age, interval)
        workers = _num(monitor.health().get("workers")) or 0.0
        yield GaugeMetricFamily("maskwatch_monitor_workers", "Vision worker threads", value=workers)
        yield GaugeMetricFamily(
            "maskwatch_models_loaded",
            "1 once the models are loaded",
            value=1.0 if monitor.models.loaded else 0.0,
        )

    def _alerts(self) -> Iterable[Metric]:
        health = dict(self.runtime.monitor.alerts.health)
        for key, (name, doc) in ALERT_COUNTERS.items():
            if (v := _num(health.get(key))) is not None:
                yield CounterMetricFamily(f"maskwatch_alert_{name}", doc, value=v)
        if (v := _num(health.get("pending"))) is not None:
            yield GaugeMetricFamily("maskwatch_alert_pending", "Alert events waiting to be stored", value=v)
        yield GaugeMetricFamily(
            "maskwatch_alert_store_ok",
            "1 while the alert engine can write to the store",
            value=1.0 if health.get("store_ok") else 0.0,
        )

    def _mail(self) -> Iterable[Metric]:
        yield from _queue_depth(
            "maskwatch_mail_outbox_messages",
            "Emails in the outbox by status",
            OUTBOX_STATUSES,
            self.runtime.store.list_outbox,
        )
        mailer = self.runtime.monitor.mailer
        health = dict(getattr(mailer, "health", None) or {})
        if health.get("mail_ok") is not None:
            yield GaugeMetricFamily(
                "maskwatch_mail_up",
                "1 if the last SMTP attempt worked, 0 if it failed",
                value=float(health["mail_ok"]),
            )
        if (v := _num(health.get("send_failures"))) is not None:
            yield CounterMetricFamily("maskwatch_mail_send_failures", "Failed email send attempts", value=v)

    def _webhooks(self) -> Iterable[Metric]:
        """The delivery queue by status (all webhooks together: a webhook's URL may hold a token), and
        this process's failed POST attempts."""
        yield from _queue_depth(
            "maskwatch_webhook_deliveries",
            "Webhook deliveries in the queue by status",
            WEBHOOK_STATUSES,
            self.runtime.store.list_webhook_deliveries,
        )
        worker = self.runtime.monitor.webhooks
        if worker is not None:
            health = dict(worker.health)
            yield CounterMetricFamily(
                "maskwatch_webhook_send_failures",
                "Failed webhook delivery attempts (each retry, and each delivery given up)",
                value=float(health.get("retries", 0) + health.get("failed", 0)),
            )


def _queue_depth(
    name: str, doc: str, statuses: Iterable[str], list_rows: Callable[..., tuple[Any, int]]
) -> Iterable[Metric]:
    """A gauge of a store queue's rows per status (`list_rows(status=, limit=0)` gives the count);
    nothing when the database does not answer: a scrape must still succeed."""
    depth = GaugeMetricFamily(name, doc, labels=["status"])
    try:
        for status in statuses:
            _, total = list_rows(status=status, limit=0)
            depth.add_metric([status], float(total))
    except Exception as exc:  # noqa: BLE001 - a scrape must answer while the database is away
        log.warning("metrics: %s unavailable: %s", name, exc)
    else:
        yield depth


class AppMetrics:
    """The metrics of one app: its registry, the per-frame observations, the scrape-time collector."""

    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.latency = Histogram(
            "maskwatch_frame_latency_seconds",
            "Capture (the reader receiving the frame) to result, per processed camera frame",
            ["camera"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.inference = Histogram(
            "maskwatch_inference_seconds",
            "Model time per call: stage=detect (the face detector, on detected frames), "
            "stage=classify (the attribute model, on frames where it ran)",
            ["stage"],
            buckets=INFERENCE_BUCKETS,
            registry=reg,
        )
        self.faces = Counter(
            "maskwatch_faces",
            "Faces in processed camera frames, by mask label",
            ["camera", "label"],
            registry=reg,
        )
        self.alerts = Counter(
            "maskwatch_alerts",
            "Alert events raised by server cameras, by mask label",
            ["camera", "label"],
            registry=reg,
        )
        info = GaugeMetricFamily("maskwatch_build_info", "maskwatch version", labels=["version"])
        info.add_metric([__version__], 1.0)
        reg.register(_Static([info]))
        reg.register(StateCollector(runtime))
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)

    def observe_frame(self, done: FrameDone) -> None:
        """A camera frame finished (called by the monitor's workers; must be quick and never raise)."""
        camera = done.camera
        self.latency.labels(camera).observe(max(0.0, done.latency_s))
        timings = done.result.timings_ms
        if done.detected and "detect" in timings:
            self.inference.labels("detect").observe(timings["detect"] / 1000)
        if done.classified and "classify" in timings:
            self.inference.labels("classify").observe(timings["classify"] / 1000)
        for face in done.result.faces:
            self.faces.labels(camera, face.mask.label).inc()
        for event in done.events:
            self.alerts.labels(camera, event.mask_label or "unknown").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Static(Collector):
    """Metrics given once."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics)
