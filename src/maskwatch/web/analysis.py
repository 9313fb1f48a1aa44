"""Uploads: a photo or a short video analysed on request, with the monitor's shared models.

Example:
    >>> sniff_kind(b"\\xff\\xd8\\xff\\xe0rest")
    ('image', '.jpg')
    >>> sniff_kind(b"not a picture") is None
    True
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskwatch.monitor.models import Models, ModelsUnavailable
from maskwatch.monitor.stream import counts, encode_jpeg
from maskwatch.sources import SourceError, VideoSource
from maskwatch.types import Face, FrameResult

__all__ = ["Analyzer", "BadMedia", "ModelsUnavailable", "counts", "decode_image", "encode_jpeg", "sniff_kind"]

log = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 40_000_000  # refuse decompression bombs
MAX_STREAM_SIDE = 1920  # webcam frames larger than this are refused


class BadMedia(ValueError):
    """An uploaded file that is not a usable image or video (the message is shown to the user)."""


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
    """BGR image from encoded bytes, or BadMedia."""
    buf = np.frombuffer(data, np.uint8)
    if buf.size == 0:
        raise BadMedia("the file is empty")
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise BadMedia("the image could not be decoded (corrupt or unsupported file)")
    h, w = image.shape[:2]
    if h * w > MAX_IMAGE_PIXELS:
        raise BadMedia(f"the image is too large ({w}x{h} pixels)")
    if max_side is not None and max(h, w) > max_side:
        raise BadMedia(f"frames larger than {max_side} pixels are not accepted ({w}x{h})")
    return image


class Analyzer(Models):
    """The shared models plus what uploads need: one photo or a short video, analysed on request."""

    # -- uploads --------------------------------------------------------------------------------
    def analyze_image(self, image: np.ndarray, *, source: str = "upload") -> FrameResult:
        pipeline = self.pipeline(still_photo=True)
        return pipeline.process(image, source=source, frame_index=0, timestamp=time.time())

    def analyze_video(
        self, data: bytes, suffix: str, *, gender: bool, max_frames: int = 300, max_seconds: float = 60.0
    ) -> VideoAnalysis:
        """Annotate a short video: WebM (VP8) output, per-frame results, a per-track summary."""
        pipeline = self.pipeline()
        with tempfile.TemporaryDirectory(prefix="maskwatch-upload-") as tmp:
            src = Path(tmp) / f"input{suffix}"  # server-chosen name; nothing from the client
            src.write_bytes(data)
            try:
                video = VideoSource(str(src), live=False)
            except SourceError as exc:
                raise BadMedia("the video could not be opened (corrupt or unsupported codec)") from exc
            fps = video.fps if video.fps and 1.0 <= video.fps <= 120.0 else 25.0
            total = video.frame_count or 0
            if total and total / fps > max_seconds:
                video.close()
                raise BadMedia(f"the video is longer than {max_seconds:.0f} s; upload a shorter clip")
            stride = max(1, -(-total // max_frames)) if total else 1
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
                    if h * w > MAX_IMAGE_PIXELS:
                        raise BadMedia("the video frames are too large")
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
    analyzer: Analyzer, data: bytes, kind: str, suffix: str, *, filename: str, user: str, gender: bool
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
    video = analyzer.analyze_video(data, suffix, gender=gender)
    payload = {
        "file": filename,
        "kind": "video",
        "fps": round(video.fps, 2),
        "frames": [r.to_dict(gender=gender) for r in video.results],
    }
    rows = video.tracks(gender=gender)
    item = UploadResult(rid, user, "video", filename, video.media, "video/webm", payload)
    return item, rows, {"frames": len(video.results), "tracks": len(rows)}
