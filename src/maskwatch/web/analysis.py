"""Uploads: a photo or a short video analysed on request, with the monitor's shared models.

Nothing is decoded before its size is known: `image_size` reads the pixel size an image declares in its
header (PNG IHDR, JPEG SOF, WebP VP8/VP8L/VP8X, BMP) and `check_image_header` refuses too many pixels or
too long a side; a video's frame size is checked right after the file is opened, before any frame is
read. Decoding and analysis run in worker threads, at most `Runtime.vision_limiter` at once
(`run_in_pool`: a request waits at most `VISION_WAIT_S` for a place, then `Busy`).

Example:
    >>> sniff_kind(b"\\xff\\xd8\\xff\\xe0rest")
    ('image', '.jpg')
    >>> sniff_kind(b"not a picture") is None
    True
    >>> png = b"\\x89PNG\\r\\n\\x1a\\n" + b"\\0\\0\\0\\rIHDR" + (20000).to_bytes(4, "big") * 2
    >>> image_size(png)
    (20000, 20000)
    >>> check_image_header(png)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    maskwatch.web.analysis.MediaTooLarge: the image is too large (20000x20000 pixels; at most 40 MP, ...)
"""

from __future__ import annotations

import logging
import math
import secrets
import struct
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import cv2
import numpy as np

from maskwatch.monitor.models import Models, ModelsUnavailable
from maskwatch.monitor.stream import counts, encode_jpeg
from maskwatch.sources import SourceError, VideoSource
from maskwatch.types import Face, FrameResult

