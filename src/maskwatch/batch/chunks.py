"""Videos split into chunks of frames, and the analysis of one chunk.

A chunk's analysis is everything of `Pipeline` that needs pixels and no state: the detector on every
analysed frame, the attribute probabilities of every face and each face's appearance signature. It is
recorded exactly (floats round-trip through JSON; signatures as float32 bytes), one JSON line per
frame, so `replay` can later run the tracker and votes over the chunks in order and give what
`maskwatch detect` gives on the whole video.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskwatch.config import Settings
from maskwatch.types import Face
from maskwatch.vision.classify import AttributeClassifier
from maskwatch.vision.detect import FaceDetector

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts"}
RECORD_FORMAT = 1  # part of each video's chunk key: a new format never reuses old chunk files


@dataclass(frozen=True)
class Video:
    """One input video. `name`: its output name (relative to the input folder, without suffix);
    `frames`: the container's frame count (0 when it does not say: one chunk to the end)."""

    path: str
    name: str
    frames: int
    fps: float
    key: str  # identity of the file and of the analysis: names its chunk folder
    pixels: int = 0  # width x height (0: unknown)


@dataclass(frozen=True)
class Chunk:
    """Frames `start` .. `end` - 1 of `video` (`end` None: to the end of the file); of those, the
    frames whose index is a multiple of `every_nth` are analysed."""

    video: Video
    number: int
    start: int
    end: int | None
    every_nth: int

    @property
    def analysed(self) -> int:
        """Frames this chunk analyses (an estimate for the open-ended last chunk)."""
        end = self.video.frames if self.end is None else self.end
        n = self.every_nth
        return max(0, (end + n - 1) // n - (self.start + n - 1) // n)

    @property
    def cost(self) -> float:
        """Rough work of the chunk, to schedule the longest first: the detector's cost grows with the
        pixels it sees, and frames below 640 x 360 are upscaled to about that size."""
        return self.analysed * max(self.video.pixels, 640 * 360)

    def file(self, chunk_root: Path) -> Path:
        return chunk_root / f"{Path(self.video.name).name}-{self.video.key}" / f"{self.number:04d}.jsonl"


def find_videos(inputs: list[str]) -> list[tuple[str, str]]:
    """(path, output name) of every video in `inputs` (files, or folders searched recursively)."""
    found: list[tuple[str, str]] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.suffix.lower() in VIDEO_SUFFIXES and f.is_file():
                    found.append((str(f), str(f.relative_to(p).with_suffix(""))))
        elif p.is_file():
            found.append((spec, p.stem))
        else:
            raise FileNotFoundError(f"no such file or folder: {spec}")
    names = [name for _, name in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two inputs would write the same reports: {', '.join(dupes)} (run them apart)")
    return found


def analysis_key(path: str, settings: Settings, every_nth: int, chunk_frames: int) -> str:
    """Hash of the file (path, size, mtime) and of everything that changes a chunk's records."""
    st = os.stat(path)
    parts = [
        RECORD_FORMAT,
        os.path.abspath(path),
        st.st_size,
        st.st_mtime_ns,
        every_nth,
        chunk_frames,
        settings.detector.model_dump_json(),
        settings.models.model_dump_json(),
        settings.privacy.gender_enabled,
    ]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def plan(video: Video, chunk_frames: int, every_nth: int) -> list[Chunk]:
    """`video` cut into chunks of `chunk_frames` frames; the last one reads to the end of the file."""
    starts = list(range(0, max(video.frames, 1), chunk_frames)) if video.frames else [0]
    return [
        Chunk(video, i, s, None if i == len(starts) - 1 else starts[i + 1], every_nth)
        for i, s in enumerate(starts)
    ]


def analysis_tasks(classifier: AttributeClassifier, settings: Settings) -> set[str]:
    """The tasks `Pipeline` asks the classifier for under these settings."""
    return {t for t in classifier.tasks if settings.privacy.gender_enabled or t != "gender"}


_MODELS: dict[str, tuple[FaceDetector, AttributeClassifier]] = {}


def load_models(settings: Settings) -> tuple[FaceDetector, AttributeClassifier]:
    """The detector and classifier of `settings`, loaded once per process with one thread each (a
    worker is one core: OpenCV and ONNX Runtime must not start thread pools of their own)."""
    key = settings.detector.model_dump_json() + settings.models.model_dump_json()
    if key not in _MODELS:
        import cv2

        from maskwatch.vision.detect import create_detector

        cv2.setNumThreads(1)
        classifier = AttributeClassifier.from_dir(
            settings.models.model_dir, uncertain_threshold=settings.models.uncertain_threshold, threads=1
        )
        _MODELS[key] = (create_detector(settings.detector), classifier)
    return _MODELS[key]


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()


def unb64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), np.float32)


def analyse(chunk: Chunk, settings: Settings) -> str:
    """The records (JSON lines) of `chunk`: runs in a worker process or a Ray task."""
    import cv2

    from maskwatch.vision.pipeline import appearance_signature

    detector, classifier = load_models(settings)
    tasks = analysis_tasks(classifier, settings)
    # one decoding thread too: FFmpeg would otherwise start one per core in every worker
    cap = cv2.VideoCapture(chunk.video.path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if not cap.isOpened():
        raise RuntimeError(f"cannot open video {chunk.video.path}")
    lines = []
    try:
        if chunk.start:
            cap.set(cv2.CAP_PROP_POS_FRAMES, chunk.start)  # frame-exact on the H.264 files measured
        index = chunk.start
        while chunk.end is None or index < chunk.end:
            if index % chunk.every_nth:
                if not cap.grab():
                    break
                index += 1
                continue
            ok, img = cap.read()
            if not ok or img is None:
                break
            timestamp = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0  # as sources.VideoSource gives it
            t0 = time.perf_counter()
            faces = detector.detect(img)
            t1 = time.perf_counter()
            probs = classifier.predict(img, faces, tasks) if faces else {}
            t2 = time.perf_counter()
            record: dict[str, Any] = {
                "i": index,
                "t": timestamp,
                "size": [img.shape[1], img.shape[0]],
                "ms": [(t1 - t0) * 1e3, (t2 - t1) * 1e3],
                "faces": [],
            }
            for k, f in enumerate(faces):
                sig = appearance_signature(img, f.box)
                record["faces"].append(
                    {
                        "box": list(f.box),
                        "score": f.score,
                        "lm": f.landmarks,
                        "p": {t: _b64(p[k]) for t, p in probs.items()},
                        "sig": None if sig is None else _b64(sig),
                    }
                )
            lines.append(json.dumps(record) + "\n")
            index += 1
    finally:
        cap.release()
    return "".join(lines)


def read_record(line: str) -> tuple[dict[str, Any], list[Face], list[dict[str, np.ndarray]], list]:
    """One recorded frame: the record, its faces, their probabilities per task, their signatures."""
    rec = json.loads(line)
    faces = [Face(box=tuple(f["box"]), score=f["score"], landmarks=f["lm"]) for f in rec["faces"]]
    probs = [{t: unb64(v) for t, v in f["p"].items()} for f in rec["faces"]]
    sigs = [None if f["sig"] is None else unb64(f["sig"]) for f in rec["faces"]]
    return rec, faces, probs, sigs
