"""Web speed benchmark (a development tool): `python tools/web_bench.py [VIDEO] [--json OUT]`.

Starts `maskwatch serve` on a free loopback port (temporary data directory, one admin), then measures:

1. webcam round trip: one browser-webcam WebSocket client sends 640x480 JPEG frames of VIDEO, one at a
   time as the page does, and times send -> JSON result (p50 / p95 ms);
2. four concurrent live viewers of a server camera (VIDEO re-encoded at 640x480, played at its own
   speed) over MJPEG: frames per second each, with `/api/health` latency (p50 / p95 ms) meanwhile;
3. four concurrent webcam sessions: results per second each, with `/api/health` latency meanwhile.

Targets (issue 4): round trip p50 <= 80 ms and p95 <= 150 ms; each viewer >= 15 fps; health p95 <= 50 ms.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from maskwatch.sources import SourceError, open_source
from smtp_sink import free_port

DEFAULT_VIDEO = "../shared/data/videos/Gituatu_face-mask-detection__video.mp4"
USER, PASSWORD = "bench", "bench-password-123"
SERVER_MS: list[float] = []
PIPELINE_MS: list[float] = []


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def print_report(report: dict, json_out: str | None) -> None:
    """A benchmark's report as JSON on stdout and, when asked (`--json FILE`), in that file."""
    text = json.dumps(report, indent=2)
    print(text)
    if json_out:
        Path(json_out).write_text(text + "\n")


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(_pct(values, 50), 1),
        "p95": round(_pct(values, 95), 1),
        "mean": round(statistics.fmean(values), 1) if values else float("nan"),
    }


def load_frames(video: Path, limit: int = 300) -> tuple[list[np.ndarray], float]:
    """The first `limit` frames of `video` at 640x480, and its frame rate."""
    try:
        with open_source(video, reconnect=False) as src:
            frames = [
                cv2.resize(f.image, (640, 480), interpolation=cv2.INTER_AREA)
                for f in itertools.islice(src, limit)
            ]
            fps = src.fps or 25.0
    except SourceError as exc:
        raise SystemExit(str(exc)) from None
    if not frames:
        raise SystemExit(f"no frames in {video}")
    return frames, fps


class Server:
    """`maskwatch serve` in a subprocess, with a user created beforehand."""

    def __init__(self, data_dir: Path, env: dict[str, str]):
        from maskwatch.config import load_settings
        from maskwatch.store import Store

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, **env, "MASKWATCH_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        full_env.pop("MASKWATCH_CONFIG", None)
        old = os.environ.get("MASKWATCH_DATA_DIR")
        os.environ["MASKWATCH_DATA_DIR"] = str(data_dir)
        try:
            store = Store.from_settings(load_settings())
            store.add_user(USER, PASSWORD)
            store.close()
        finally:
            if old is None:
                os.environ.pop("MASKWATCH_DATA_DIR", None)
            else:
                os.environ["MASKWATCH_DATA_DIR"] = old
        self.log = open(data_dir / "serve.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from maskwatch.cli import main; main()",
                "serve",
                "--port",
                str(self.port),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.log_path = data_dir / "serve.log"

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.base}/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("server did not start")

    def login(self):
        import httpx

        client = httpx.Client(base_url=self.base, timeout=30)
        page = client.get("/login")
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
        r = client.post(
            "/login", data={"username": USER, "password": PASSWORD, "csrf_token": token, "next": "/"}
        )
        if r.status_code not in (200, 303) or "maskwatch_session" not in client.cookies:
            raise SystemExit(f"login failed: {r.status_code}")
        return client

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _ws(server: Server, cookie: str):
    from websockets.sync.client import connect

    return connect(
        f"ws://127.0.0.1:{server.port}/ws/webcam",
        additional_headers={"Cookie": f"maskwatch_session={cookie}", "Origin": server.base},
        max_size=16 << 20,
    )