__all__ = [
    "Analyzer",
    "BadMedia",
    "Busy",
    "Cancelled",
    "MediaTooLarge",
    "ModelsUnavailable",
    "RateLimiter",
    "check_image_header",
    "counts",
    "decode_image",
    "encode_jpeg",
    "image_size",
    "run_in_pool",
    "sniff_kind",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_IMAGE_PIXELS = 40_000_000  # refuse decompression bombs (a decoded BGR image: 3 bytes a pixel)
MAX_IMAGE_SIDE = 16384  # ... and absurd sides
MAX_VIDEO_PIXELS = 4096 * 2160  # video frames up to DCI 4K
MAX_VIDEO_SIDE = 4096
MAX_STREAM_SIDE = 1920  # webcam frames larger than this are refused
MAX_JPEG_SEGMENTS = 1000  # markers scanned for the frame header before giving up
VISION_WAIT_S = 2.0  # the longest a request waits for a place in the vision pool ...
BUSY_RETRY_AFTER_S = 5  # ... before 503 with this Retry-After


class BadMedia(ValueError):
    """An uploaded file that is not a usable image or video (the message is shown to the user)."""

    status_code = 422


class MediaTooLarge(BadMedia):
    """An image or video whose pixel size is over the limits (HTTP 413)."""

    status_code = 413


class Cancelled(BadMedia):
    """The user cancelled the analysis of an upload (UploadJobs.cancel)."""

    status_code = 409


class Busy(RuntimeError):
    """The vision pool stayed full for longer than a request may wait (HTTP 503 + Retry-After)."""

    def __init__(self, retry_after: int = BUSY_RETRY_AFTER_S) -> None:
        super().__init__("the server is busy analysing other images; try again shortly")
        self.retry_after = retry_after


async def run_in_pool(
    limiter: anyio.CapacityLimiter, fn: Callable[[], T], *, wait_s: float | None = None
) -> T:
    """Run `fn` in a worker thread once `limiter` has a place; Busy when none frees up within `wait_s`
    (default VISION_WAIT_S). The event loop never runs `fn`, so health checks and pages stay quick."""
    borrower = object()  # a token of its own: one task may hold several
    with anyio.move_on_after(VISION_WAIT_S if wait_s is None else wait_s) as scope:
        await limiter.acquire_on_behalf_of(borrower)
    if scope.cancelled_caught:
        raise Busy()
    try:
        return await anyio.to_thread.run_sync(fn)
    finally:
        limiter.release_on_behalf_of(borrower)


class RateLimiter:
    """At most `limit` hits per key within a sliding window (uploads per user per minute).

    >>> r = RateLimiter(window_s=60)
    >>> [r.hit("ann", 2, now=t) for t in (0, 1, 2)], r.hit("bob", 2, now=2), r.hit("ann", 2, now=61)
    ([0, 0, 58], 0, 0)
    """

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, limit: int, *, now: float | None = None) -> int:
        """Count one hit; 0 when allowed, else the seconds until the next one is (nothing counted)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= limit:
                return max(1, math.ceil(hits[0] + self.window_s - now))
            hits.append(now)
            return 0


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The largest size a WebP declares: the VP8X canvas and its VP8/VP8L bitstream, whichever is larger."""
    sizes: list[tuple[int, int]] = []
    pos = 12
    for _ in range(64):  # RIFF chunks: fourcc, little-endian size, payload padded to even
        if pos + 8 > len(data):
            break
        fourcc, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = data[pos + 8 : pos + 8 + min(size, 32)]
        if fourcc == b"VP8X" and len(body) >= 10:
            w = int.from_bytes(body[4:7], "little") + 1
            h = int.from_bytes(body[7:10], "little") + 1
            sizes.append((w, h))
        elif fourcc == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
            w, h = struct.unpack("<HH", body[6:10])
            sizes.append((w & 0x3FFF, h & 0x3FFF))
            break
        elif fourcc == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
            bits = int.from_bytes(body[1:5], "little")
            sizes.append(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
            break
        pos += 8 + size + (size & 1)
    if not sizes:
        return None
    return max(w for w, _ in sizes), max(h for _, h in sizes)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's first SOF marker (walking the segments; nothing is decoded)."""
    pos, n = 2, len(data)
    for _ in range(MAX_JPEG_SEGMENTS):
        if pos >= n or data[pos] != 0xFF:
            return None
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return None
        code = data[pos]
        pos += 1
        if code == 0x01 or 0xD0 <= code <= 0xD8:  # markers without a length
            continue
        if code in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        if pos + 2 > n:
            return None
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            return None
        if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):  # SOF0-SOF15 (not DHT, JPG, DAC)
            if pos + 7 > n:
                return None
            h, w = struct.unpack(">HH", data[pos + 3 : pos + 7])
            return w, h
        pos += length
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) an image file declares in its header (JPEG, PNG, WebP, BMP), without decoding;
    None when the format is not one of these or the header cannot be read."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return w, h
        return None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data.startswith(b"BM") and len(data) >= 26:
        dib = int.from_bytes(data[14:18], "little")
        if dib == 12:  # BITMAPCOREHEADER: 16-bit sides
            w, h = struct.unpack("<HH", data[18:22])
            return w, h
        if dib >= 16:  # BITMAPINFOHEADER and later: signed 32-bit (a negative height is top-down)
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
    return None


def check_image_header(data: bytes, *, max_side: int | None = None) -> tuple[int, int]:
    """The declared (width, height), or BadMedia (unreadable) / MediaTooLarge (over the limits)."""
    size = image_size(data)
    if size is None or min(size) < 1:
        raise BadMedia("the image could not be read (corrupt or unsupported: no readable size in its header)")
    w, h = size
    if w * h > MAX_IMAGE_PIXELS or max(w, h) > MAX_IMAGE_SIDE:
        raise MediaTooLarge(
            f"the image is too large ({w}x{h} pixels; at most {MAX_IMAGE_PIXELS / 1e6:g} MP, "
            f"{MAX_IMAGE_SIDE} a side)"
        )
    if max_side is not None and max(w, h) > max_side:
        raise MediaTooLarge(f"frames larger than {max_side} pixels are not accepted ({w}x{h})")
    return w, h


