"""Live video: the browser-webcam WebSocket, the server cameras' WebSocket and their MJPEG streams.

Webcam protocol (`/ws/webcam`): the page sends one JPEG frame (binary message), the server answers
with one JSON text message, and only then does the page send the next frame, so latency stays bounded:

    {"type": "result", "seq": 7, "result": FrameResult.to_dict(), "counts": {...},
     "server_ms": 23.4, "events": [{"camera": ..., "track_id": ..., ...}]}
    {"type": "error", "message": "..."}     (the socket stays open unless the models are missing)

Server cameras protocol (`/ws/live`, what the Live page uses): every camera tile over ONE connection,
so any number of cameras costs one of the browser's few connections per host. Same authentication as
`/ws/webcam` (a logged-in session, same origin; else closed with 1008).

- client -> server, text: `{"cameras": ["door", "lobby"]}`: the tiles to stream (the visible ones);
  may be sent again at any time (`[]`: none, e.g. while the page is hidden).
- server -> client, binary, for each subscribed camera whose frame changed: a 4-byte big-endian length
  N, N bytes of UTF-8 JSON header `{"camera": name, "seq": n, "state": ..., "fps": ..., "counts": {...},
  "error": ..., "processing_ms": ...}` (the camera's public snapshot plus the frame's seq), then the
  annotated JPEG.
- server -> client, text, on connect and about once a second: `{"type": "cameras", "cameras": [...],
  "compliance_1h": {name: 0.83 or null}}`, every configured camera's public state (as `/api/cameras`),
  so tiles without new frames show state, and each camera's compliance over the last hour (refreshed
  every `LIVE_COMPLIANCE_S`).
- server -> client, text, for each alert event of a server camera stored while the page is open:
  `{"type": "alert", "event": {"id", "camera", "time", "track_id", "mask_label", "mask_confidence"}}`.

Backpressure: nothing is queued for a slow client. Each send is awaited, and then only the newest frame
of each camera is sent (intermediate seqs are skipped), at most `LIVE_TILE_FPS` frames per second per
tile. One coroutine per connection sends; it sleeps on the cameras' new-frame events (no threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import Response, StreamingResponse

from maskwatch.monitor.stream import Camera, placeholder_jpeg
from maskwatch.store import Event, StoreError
from maskwatch.web.analysis import MAX_STREAM_SIDE, BadMedia, ModelsUnavailable, counts, decode_image
from maskwatch.web.auth import SESSION_RECHECK_S, same_origin, session_still_valid, session_user
from maskwatch.web.deps import PageUser, RuntimeDep
from maskwatch.web.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

MAX_WS_FRAME_BYTES = 4 << 20
BOUNDARY = "maskwatchframe"
LIVE_TILE_FPS = 15.0  # /ws/live: at most this many frames per second per camera tile
LIVE_STATE_S = 1.0  # /ws/live: every camera's state is sent this often
MAX_LIVE_CAMERAS = 256  # /ws/live: names accepted in one subscription
LIVE_COMPLIANCE_S = 30.0  # /ws/live: the last hour's compliance per camera is read this often


@router.websocket("/ws/webcam")
async def webcam(ws: WebSocket) -> None:
    rt = ws.app.state.runtime
    user = session_user(ws)
    if user is None or not same_origin(ws):
        await ws.close(code=1008, reason="authentication required")
        return
    if not rt.settings.web.browser_webcam:
        await ws.close(code=1008, reason="the browser webcam is turned off in the settings")
        return
    await ws.accept()
    session = rt.session(f"browser:{user}")

    def work(data: bytes, index: int):  # in a worker thread: decoding is CPU work too
        return session.process(decode_image(data, max_side=MAX_STREAM_SIDE), index, time.time())

    seq = 0
    checked = time.monotonic()
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if time.monotonic() - checked > SESSION_RECHECK_S:
                if not session_still_valid(ws, user):
                    await ws.close(code=1008, reason="signed out")
                    return
                checked = time.monotonic()
            data = message.get("bytes")
            if data is None:
                continue  # text messages (pings) are ignored
            seq += 1
            if len(data) > MAX_WS_FRAME_BYTES:
                await ws.send_json({"type": "error", "seq": seq, "message": "frame too large"})
                continue
            t0 = time.perf_counter()
            try:
                result, events, _ = await anyio.to_thread.run_sync(work, data, seq, limiter=rt.vision_limiter)
            except BadMedia as exc:
                await ws.send_json({"type": "error", "seq": seq, "message": str(exc)})
                continue
            except ModelsUnavailable as exc:
                await ws.send_json(
                    {"type": "error", "seq": seq, "fatal": True, "message": f"models unavailable: {exc}"}
                )
                await ws.close(code=1011)
                return
            gender = rt.gender_enabled
            await ws.send_json(
                {
                    "type": "result",
                    "seq": seq,
                    "result": result.to_dict(gender=gender),
                    "counts": counts(result, gender=gender),
                    "server_ms": round((time.perf_counter() - t0) * 1000, 1),
                    "events": [_event_brief(e, gender) for e in events],
                }
            )
    except (WebSocketDisconnect, OSError):  # the page went away (uvicorn's ClientDisconnected is an OSError)
        return


def _event_brief(event: Event, gender: bool) -> dict:
    d = {
        "id": getattr(event, "id", None),
        "camera": event.camera,
        "track_id": event.track_id,
        "mask_label": event.mask_label,
        "mask_confidence": round(event.mask_confidence, 3),
    }
    if gender:
        d["gender_label"] = event.gender_label
    return d


@dataclass
class _Tile:
    camera: Camera  # rt.cameras.get(name)
    new_frame: asyncio.Event  # the camera's subscription
    forward: asyncio.Task[None]  # turns it into the connection's wake-up
    seq: int = -1  # of the last frame sent
    sent_at: float = float("-inf")


class _LiveFeed:
    """One /ws/live connection: the subscribed tiles and the loop sending each one's newest frame."""

    def __init__(self, ws: WebSocket, rt: Runtime, user: str) -> None:
        self.ws, self.rt, self.user = ws, rt, user
        self.wanted: list[str] = []
        self.tiles: dict[str, _Tile] = {}
        self.wake = asyncio.Event()
        self.last_event: int | None = None  # the newest event id the page knows
        self.compliance: dict[str, float | None] = {}
        self.compliance_at = float("-inf")

    async def _news(self) -> list[dict[str, Any]]:
        """Alerts of server cameras stored since the last call (webcam alerts show on their own page
        part); refreshes the hour's compliance per camera when due. Database trouble skips a round."""
        store = self.rt.store
        try:
            if self.last_event is None:
                self.last_event = await anyio.to_thread.run_sync(store.last_event_id)
                return []
            events = await anyio.to_thread.run_sync(store.events_after, self.last_event)
            if time.monotonic() - self.compliance_at > LIVE_COMPLIANCE_S:
                since = datetime.now(UTC) - timedelta(hours=1)
                stats = await anyio.to_thread.run_sync(lambda: store.stats(since=since, bucket="hour"))
                self.compliance = {k: v["compliance"] for k, v in stats["per_camera"].items()}
                self.compliance_at = time.monotonic()
        except StoreError as exc:
            log.warning("live page: %s", exc)
            return []
        if events:
            self.last_event = events[-1].id
        return [
            {**_event_brief(e, False), "time": e.time.isoformat()}
            for e in events
            if not e.camera.startswith("browser:")
        ]

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        next_state = 0.0
        checked = time.monotonic()
        try:
            while not self.rt.stopping and not reader.done():
                self.wake.clear()
                now = time.monotonic()
                if now - checked > SESSION_RECHECK_S:
                    if not session_still_valid(self.ws, self.user):
                        await self.ws.close(code=1008, reason="signed out")
                        return
                    checked = now
                if now >= next_state:
                    self._sync()  # cameras started, stopped or restarted since
                    alerts = await self._news()
                    await self.ws.send_json(
                        {
                            "type": "cameras",
                            "cameras": self.rt.cameras.describe(),
                            "compliance_1h": self.compliance,
                        }
                    )
                    for event in alerts:
                        await self.ws.send_json({"type": "alert", "event": event})
                    next_state = now + LIVE_STATE_S
                due = next_state
                for name, tile in list(self.tiles.items()):
                    seq, jpeg = tile.camera.latest()
                    if jpeg is None or seq == tile.seq:
                        continue
                    ready = tile.sent_at + 1.0 / LIVE_TILE_FPS
                    if now < ready:
                        due = min(due, ready)
                        continue
                    await self.ws.send_bytes(_frame_message(name, seq, tile.camera.snapshot(), jpeg))
                    tile.seq, tile.sent_at = seq, time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), max(0.0, due - time.monotonic()))
            if self.rt.stopping:
                await self.ws.close(code=1001)
        except (WebSocketDisconnect, OSError):  # the page went away
            return
        finally:
            reader.cancel()
            for name in list(self.tiles):
                self._drop(name)

    async def _read(self) -> None:
        """Subscriptions from the page; returns when it disconnects."""
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                names = _camera_names(message.get("text"))
                if names is not None:
                    self.wanted = names
                    self._sync()
        except (WebSocketDisconnect, OSError):
            return
        finally:
            self.wake.set()

    def _sync(self) -> None:
        """Subscribe to the wanted cameras' current objects (a camera restarted by the settings is new)."""
        for name, tile in list(self.tiles.items()):
            if name not in self.wanted or tile.camera.stopped or self.rt.cameras.get(name) is not tile.camera:
                self._drop(name)
        for name in self.wanted:
            camera = self.rt.cameras.get(name)
            if name in self.tiles or camera is None or camera.stopped:
                continue
            new_frame = camera.subscribe()
            self.tiles[name] = _Tile(camera, new_frame, asyncio.create_task(self._forward(new_frame)))
        self.wake.set()

    def _drop(self, name: str) -> None:
        tile = self.tiles.pop(name)
        tile.forward.cancel()
        tile.camera.unsubscribe(tile.new_frame)

    async def _forward(self, new_frame: asyncio.Event) -> None:
        while True:
            await new_frame.wait()
            new_frame.clear()
            self.wake.set()