def webcam_client(
    server: Server, cookie: str, jpegs: list[bytes], *, n: int | None, seconds: float | None, warmup: int = 10
) -> tuple[list[float], float]:
    """Send frames one at a time; returns (round trips in ms, results per second).

    `server_ms` (decode + pipeline + alerts, measured by the server) of each frame goes to SERVER_MS."""
    rtts: list[float] = []
    with _ws(server, cookie) as ws:
        for i in range(warmup):
            ws.send(jpegs[i % len(jpegs)])
            json.loads(ws.recv())
        t_start = time.perf_counter()
        i = 0
        while (n is None or i < n) and (seconds is None or time.perf_counter() - t_start < seconds):
            t0 = time.perf_counter()
            ws.send(jpegs[i % len(jpegs)])
            msg = json.loads(ws.recv())
            rtts.append((time.perf_counter() - t0) * 1000)
            if msg.get("type") != "result":
                raise SystemExit(f"server error: {msg}")
            SERVER_MS.append(msg["server_ms"])
            PIPELINE_MS.append(msg["result"]["timings_ms"].get("total", 0.0))
            i += 1
        elapsed = time.perf_counter() - t_start
    return rtts, len(rtts) / elapsed


def mjpeg_viewer(server: Server, cookie: str, camera: str, seconds: float, out: list, idx: int) -> None:
    import httpx

    boundary = b"--maskwatchframe"
    frames = 0
    tail = b""
    with (
        httpx.Client(base_url=server.base, cookies={"maskwatch_session": cookie}, timeout=30) as client,
        client.stream("GET", f"/live/cameras/{camera}/stream.mjpg") as r,
    ):
        t0 = time.perf_counter()
        for chunk in r.iter_bytes():
            data = tail + chunk
            frames += data.count(boundary)
            tail = data[-(len(boundary) - 1) :]
            if time.perf_counter() - t0 >= seconds:
                break
        elapsed = time.perf_counter() - t0
    out[idx] = frames / elapsed