def sniff_kind(data: bytes) -> tuple[str, str] | None:
    """(kind, suffix) from the file's first bytes, never from its name: 'image' or 'video', or None."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "image", ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", ".png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", ".webp"
    if head.startswith(b"BM"):
        return "image", ".bmp"
    if head[4:8] == b"ftyp":
        return "video", ".mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", ".webm"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", ".avi"
    return None


def decode_image(data: bytes, *, max_side: int | None = None) -> np.ndarray:
    """BGR image from encoded bytes, or BadMedia; the size in the header is checked before decoding."""
    buf = np.frombuffer(data, np.uint8)
    if buf.size == 0:
        raise BadMedia("the file is empty")
    check_image_header(data, max_side=max_side)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise BadMedia("the image could not be decoded (corrupt or unsupported file)")
    h, w = image.shape[:2]
    if h * w > MAX_IMAGE_PIXELS or max(h, w) > MAX_IMAGE_SIDE:  # never larger than declared, but still
        raise MediaTooLarge(f"the image is too large ({w}x{h} pixels)")
    if max_side is not None and max(h, w) > max_side:
        raise BadMedia(f"frames larger than {max_side} pixels are not accepted ({w}x{h})")
    return image


def check_video_frame_size(size: tuple[int, int] | None) -> None:
    """MediaTooLarge for video frames over MAX_VIDEO_PIXELS / MAX_VIDEO_SIDE (None: not known yet)."""
    if size is None:
        return
    w, h = size
    if w * h > MAX_VIDEO_PIXELS or max(w, h) > MAX_VIDEO_SIDE:
        raise MediaTooLarge(
            f"the video frames are too large ({w}x{h} pixels; at most {MAX_VIDEO_SIDE} pixels a side, "
            f"{MAX_VIDEO_PIXELS} in all)"
        )


class Analyzer(Models):
    """The shared models plus what uploads need: one photo or a short video, analysed on request."""

    # -- uploads --------------------------------------------------------------------------------
    def analyze_image(self, image: np.ndarray, *, source: str = "upload") -> FrameResult:
        pipeline = self.pipeline(still_photo=True)
        return pipeline.process(image, source=source, frame_index=0, timestamp=time.time())

    def analyze_video(
        self,
        data: bytes,
        suffix: str,
        *,
        gender: bool,
        max_frames: int = 300,
        max_seconds: float = 60.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> VideoAnalysis:
        """Annotate a short video: WebM (VP8) output, per-frame results, a per-track summary.
        `progress(done, expected)` is called after each analysed frame (it may raise to stop)."""
        pipeline = self.pipeline()
        with tempfile.TemporaryDirectory(prefix="maskwatch-upload-") as tmp:
            src = Path(tmp) / f"input{suffix}"  # server-chosen name; nothing from the client
            src.write_bytes(data)
            try:
                video = VideoSource(str(src), live=False)
            except SourceError as exc:
                raise BadMedia("the video could not be opened (corrupt or unsupported codec)") from exc
            try:
                check_video_frame_size(video.frame_size)
            except BadMedia:
                video.close()
                raise
            fps = video.fps if video.fps and 1.0 <= video.fps <= 120.0 else 25.0
            total = video.frame_count or 0
            if total and total / fps > max_seconds:
                video.close()
                raise BadMedia(f"the video is longer than {max_seconds:.0f} s; upload a shorter clip")
            stride = max(1, -(-total // max_frames)) if total else 1
            expected = min(max_frames, -(-total // stride)) if total else 0
            out_path = Path(tmp) / "annotated.webm"
            writer = None
            results: list[FrameResult] = []
            try:
                for item in video:
                    if len(results) >= max_frames:
                        break
                    index, frame = item.index, item.image
                    if index % stride:
                        continue
                    h, w = frame.shape[:2]
                    check_video_frame_size((w, h))
                    result = pipeline.process(
                        frame, source="upload", frame_index=index, timestamp=index / fps
                    )
                    results.append(result)
                    drawn = self.annotate(frame, result, gender=gender)
                    if writer is None:
                        writer = cv2.VideoWriter(
                            str(out_path), cv2.VideoWriter.fourcc(*"VP80"), fps / stride, (w, h)
                        )
                    writer.write(drawn)
                    if progress is not None:
                        progress(len(results), expected)
            finally:
                video.close()
                if writer is not None:
                    writer.release()
            if not results:
                raise BadMedia("the video has no readable frames")
            media = out_path.read_bytes() if out_path.is_file() else b""
        return VideoAnalysis(results=results, media=media, fps=fps / stride)


@dataclass
class VideoAnalysis:
    results: list[FrameResult]
    media: bytes
    fps: float

    def tracks(self, *, gender: bool) -> list[dict[str, Any]]:
        """One row per track: frames seen, the last (voted) labels and the best box score."""
        rows: dict[Any, dict[str, Any]] = {}
        for r in self.results:
            for i, f in enumerate(r.faces):
                key = f.track_id if f.track_id is not None else f"{r.frame_index}-{i}"
                row = rows.setdefault(
                    key, {"track_id": f.track_id, "frames": 0, "first_frame": r.frame_index}
                )
                row["frames"] += 1
                row["last_frame"] = r.frame_index
                row["mask"] = f.mask.label
                row["mask_confidence"] = round(f.mask.confidence, 3)
                if gender:
                    row["gender"] = f.gender.label
                    row["gender_confidence"] = round(f.gender.confidence, 3)
        return list(rows.values())


@dataclass
class UploadResult:
    id: str
    user: str
    kind: str  # image | video
    filename: str
    media: bytes
    media_type: str
    payload: dict[str, Any]
    created: float = field(default_factory=time.time)


class UploadResults:
    """The last few upload results in memory (annotated media + JSON), each visible only to its user."""

    def __init__(self, capacity: int = 12) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, UploadResult] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, item: UploadResult) -> None:
        with self._lock:
            self._items[item.id] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, rid: str, user: str) -> UploadResult | None:
        with self._lock:
            item = self._items.get(rid)
        return item if item is not None and item.user == user else None


@dataclass
class UploadJob:
    done: int = 0  # frames analysed
    total: int = 0  # frames to analyse (0: not known yet)
    cancelled: bool = False

    def progress(self, done: int, total: int) -> None:
        if self.cancelled:
            raise Cancelled("the analysis was cancelled")
        self.done, self.total = done, total


class UploadJobs:
    """Uploads being analysed, by (user, the page's job id): progress for the page, and cancel."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], UploadJob] = {}
        self._lock = threading.Lock()

    def start(self, user: str, job_id: str) -> UploadJob:
        with self._lock:
            return self._jobs.setdefault((user, job_id), UploadJob())

    def get(self, user: str, job_id: str) -> UploadJob | None:
        with self._lock:
            return self._jobs.get((user, job_id))

    def finish(self, user: str, job_id: str) -> None:
        with self._lock:
            self._jobs.pop((user, job_id), None)


def face_row(face: Face, gender: bool) -> dict[str, Any]:
    """One row of the upload page's face table."""
    row = {
        "track_id": face.track_id,
        "box": [round(v) for v in face.box],
        "score": round(face.score, 3),
        "mask": face.mask.label,
        "mask_confidence": round(face.mask.confidence, 3),
    }
    if gender:
        row.update(gender=face.gender.label, gender_confidence=round(face.gender.confidence, 3))
    return row


def analyze_upload(
    analyzer: Analyzer,
    data: bytes,
    kind: str,
    suffix: str,
    *,
    filename: str,
    user: str,
    gender: bool,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[UploadResult, list[dict[str, Any]], dict[str, int]]:
    """Analyse an uploaded photo or video (run it in a worker thread): (result, table rows, summary)."""
    rid = secrets.token_urlsafe(16)
    if kind == "image":
        image = decode_image(data)
        result = analyzer.analyze_image(image)
        drawn = analyzer.annotate(image, result, gender=gender)
        payload = {"file": filename, "kind": "image", **result.to_dict(gender=gender)}
        item = UploadResult(rid, user, "image", filename, encode_jpeg(drawn, 90), "image/jpeg", payload)
        return item, [face_row(f, gender) for f in result.faces], counts(result, gender=gender)
    video = analyzer.analyze_video(data, suffix, gender=gender, progress=progress)
    payload = {
        "file": filename,
        "kind": "video",
        "fps": round(video.fps, 2),
        "frames": [r.to_dict(gender=gender) for r in video.results],
    }
    rows = video.tracks(gender=gender)
    item = UploadResult(rid, user, "video", filename, video.media, "video/webm", payload)
    return item, rows, {"frames": len(video.results), "tracks": len(rows)}