def _camera_names(text: str | None) -> list[str] | None:
    """The names of a `{"cameras": [...]}` message (unique, in order); None when it is not one."""
    try:
        message = json.loads(text) if text else None
    except ValueError:
        return None
    names = message.get("cameras") if isinstance(message, dict) else None
    if not isinstance(names, list):
        return None
    return list(dict.fromkeys(n for n in names if isinstance(n, str)))[:MAX_LIVE_CAMERAS]


def _frame_message(name: str, seq: int, snapshot: dict[str, Any], jpeg: bytes) -> bytes:
    header = json.dumps({**snapshot, "camera": name, "seq": seq}, separators=(",", ":")).encode()
    return b"".join((struct.pack(">I", len(header)), header, jpeg))


@router.websocket("/ws/live")
async def live(ws: WebSocket) -> None:
    rt = ws.app.state.runtime
    user = session_user(ws)
    if user is None or not same_origin(ws):
        await ws.close(code=1008, reason="authentication required")
        return
    await ws.accept()
    await _LiveFeed(ws, rt, user).run()


def _worker_or_404(rt: Runtime, name: str) -> Camera:
    worker = rt.cameras.get(name)
    if worker is None:
        raise HTTPException(404, f"no running camera named {name!r}")
    return worker


def _part(jpeg: bytes) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
    return head.encode() + jpeg + b"\r\n"


@router.get("/live/cameras/{name}/stream.mjpg")
async def camera_stream(name: str, rt: RuntimeDep, user: PageUser):
    worker = _worker_or_404(rt, name)

    async def frames():
        last, last_sent = -1, 0.0
        waiting = placeholder_jpeg(f"{name}: starting")
        new_frame = worker.subscribe()
        try:
            while not rt.stopping and not worker.stopped:
                new_frame.clear()
                seq, jpeg = worker.latest()
                now = time.monotonic()
                if seq == last and now - last_sent < 5.0:  # re-send now and then so proxies keep the stream
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(new_frame.wait(), timeout=1.0)
                    continue
                jpeg = jpeg or waiting
                last, last_sent = seq, now
                yield _part(jpeg)
        finally:
            worker.unsubscribe(new_frame)

    return StreamingResponse(frames(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}")


@router.get("/live/cameras/{name}/frame.jpg")
def camera_frame(name: str, rt: RuntimeDep, user: PageUser):
    _seq, jpeg = _worker_or_404(rt, name).latest()
    return Response(jpeg or placeholder_jpeg(f"{name}: starting"), media_type="image/jpeg")
