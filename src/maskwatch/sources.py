"""Frame sources: camera index, video file, RTSP/HTTP URL, image file or folder of images.

Live sources (cameras, URLs) reconnect with exponential backoff when they drop; unreadable input
raises `SourceError` with a message meant for the user.

Example:
    >>> with open_source("clip.mp4") as src:                                 # doctest: +SKIP
    ...     for frame in src:
    ...         print(frame.index, frame.image.shape)
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000


_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact_source(text: str) -> str:
    """`text` (a source, or a message naming one) fit to show: credentials in URLs replaced by ***."""
    return _CREDENTIALS.sub("***@", text)


class SourceError(RuntimeError):
    """The input cannot be opened or read."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame. `timestamp`: seconds since the epoch for live sources and images, seconds
    from the start of the file for video files. `source` names the stream (or the image file)."""

    index: int
    timestamp: float
    image: np.ndarray
    source: str


class FrameSource:
    """Iterator of `Frame`s; use as a context manager or call `close()`.

    `is_live`: a camera or stream (frames are dropped, not queued, when processing is slow).
    `is_sequence`: consecutive frames show the same scene (video/camera), so tracking applies.
    """

    is_live = False
    is_sequence = True
    fps: float | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self._it: Iterator[Frame] | None = None

    def __iter__(self) -> FrameSource:
        return self

    def __next__(self) -> Frame:
        if self._it is None:
            self._it = self._frames()
        return next(self._it)

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def read_image(path: str | Path) -> np.ndarray:
    """A BGR image from a file; `SourceError` if missing or not decodable."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"no such file: {p}")
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
        img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except (OSError, cv2.error):  # unreadable file, or the decoder gave up
        img = None
    if img is None:
        raise SourceError(f"cannot decode image {p} (corrupt or not an image)")
    return img


class ImageSource(FrameSource):
    """One image file, or every image in a folder (sorted by name; undecodable files are skipped)."""

    is_sequence = False

    def __init__(self, paths: list[Path], name: str) -> None:
        super().__init__(name)
        self.paths = paths

    def _frames(self) -> Iterator[Frame]:
        single = len(self.paths) == 1 and not Path(self.name).is_dir()
        index = 0
        for p in self.paths:
            try:
                img = read_image(p)
            except SourceError as exc:
                if single:
                    raise
                log.warning("skipping %s", exc)
                continue
            yield Frame(index, time.time(), img, str(p))
            index += 1


class VideoSource(FrameSource):
    """A camera index, a video file or a stream URL through `cv2.VideoCapture`.

    Live sources that stop delivering frames are reopened with backoff (0.5 s doubling to 8 s),
    `max_retries` times in a row (None: forever); files simply end.
    """

    def __init__(
        self, target: str | int, *, live: bool, reconnect: bool = True, max_retries: int | None = None
    ) -> None:
        super().__init__(str(target))
        self.target = target
        self.is_live = live
        self.reconnect = reconnect and live
        self.max_retries = max_retries
        cap = self._open()
        self._cap: cv2.VideoCapture | None = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else None
        count = 0 if live else int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count: int | None = count if count > 0 else None  # files, when the container says
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self.frame_size: tuple[int, int] | None = (w, h) if w > 0 and h > 0 else None  # from the header

    def _open(self) -> cv2.VideoCapture:
        if isinstance(self.target, int):
            cap = cv2.VideoCapture(self.target)
            what = f"camera {self.target}"
        else:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                OPEN_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                READ_TIMEOUT_MS,
            ]
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
            what = f"stream {self.target}" if self.is_live else f"video {self.target}"
        if not cap.isOpened():
            cap.release()
            if isinstance(self.target, int):
                why = "no such device, or it is in use"
            elif self.is_live:
                why = "unreachable, wrong URL or not a video stream"
            else:
                why = "corrupt or unsupported format"
            raise SourceError(f"cannot open {what} ({why})")
        return cap

    def _frames(self) -> Iterator[Frame]:
        index = 0
        failures = 0
        while True:
            if self._cap is None:
                break
            ok, img = self._cap.read()
            if ok and img is not None:
                failures = 0
                ts = time.time() if self.is_live else self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                yield Frame(index, ts, img, self.name)
                index += 1
                continue
            if not self.reconnect:
                break
            self._reopen_with_backoff(failures)
            failures += 1

    def _reopen_with_backoff(self, failures: int) -> None:
        attempt = 0
        while True:
            if self.max_retries is not None and failures + attempt >= self.max_retries:
                self.close()
                raise SourceError(
                    f"live source {self.name} dropped and did not come back after {self.max_retries} retries"
                )
            delay = min(8.0, 0.5 * 2 ** (failures + attempt))
            log.warning("live source %s dropped; reconnecting in %.1f s", self.name, delay)
            time.sleep(delay)
            if self._cap is not None:
                self._cap.release()
            try:
                self._cap = self._open()
                log.info("reconnected to %s", self.name)
                return
            except SourceError:
                self._cap = None
                attempt += 1

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_source(
    spec: str | int | Path, *, reconnect: bool = True, max_retries: int | None = None
) -> FrameSource:
    """Open `spec`: a camera index (0 or "0"), an rtsp/http(s) URL, an image file, a folder of images or
    a video file. Raises `SourceError` with a clear message when it cannot be opened."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        return VideoSource(int(spec), live=True, reconnect=reconnect, max_retries=max_retries)
    text = str(spec)
    if text.lower().startswith(URL_SCHEMES):
        return VideoSource(text, live=True, reconnect=reconnect, max_retries=max_retries)
    path = Path(text).expanduser()
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        return ImageSource(images, str(path))
    if not path.exists():
        raise SourceError(f"no such file or folder: {path}")
    if not path.is_file():
        raise SourceError(f"not a file: {path}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        read_image(path)  # fail now, not on first iteration
        return ImageSource([path], str(path))
    return VideoSource(str(path), live=False)
