"""`maskwatch serve` with N configured cameras, measured through its own API (`/api/cameras`).

    python tools/serve_cameras_bench.py ../shared/data/multicam/cam*.mp4 [--cameras 4] [--seconds 30]

Starts `serve` on a free loopback port (temporary data directory, one user), waits until every camera
runs, samples `/api/cameras` at the start and end of the window, and prints JSON: per camera processed
fps (frames / window), dropped frames, the API's latency p50/p95, the server's peak RSS, and the
`/api/health` response time meanwhile (the web app stays responsive). Same sources as `maskwatch bench
--cameras`: files play in real time as cameras.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from web_bench import Server, _summary, health_probe, print_report

YUNET = Path("../shared/models/face_detection_yunet.onnx")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    cams = [
        {"name": f"cam{i}", "source": str(Path(args.sources[i % len(args.sources)]).resolve())}
        for i in range(args.cameras)
    ]
    env = {"MASKWATCH_CAMERAS": json.dumps(cams)}
    if YUNET.is_file():
        env.update(MASKWATCH_DETECTOR__BACKEND="yunet", MASKWATCH_DETECTOR__YUNET_PATH=str(YUNET.resolve()))
    with tempfile.TemporaryDirectory(prefix="maskwatch-serve-bench-") as tmp:
        server = Server(Path(tmp), env)
        try:
            server.wait_ready()
            client = server.login()
            deadline = time.time() + 60
            while time.time() < deadline:
                states = [c["state"] for c in client.get("/api/cameras").json()["cameras"]]
                if states and all(s == "running" for s in states):
                    break
                time.sleep(0.5)
            time.sleep(args.warmup)
            health: list[float] = []
            stop = threading.Event()
            probe = threading.Thread(target=health_probe, args=(server, stop, health, 0.5))
            probe.start()
            t0 = time.perf_counter()
            before = {c["name"]: c for c in client.get("/api/cameras").json()["cameras"]}
            time.sleep(args.seconds)
            after = {c["name"]: c for c in client.get("/api/cameras").json()["cameras"]}
            window = time.perf_counter() - t0
            stop.set()
            probe.join()
            status = Path(f"/proc/{server.proc.pid}/status").read_text()
            rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
        finally:
            server.stop()
    per = [
        {
            "camera": n,
            "state": after[n]["state"],
            "processed_fps": round((after[n]["frames"] - before[n]["frames"]) / window, 1),
            "dropped": after[n]["dropped"] - before[n]["dropped"],
            "latency_ms": after[n]["latency_ms"],
        }
        for n in sorted(after)
    ]
    report = {
        "cameras": args.cameras,
        "seconds": round(window, 1),
        "per_camera": per,
        "min_processed_fps": min(c["processed_fps"] for c in per),
        "server_peak_rss_mb": round(rss / 1024, 1),
        "health_ms": _summary(health),
    }
    print_report(report, args.json_out)
    return report


if __name__ == "__main__":
    main()
