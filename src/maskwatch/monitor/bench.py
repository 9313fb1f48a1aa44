"""`maskwatch bench --cameras N SOURCE...`: N streams through the monitor exactly as `serve` runs them.

Sources are real: video files (played in real time, as cameras), RTSP or HTTP (MJPEG) URLs, camera
indexes; with fewer sources than N they are reused in turn. The monitor runs with a throwaway SQLite
database (statistics and alert events are written as in production; no mail is sent). After a warm-up,
every camera is measured over the same window. The JSON: per camera processed fps, frames read and
dropped, latency from capture to result p50 / p95 (ms); for the process: CPU time per processed frame,
peak RSS, the detection interval the load controller settled on.
"""

from __future__ import annotations

import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from maskwatch.config import Settings, apply_overrides
from maskwatch.monitor.engine import Monitor, worker_count
from maskwatch.monitor.models import Models
from maskwatch.monitor.stream import FrameDone, percentile
from maskwatch.store import Store


def run_cameras(
    settings: Settings, sources: list[str], cameras: int, *, seconds: float = 30.0, warmup_s: float = 8.0
) -> dict[str, Any]:
    names = [f"cam{i}" for i in range(cameras)]
    specs = [sources[i % len(sources)] for i in range(cameras)]
    with tempfile.TemporaryDirectory(prefix="maskwatch-bench-") as tmp:
        s = apply_overrides(
            settings,
            {
                "data_dir": str(Path(tmp)),
                "database_url": None,
                "cameras": [{"name": n, "source": src} for n, src in zip(names, specs, strict=True)],
                "smtp": {"host": None},
            },
        )
        store = Store.from_settings(s)
        monitor = Monitor(s, store, models=Models(s, threads=1), run_mail=False)
        error = monitor.models.warm()
        if error:
            raise RuntimeError(error)
        latencies: dict[str, list[float]] = {n: [] for n in names}
        measuring = threading.Event()

        def record(done: FrameDone) -> None:
            if measuring.is_set():
                latencies[done.camera].append(done.latency_s * 1000)

        monitor.frame_observer = record
        monitor.start()
        try:
            time.sleep(warmup_s)
            before = {d["name"]: d for d in monitor.describe()}
            cpu0, t0 = time.process_time(), time.perf_counter()
            measuring.set()
            time.sleep(seconds)
            measuring.clear()
            cpu1, t1 = time.process_time(), time.perf_counter()
            after = {d["name"]: d for d in monitor.describe()}
            interval = monitor.detect_interval
        finally:
            monitor.stop()
            store.close()
    window = t1 - t0
    per_camera = []
    for n, src in zip(names, specs, strict=True):
        a, b = before[n], after[n]
        lat = latencies[n]
        per_camera.append(
            {
                "camera": n,
                "source": src,
                "state": b["state"],
                "processed_fps": round((b["frames"] - a["frames"]) / window, 1),
                "read_fps": round((b.get("frames_read", 0) - a.get("frames_read", 0)) / window, 1),
                "dropped": b["dropped"] - a["dropped"],
                "latency_ms": {
                    "p50": _round(percentile(lat, 50)),
                    "p95": _round(percentile(lat, 95)),
                    "max": _round(max(lat) if lat else None),
                },
            }
        )
    processed = sum(c["processed_fps"] for c in per_camera) * window
    return {
        "cameras": cameras,
        "seconds": round(window, 1),
        "cpus": os.cpu_count(),
        "workers": worker_count(settings),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "detect_interval": interval,
        "per_camera": per_camera,
        "min_processed_fps": min(c["processed_fps"] for c in per_camera),
        "total_processed_fps": round(sum(c["processed_fps"] for c in per_camera), 1),
        "max_latency_p95_ms": max((c["latency_ms"]["p95"] or 0.0) for c in per_camera),
        "cpu_ms_per_frame": _round((cpu1 - cpu0) * 1000 / processed if processed else None),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