def health_probe(server: Server, stop: threading.Event, out: list[float], every_s: float = 0.05) -> None:
    import httpx

    with httpx.Client(base_url=server.base, timeout=10) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            client.get("/api/health")
            out.append((time.perf_counter() - t0) * 1000)
            stop.wait(every_s)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", nargs="?", default=DEFAULT_VIDEO)
    ap.add_argument("--frames", type=int, default=200, help="round-trip samples (default 200)")
    ap.add_argument("--seconds", type=float, default=12.0, help="length of the concurrent phases")
    ap.add_argument("--viewers", type=int, default=4)
    ap.add_argument("--model", help="attribute model directory (default: the bundled models)")
    ap.add_argument("--yunet", help="YuNet ONNX path (default: ../shared/models/face_detection_yunet.onnx)")
    ap.add_argument("--json", dest="json_out", help="write the figures here")
    args = ap.parse_args(argv)

    frames, fps = load_frames(Path(args.video))
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes() for f in frames]
    env = {}
    yunet = Path(args.yunet or "../shared/models/face_detection_yunet.onnx")
    if yunet.is_file():
        env.update(MASKWATCH_DETECTOR__BACKEND="yunet", MASKWATCH_DETECTOR__YUNET_PATH=str(yunet.resolve()))
    if args.model:
        env["MASKWATCH_MODELS__MODEL_DIR"] = str(Path(args.model).resolve())
    report: dict = {
        "video": str(args.video),
        "frame_size": [640, 480],
        "cpus": os.cpu_count(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
    }

    with tempfile.TemporaryDirectory(prefix="maskwatch-bench-") as tmp:
        tmp = Path(tmp)
        # 1. one webcam client, no server cameras
        (tmp / "a").mkdir()
        server = Server(tmp / "a", env)
        try:
            server.wait_ready()
            cookie = server.login().cookies["maskwatch_session"]
            SERVER_MS.clear()
            PIPELINE_MS.clear()
            rtts, rate = webcam_client(server, cookie, jpegs, n=args.frames, seconds=None)
            report["webcam_round_trip_ms"] = _summary(rtts)
            report["webcam_server_ms"] = _summary(SERVER_MS)  # decode + pipeline + alerts
            report["webcam_pipeline_ms"] = _summary(PIPELINE_MS)  # detect + track + classify
            report["webcam_single_fps"] = round(rate, 1)
            print(
                f"webcam round trip (640x480, loopback): p50 {_pct(rtts, 50):.1f} ms, "
                f"p95 {_pct(rtts, 95):.1f} ms, {rate:.1f} results/s",
                flush=True,
            )

            # 3. concurrent webcam sessions + health
            out: list = [None] * args.viewers
            health: list[float] = []
            stop = threading.Event()
            probe = threading.Thread(target=health_probe, args=(server, stop, health))
            probe.start()

            def run(i: int) -> None:
                out[i] = webcam_client(
                    server, cookie, jpegs[i * 7 :] + jpegs[: i * 7], n=None, seconds=args.seconds
                )

            threads = [threading.Thread(target=run, args=(i,)) for i in range(args.viewers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            stop.set()
            probe.join()
            report["concurrent_webcams"] = {
                "sessions": args.viewers,
                "fps_each": [round(r, 1) for _, r in out],
                "round_trip_ms_each_p50": [round(_pct(x, 50), 1) for x, _ in out],
                "health_ms": _summary(health),
            }
            print(
                f"{args.viewers} concurrent webcam sessions: fps each {[round(r, 1) for _, r in out]}, "
                f"health p95 {_pct(health, 95):.1f} ms",
                flush=True,
            )
        finally:
            server.stop()

        # 2. a server camera (the video at 640x480, played at its own speed) with N MJPEG viewers
        (tmp / "b").mkdir()
        clip = tmp / "camera.avi"
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
        for f in frames:
            writer.write(f)
        writer.release()
        env_b = {**env, "MASKWATCH_CAMERAS": json.dumps([{"name": "bench", "source": str(clip)}])}
        server = Server(tmp / "b", env_b)
        try:
            server.wait_ready()
            client = server.login()
            cookie = client.cookies["maskwatch_session"]
            deadline = time.time() + 60
            while time.time() < deadline:
                cams = client.get("/api/cameras").json()["cameras"]
                if cams and cams[0]["frames"] > 10:
                    break
                time.sleep(0.5)
            out = [0.0] * args.viewers
            health = []
            stop = threading.Event()
            probe = threading.Thread(target=health_probe, args=(server, stop, health))
            probe.start()
            threads = [
                threading.Thread(target=mjpeg_viewer, args=(server, cookie, "bench", args.seconds, out, i))
                for i in range(args.viewers)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            stop.set()
            probe.join()
            cam = client.get("/api/cameras").json()["cameras"][0]
            report["mjpeg_viewers"] = {
                "viewers": args.viewers,
                "source_fps": round(fps, 2),
                "camera_processing_fps": cam["fps"],
                "fps_each": [round(x, 1) for x in out],
                "health_ms": _summary(health),
            }
            print(
                f"{args.viewers} MJPEG viewers of a {fps:.0f} fps camera: fps each "
                f"{[round(x, 1) for x in out]}, health p95 {_pct(health, 95):.1f} ms",
                flush=True,
            )
        finally:
            server.stop()
    report["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    targets = {
        "round_trip_p50_le_80ms": report["webcam_round_trip_ms"]["p50"] <= 80,
        "round_trip_p95_le_150ms": report["webcam_round_trip_ms"]["p95"] <= 150,
        "viewers_each_ge_15fps": min(report["mjpeg_viewers"]["fps_each"]) >= 15,
        "health_p95_le_50ms": max(
            report["mjpeg_viewers"]["health_ms"]["p95"], report["concurrent_webcams"]["health_ms"]["p95"]
        )
        <= 50,
    }
    report["targets_met"] = targets
    print_report(report, args.json_out)
    return report


if __name__ == "__main__":
    main()
