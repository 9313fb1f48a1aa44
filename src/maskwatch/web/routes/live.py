"""Live video: the browser-webcam WebSocket and the server cameras' MJPEG streams.

Webcam protocol (`/ws/webcam`): the page sends one JPEG frame (binary message), the server answers
with one JSON text message, and only then does the page send the next frame, so latency stays bounded:

    {"type": "result", "seq": 7, "result": FrameResult.to_dict(), "counts": {...},
     "server_ms": 23.4, "events": [{"camera": ..., "track_id": ..., ...}]}
    {"type": "error", "message": "..."}     (the socket stays open unless the models are missing)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import anyio
from fastapi import APIRouter, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import Response, StreamingResponse

from maskwatch.web.analysis import MAX_STREAM_SIDE, BadMedia, ModelsUnavailable, counts, decode_image
from maskwatch.web.auth import same_origin, session_user
from maskwatch.web.cameras import placeholder_jpeg
from maskwatch.web.deps import PageUser, RuntimeDep

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

MAX_WS_FRAME_BYTES = 4 << 20
BOUNDARY = "maskwatchframe"


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
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
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


def _event_brief(event, gender: bool) -> dict:
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


def _worker_or_404(rt, name: str):
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
