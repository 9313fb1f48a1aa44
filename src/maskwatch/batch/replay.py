"""The tracker and the votes over a video's recorded chunks, in order: `maskwatch detect`'s results.

The chunks recorded what needs pixels (detections, every face's probabilities, appearance signatures);
here the same `Pipeline` as `detect` runs over them with a detector and a classifier that hand back the
recorded values. Which faces it classifies, how tracks match, vote and get renewed is decided by the
pipeline itself, frame after frame from the first, so track ids run across chunk borders and every
label equals `detect`'s on the same video (measured: docs/batch.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from maskwatch.batch.chunks import read_record
from maskwatch.config import Settings
from maskwatch.types import Face, FrameResult
from maskwatch.vision.classify import AttributeClassifier
from maskwatch.vision.pipeline import Pipeline
from maskwatch.vision.track import IouTracker


class _RecordedDetector:
    """The current frame's recorded faces."""

    name = "recorded"

    def __init__(self) -> None:
        self.faces: list[Face] = []

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        return self.faces


class _RecordedClassifier(AttributeClassifier):
    """The real classifier's labels and thresholds; probabilities from the current frame's records."""

    def __init__(self, real: AttributeClassifier) -> None:
        super().__init__(real.models, uncertain_threshold=real.uncertain_threshold)
        self.probs: dict[int, dict[str, np.ndarray]] = {}  # id(face) -> task -> probabilities

    def predict(
        self, frame_bgr: np.ndarray, faces: Sequence[Face], tasks: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        wanted = self.tasks if tasks is None else self.tasks & set(tasks)
        return {t: np.stack([self.probs[id(f)][t] for f in faces]) for t in wanted}


class _ReplayPipeline(Pipeline):
    signatures: dict[int, np.ndarray | None]

    def _signature(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray | None:
        return self.signatures[id(face)]


def replay(
    source: str, chunk_files: Iterable[Path], settings: Settings, classifier: AttributeClassifier
) -> Iterator[FrameResult]:
    """One `FrameResult` per recorded frame of the chunks (in order), as `detect` gives it for
    `source` (track ids from 1; timings: the chunk's detect and classify times)."""
    detector, recorded = _RecordedDetector(), _RecordedClassifier(classifier)
    pipe = _ReplayPipeline(
        detector,
        recorded,
        reclassify_every=settings.models.reclassify_every,
        gender=settings.privacy.gender_enabled,
        tracker=IouTracker(ids=itertools.count(1)),
    )
    pixel = np.zeros((1, 1, 3), np.uint8)
    for path in chunk_files:
        with open(path) as f:
            for line in f:
                rec, faces, probs, sigs = read_record(line)
                detector.faces = faces
                recorded.probs = {id(face): p for face, p in zip(faces, probs, strict=True)}
                pipe.signatures = {id(face): s for face, s in zip(faces, sigs, strict=True)}
                w, h = rec["size"]
                frame = np.broadcast_to(pixel, (h, w, 3))  # the frame's shape, no pixels needed
                result = pipe.process(frame, source=source, frame_index=rec["i"], timestamp=rec["t"])
                detect_ms, classify_ms = rec["ms"]
                track_ms = result.timings_ms["track"]
                timings = {
                    "detect": detect_ms,
                    "track": track_ms,
                    "classify": classify_ms,
                    "total": detect_ms + track_ms + classify_ms,
                }
                yield FrameResult(
                    source=result.source,
                    frame_index=result.frame_index,
                    timestamp=result.timestamp,
                    faces=result.faces,
                    timings_ms=timings,
                    frame_size=result.frame_size,
                )
