"""The monitor on real sources (issue 12): a live RTSP camera that dies and comes back, one that never
answers, and `maskwatch monitor --config FILE` headless end to end. No mocks: real ffmpeg, real files,
the real SQLite store, the bundled models and YuNet.

ffmpeg cannot serve RTSP itself (its RTSP muxer only pushes to a server; `-rtsp_flags listen` is an
option of the demuxer), so the camera here is a small RTSP server (this file, run as a script: RTSP over
TCP, interleaved RTP) relaying the RTP that a real ffmpeg encodes from a looping clip. "Killing the
camera" is SIGKILL to that server's process group (the server and its ffmpeg).

Observed on a 2-core machine (0.1 s polling, stall_after_s 1):
- SIGKILL: running → reconnecting (at once: the closed connection ends the read) → down (after 3 refused
  reconnects, ~2 s) → running (~2-3 s after the server is back). No `stalled`: nothing is left to wait for.
- a frozen camera (SIGSTOP: connection open, no frames): running → stalled (after 1 s), then SIGKILL →
  reconnecting → down → running (the one old frame the decoder returns as the connection closes is held
  back by the reader: only a second frame after a stall counts as the stream being back).
- a port where nothing listens: starting → reconnecting → down (~1.5 s), still retried.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOMASK_VIDEO = "videos/yash42828_Detection-of-Face-Mask__test_no_mask.mp4"  # relative to ../shared/data
CLIP_FPS = 10


# ------------------------------------------------------------------ a tiny RTSP camera (run as a script)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_rtsp(port: int, clip: str, sdp_path: str) -> None:
    """An RTSP server on 127.0.0.1:`port` streaming `clip` (looped, real time, MPEG-4 part 2) to every
    client that PLAYs: ffmpeg encodes to RTP on a local UDP port, this relays each packet over the
    client's RTSP connection (RTP/AVP/TCP, interleaved). A SETUP asking for UDP gets 461 (FFmpeg's
    client then retries over TCP, as it does with many real cameras)."""
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp.bind(("127.0.0.1", 0))
    target = f"rtp://127.0.0.1:{rtp.getsockname()[1]}?rtcpport={rtcp.getsockname()[1]}&pkt_size=1200"
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", clip, "-an"]
        + ["-c:v", "mpeg4", "-q:v", "5", "-g", str(CLIP_FPS), "-f", "rtp", "-sdp_file", sdp_path, target]
    )
    deadline = time.monotonic() + 20
    while True:
        text = Path(sdp_path).read_text() if Path(sdp_path).is_file() else ""
        if "a=rtpmap" in text:
            break
        if ffmpeg.poll() is not None or time.monotonic() > deadline:
            sys.exit("ffmpeg wrote no SDP")
        time.sleep(0.05)
    lines = []
    for line in text.splitlines():
        if line.startswith("m=video"):
            line = "m=video 0 RTP/AVP " + line.split()[-1]
        elif line.startswith("c="):
            line = "c=IN IP4 0.0.0.0"
        if line.strip():
            lines.append(line)
    sdp = ("\r\n".join([*lines, "a=control:streamid=0"]) + "\r\n").encode()
    playing: dict[socket.socket, tuple[threading.Lock, int]] = {}
    plock = threading.Lock()

    def relay() -> None:
        while True:
            packet = rtp.recv(65536)
            with plock:
                clients = list(playing.items())
            for conn, (lock, channel) in clients:
                try:
                    with lock:
                        conn.sendall(b"$" + bytes([channel]) + len(packet).to_bytes(2, "big") + packet)
                except OSError:
                    with plock:
                        playing.pop(conn, None)

    def handle(conn: socket.socket) -> None:
        lock, buf, channel = threading.Lock(), b"", None

        def reply(
            cseq: str, status: str = "200 OK", headers: tuple[str, ...] = (), body: bytes = b""
        ) -> None:
            head = [f"RTSP/1.0 {status}", f"CSeq: {cseq}", *headers]
            if channel is not None:
                head.append("Session: 4242;timeout=60")
            if body:
                head.append(f"Content-Length: {len(body)}")
            with lock:
                conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)

        try:
            while data := conn.recv(65536):
                buf += data
                while buf:
                    if buf[:1] == b"$":  # the client's interleaved RTCP
                        n = int.from_bytes(buf[2:4], "big") if len(buf) >= 4 else 1 << 20
                        if len(buf) < 4 + n:
                            break
                        buf = buf[4 + n :]
                        continue
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    request = buf[:end].decode("latin-1").split("\r\n")
                    hdr = {
                        k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in request[1:])
                    }
                    length = int(hdr.get("content-length", 0))
                    if len(buf) < end + 4 + length:
                        break
                    buf = buf[end + 4 + length :]
                    method, url = request[0].split(" ")[:2]
                    cseq = hdr.get("cseq", "0")
                    transport = hdr.get("transport", "")
                    if method == "OPTIONS":
                        reply(
                            cseq, headers=("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER",)
                        )
                    elif method == "DESCRIBE":
                        base = f"Content-Base: {url.rstrip('/')}/"
                        reply(cseq, headers=("Content-Type: application/sdp", base), body=sdp)
                    elif method == "SETUP" and "/TCP" in transport:
                        channel = 0
                        if "interleaved=" in transport:
                            channel = int(transport.split("interleaved=")[1].split("-")[0].split(";")[0])
                        reply(
                            cseq,
                            headers=(f"Transport: RTP/AVP/TCP;unicast;interleaved={channel}-{channel + 1}",),
                        )
                    elif method == "SETUP":
                        reply(cseq, "461 Unsupported Transport")
                    elif method == "PLAY" and channel is not None:
                        reply(cseq, headers=("Range: npt=0.000-",))
                        with plock:
                            playing[conn] = (lock, channel)
                    elif method == "TEARDOWN":
                        reply(cseq)
                        return
                    else:
                        reply(cseq)
        except OSError:
            pass
        finally:
            with plock:
                playing.pop(conn, None)
            conn.close()

    threading.Thread(target=relay, daemon=True).start()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


class RtspCamera:
    """The server above in its own process group: `start()`, `freeze()` (SIGSTOP), `kill()` (SIGKILL)."""

    def __init__(self, port: int, clip: Path, workdir: Path) -> None:
        self.port, self.clip, self.workdir = port, clip, workdir
        self.url = f"rtsp://127.0.0.1:{port}/live"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        sdp = self.workdir / f"stream{self.starts}.sdp"
        cmd = [sys.executable, __file__, "--rtsp-server", str(self.port), str(self.clip), str(sdp)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line.strip() == "ready", f"the RTSP server did not start (exit {self.proc.poll()})"

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None


# ------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg; .ci/run does)")
    return path


@pytest.fixture(scope="module")
def models(shared_data, yunet_path) -> Path:
    from web_helpers import bundled_models

    if not bundled_models():
        pytest.skip("no trained models bundled in src/maskwatch/models")
    return yunet_path


@pytest.fixture(scope="module")
def clip(tmp_path_factory, ffmpeg, shared_data) -> Path:
    """A 3 s 640x480 clip at 10 fps: a masked and an unmasked face (real photos), a frame counter."""
    import cv2

    from web_helpers import face_tiles, scene

    path = tmp_path_factory.mktemp("clip") / "faces.avi"
    image = scene(face_tiles())
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), CLIP_FPS, (640, 480))
    for i in range(3 * CLIP_FPS):
        frame = image.copy()
        cv2.putText(frame, str(i), (20, 50), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 2)
        writer.write(frame)
    writer.release()
    assert path.stat().st_size > 0
    return path


class Watch:
    """Polls `monitor.describe()` every 0.1 s, keeping each camera's sequence of states."""

    def __init__(self, monitor) -> None:
        self.monitor = monitor
        self.states: dict[str, list[str]] = {}

    def poll(self) -> dict[str, dict]:
        cams = {d["name"]: d for d in self.monitor.describe()}
        for name, d in cams.items():
            seq = self.states.setdefault(name, [])
            if not seq or seq[-1] != d["state"]:
                seq.append(d["state"])
        return cams

    def until(self, name: str, pred, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            d = self.poll()[name]
            if pred(d):
                return d
            assert time.monotonic() < deadline, (
                f"{name}: not {what} within {timeout} s: {self.states[name]}, {d}"
            )
            time.sleep(0.1)

    def during(self, seconds: float) -> dict[str, dict]:
        end = time.monotonic() + seconds
        cams = self.poll()
        while time.monotonic() < end:
            time.sleep(0.1)
            cams = self.poll()
        return cams


def _in_order(seq: list[str], *wanted: str) -> bool:
    it = iter(seq)
    return all(any(s == w for s in it) for w in wanted)


def _monitor(tmp_path: Path, yunet: Path, cameras: list[dict]):
    from maskwatch.monitor import Monitor
    from maskwatch.store import Store
    from web_helpers import web_settings

    settings = web_settings(
        tmp_path, model_dir=None, yunet=yunet, cameras=cameras, monitor={"stall_after_s": 1.0}
    )
    store = Store.from_settings(settings)
    return Monitor(settings, store, run_mail=False), store


def _p95(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


# ------------------------------------------------------------- 1. a live RTSP camera killed and restarted
@pytest.mark.timeout(150)
def test_rtsp_camera_killed_and_restarted_recovers_without_a_queue(tmp_path, clip, models):
    camera = RtspCamera(_free_port(), clip, tmp_path)
    camera.start()
    monitor, store = _monitor(tmp_path, models, [{"name": "rtsp", "source": camera.url}])
    latencies: list[tuple[float, float]] = []  # (when, ms) of every processed frame
    monitor.frame_observer = lambda done: latencies.append((time.perf_counter(), done.latency_s * 1000))
    watch = Watch(monitor)
    try:
        monitor.start()
        d = watch.until("rtsp", lambda d: d["state"] == "running" and d["frames"] >= 5, 60, "running")
        d = watch.until("rtsp", lambda d, f=d["frames"]: d["frames"] >= f + 10, 15, "getting frames")
        assert d["reconnects"] == 0
        fps_running = d["fps"]

        # a. the camera dies (SIGKILL): the monitor notices at once, gives it up as down, then reconnects
        mark = len(watch.states["rtsp"])
        camera.kill()
        d = watch.until("rtsp", lambda d: d["state"] in ("stalled", "reconnecting", "down"), 10, "losing it")
        frames_at_loss = d["frames"]
        cams = watch.during(2.5)  # the camera stays away 2.5 s
        lost = watch.states["rtsp"][mark:]
        assert "reconnecting" in lost, lost  # the closed connection ends the read: no stall to observe
        assert cams["rtsp"]["state"] in ("reconnecting", "down") and cams["rtsp"]["error"], cams["rtsp"]
        assert cams["rtsp"]["frames"] <= frames_at_loss + 2  # at most a frame or two flushed
        camera.start()
        restarted = time.perf_counter()
        d = watch.until("rtsp", lambda d: d["state"] == "running", 30, "running again")
        d = watch.until(
            "rtsp", lambda d, f=d["frames"]: d["frames"] >= f + 2 * CLIP_FPS, 15, "getting frames again"
        )
        seq_a = watch.states["rtsp"][mark:]
        assert _in_order(["running", *seq_a], "running", "reconnecting", "running"), seq_a
        assert d["reconnects"] >= 1
        assert d["error"] is None
        # no queue anywhere: the newest frame is fresh and every frame since the restart was served at once
        assert d["last_frame_age_s"] is not None and d["last_frame_age_s"] < 1.0, d
        assert d["latency_ms"]["p95"] < 1000, d
        recent = [ms for t, ms in latencies if t > restarted]
        assert len(recent) >= CLIP_FPS and _p95(recent) < 1000, recent

        # b. the camera freezes (connection open, nothing sent): stalled; then it dies: reconnecting
        mark = len(watch.states["rtsp"])
        camera.freeze()
        d = watch.until("rtsp", lambda d: d["state"] == "stalled", 5, "stalled")
        assert d["last_frame_age_s"] >= 1.0
        camera.kill()
        watch.until("rtsp", lambda d: d["state"] in ("reconnecting", "down"), 10, "reconnecting")
        camera.start()
        d = watch.until("rtsp", lambda d: d["state"] == "running", 30, "running again")
        d = watch.until(
            "rtsp", lambda d, f=d["frames"]: d["frames"] >= f + CLIP_FPS, 15, "getting frames again"
        )
        seq_b = watch.states["rtsp"][mark:]
        assert _in_order(seq_b, "stalled", "reconnecting", "running"), seq_b
        gone = seq_b[seq_b.index("stalled") : seq_b.index("reconnecting")]
        assert "running" not in gone, seq_b  # the frame the frozen decoder still held is not taken as new
        assert d["reconnects"] >= 2
        assert d["last_frame_age_s"] < 1.0 and d["latency_ms"]["p95"] < 1000, d
        print(f"states after SIGKILL: {seq_a}; after SIGSTOP + SIGKILL: {seq_b}")
        print(f"fps running {fps_running}, while away {cams['rtsp']['fps']}, back {d['fps']}")
    finally:
        monitor.stop()
        store.close()
        camera.kill()


@pytest.mark.timeout(90)
def test_a_dead_camera_reports_no_fps(tmp_path, clip, models):
    camera = RtspCamera(_free_port(), clip, tmp_path)
    camera.start()
    monitor, store = _monitor(tmp_path, models, [{"name": "rtsp", "source": camera.url}])
    watch = Watch(monitor)
    try:
        monitor.start()
        d = watch.until(
            "rtsp", lambda d: d["state"] == "running" and d["frames"] >= 2 * CLIP_FPS, 60, "running"
        )
        assert 0.6 * CLIP_FPS <= d["fps"] <= 1.4 * CLIP_FPS, d  # frames over the last 2 s, not bursts
        camera.kill()
        d = watch.until("rtsp", lambda d: d["state"] == "down", 20, "down")
        assert d["fps"] < 1.0, d
    finally:
        monitor.stop()
        store.close()
        camera.kill()


# ------------------------------------------------------------------ 2. a live source that never opens
@pytest.mark.timeout(90)
def test_unreachable_camera_goes_down_while_the_others_run(tmp_path, shared_data, models):
    dead = f"rtsp://127.0.0.1:{_free_port()}/live"  # nothing listens there
    video = shared_data / NOMASK_VIDEO
    cams = [{"name": "dead", "source": dead}, {"name": "file", "source": str(video), "max_fps": 5}]
    monitor, store = _monitor(tmp_path, models, cams)
    watch = Watch(monitor)
    try:
        monitor.start()
        d = watch.until("dead", lambda d: d["state"] in ("reconnecting", "down"), 20, "reconnecting")
        file_frames = watch.poll()["file"]["frames"]
        d = watch.until("dead", lambda d: d["state"] == "down", 30, "down")
        assert _in_order(watch.states["dead"], "reconnecting", "down"), watch.states["dead"]
        assert "cannot open stream" in d["error"] and "127.0.0.1" in d["error"], d
        assert d["frames"] == 0 and d["frames_read"] == 0
        # still retried, still down; the other camera plays on meanwhile
        cams_now = watch.during(2.0)
        assert cams_now["dead"]["state"] == "down" and cams_now["dead"]["error"]
        f = watch.until("file", lambda d: d["frames"] >= file_frames + 5, 15, "playing")
        assert f["state"] == "running" and f["error"] is None
        health = monitor.health()
        assert health["camera_states"].get("down") == 1 and health["camera_states"].get("running") == 1
        assert watch.states["file"][-1] == "running" and "down" not in watch.states["file"]
    finally:
        monitor.stop()
        store.close()


# ------------------------------------------------------------------ 3. `maskwatch monitor --config FILE`
def _cli(config: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from maskwatch.cli import main; main()",
        "monitor",
        "--config",
        str(config),
        *args,
    ]


def _clean_env() -> dict[str, str]:
    """The environment without MASKWATCH_* (they would override the config file)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MASKWATCH_")}


def _toml(data_dir: Path, yunet: Path, cameras: str = "") -> str:
    return f"""data_dir = {json.dumps(str(data_dir))}

[detector]
backend = "yunet"
yunet_path = {json.dumps(str(yunet))}
allow_download = false

[alerts]
min_frames = 3
min_seconds = 0.5
cooldown_s = 60

[smtp]
recipients = ["admin@example.org"]
{cameras}"""


@pytest.mark.timeout(120)
def test_headless_monitor_alerts_and_queues_mail(tmp_path, shared_data, models, monkeypatch):
    from maskwatch.config import load_settings
    from maskwatch.store import Store

    video = shared_data / NOMASK_VIDEO
    data_dir = tmp_path / "monitor-data"
    camera = f'\n[[cameras]]\nname = "door"\nsource = {json.dumps(str(video))}\nmax_fps = 10\n'
    config = tmp_path / "maskwatch.toml"
    config.write_text(_toml(data_dir, models, camera))
    err_path = tmp_path / "stderr.log"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            _cli(config, "--status-every", "1"),
            stdout=subprocess.PIPE,
            stderr=err,
            env=_clean_env(),
            text=True,
        )
        try:
            deadline, started = time.monotonic() + 60, time.monotonic()
            while time.monotonic() < deadline and proc.poll() is None:
                statuses = [ln for ln in err_path.read_text().splitlines() if ln.startswith("[")]
                if len(statuses) >= 5 and time.monotonic() - started > 12:
                    break
                time.sleep(0.5)
            assert proc.poll() is None, f"maskwatch monitor exited early:\n{err_path.read_text()}"
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log = err_path.read_text()
    assert proc.returncode == 0, log
    assert "maskwatch monitor: 1 camera(s)" in log
    statuses = [json.loads(ln) for ln in log.splitlines() if ln.startswith("[")]
    assert len(statuses) >= 3, log
    assert all(
        s[0]["name"] == "door" and set(s[0]) >= {"state", "fps", "dropped", "latency_ms"} for s in statuses
    )
    assert any(s[0]["state"] == "running" and s[0]["fps"] > 0 for s in statuses), statuses

    monkeypatch.delenv("MASKWATCH_DATA_DIR")
    settings = load_settings(config)
    assert settings.data_dir == data_dir and (data_dir / "maskwatch.db").is_file()
    store = Store.from_settings(settings)
    try:
        events, total = store.list_events(camera="door")
        assert total >= 1, log
        assert all(e.camera == "door" for e in events)
        assert events[0].mask_label in ("no_mask", "incorrect") and events[0].snapshot, events[0]
        messages, queued = store.list_outbox()
        assert queued >= 1, log
        assert all(m.status == "queued" and m.sent_at is None for m in messages)  # no SMTP host: kept
        assert {e.id for e in events} & {i for m in messages for i in m.event_ids}
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_headless_monitor_without_cameras_fails_clearly(tmp_path, models):
    config = tmp_path / "empty.toml"
    config.write_text(_toml(tmp_path / "data", models))
    r = subprocess.run(_cli(config), capture_output=True, text=True, env=_clean_env(), timeout=50)
    assert r.returncode != 0
    assert "no cameras configured" in r.stderr and "Traceback" not in r.stderr, r.stderr
    missing = subprocess.run(
        _cli(tmp_path / "nope.toml"), capture_output=True, text=True, env=_clean_env(), timeout=50
    )
    assert missing.returncode != 0 and "config file not found" in missing.stderr, missing.stderr


if __name__ == "__main__" and sys.argv[1:2] == ["--rtsp-server"]:
    serve_rtsp(int(sys.argv[2]), sys.argv[3], sys.argv[4])
