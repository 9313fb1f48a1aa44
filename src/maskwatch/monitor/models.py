"""The models every stream shares: one face detector and one attribute classifier, loaded once.

Streams (server cameras, browser webcams, uploads) each get their own `Pipeline` (it holds tracker
state) over these shared, thread-safe models. `generation` changes whenever settings that affect the
models change, so long-lived streams know to make a new pipeline.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from maskwatch.config import Settings
from maskwatch.types import FrameResult
from maskwatch.vision.classify import AttributeClassifier
from maskwatch.vision.detect import FaceDetector
from maskwatch.vision.pipeline import Pipeline
from maskwatch.vision.track import IouTracker

log = logging.getLogger(__name__)


class ModelsUnavailable(RuntimeError):
    """The detector or the attribute model could not be loaded; the message says why and what to do."""


class Models:
    """Loads the shared detector + attribute classifier once (lazily, or in `warm`); makes pipelines.

    `threads`: ONNX Runtime threads of the classifier (None: its default). The monitor passes 1: its
    workers are the process's thread budget, one core each."""

    def __init__(
        self,
        settings: Settings,
        *,
        detector: FaceDetector | None = None,
        classifier: AttributeClassifier | None = None,
        threads: int | None = None,
    ) -> None:
        self._settings = settings
        self._detector = detector
        self._classifier = classifier
        self._injected = detector is not None and classifier is not None
        self._threads = threads
        self._lock = threading.Lock()
        self._error: str | None = None
        self.generation = 0

    def _load(self) -> tuple[FaceDetector, AttributeClassifier]:
        with self._lock:
            if self._detector is not None and self._classifier is not None:
                return self._detector, self._classifier
            s = self._settings
            try:
                from maskwatch.vision.detect import create_detector

                detector = self._detector or create_detector(s.detector)
                classifier = self._classifier or AttributeClassifier.from_dir(
                    s.models.model_dir,
                    uncertain_threshold=s.models.uncertain_threshold,
                    threads=self._threads,
                )
            except Exception as exc:  # ModelNotFoundError, DetectorError, ImportError, ONNX errors
                self._error = f"{type(exc).__name__}: {exc}"
                log.error("models unavailable: %s", self._error)
                raise ModelsUnavailable(self._error) from exc
            self._detector, self._classifier, self._error = detector, classifier, None
            return detector, classifier

    def warm(self) -> str | None:
        """Load the models now; returns the error message or None."""
        try:
            self._load()
        except ModelsUnavailable as exc:
            return str(exc)
        return None

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def loaded(self) -> bool:
        return self._detector is not None and self._classifier is not None

    @property
    def settings(self) -> Settings:
        return self._settings

    def update_settings(self, settings: Settings) -> None:
        old = self._settings
        changed = settings.detector != old.detector or settings.models != old.models
        regenerate = changed or settings.privacy.gender_enabled != old.privacy.gender_enabled
        self._settings = settings
        if regenerate:
            with self._lock:
                if changed and not self._injected:
                    self._detector = self._classifier = None
                self.generation += 1

    def pipeline(
        self,
        *,
        still_photo: bool = False,
        tracker: IouTracker | None = None,
        max_detect_interval: int | None = None,
    ) -> Pipeline:
        """A fresh pipeline sharing the loaded models (`tracker`: keep that one's tracks); `still_photo`:
        for one photo (a more thorough detector)."""
        detector, classifier = self._load()
        from maskwatch.vision.detect import still_photo_detector

        if still_photo:
            detector = still_photo_detector(detector, self._settings.detector)
        return Pipeline.from_settings(
            self._settings,
            detector=detector,
            classifier=classifier,
            tracker=tracker,
            max_detect_interval=max_detect_interval,
        )

    @staticmethod
    def annotate(image: np.ndarray, result: FrameResult, *, gender: bool) -> np.ndarray:
        from maskwatch.vision.draw import annotate

        return annotate(image, result, gender=gender)
