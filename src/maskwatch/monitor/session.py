"""A stream session: one stream's pipeline, tracker and alert hand-off.

The session's key names the stream in events and statistics (a camera's name, or `browser:USER#N` for
each browser webcam connection: two tabs are two streams). The tracker belongs to the session, not to the
pipeline: when the models are reloaded (settings changed) the pipeline is rebuilt around the same tracker,
so tracks keep their ids (and the alert rules their cooldowns); only the votes start again.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from maskwatch.monitor.models import Models
from maskwatch.store import Event
from maskwatch.types import FrameResult
from maskwatch.vision.pipeline import Pipeline
from maskwatch.vision.track import IouTracker

AlertSink = Callable[[str, FrameResult, np.ndarray], list[Event]]


class StreamSession:
    def __init__(
        self, key: str, models: Models, sink: AlertSink, *, max_detect_interval: int | None = None
    ) -> None:
        self.key = key
        self.models = models
        self.sink = sink
        self.max_detect_interval = max_detect_interval
        self.detect_interval: int | None = None  # set by the monitor under load; None: the pipeline's own
        self.tracker = IouTracker()
        self.frames = 0
        self._pipeline: Pipeline | None = None
        self._generation = -1

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None or self._generation != self.models.generation:
            if self._pipeline is not None:
                self.tracker.forget_votes()  # other models: their old votes no longer apply
            self._generation = self.models.generation
            self._pipeline = self.models.pipeline(
                tracker=self.tracker, max_detect_interval=self.max_detect_interval
            )
        return self._pipeline

    def process(
        self, image: np.ndarray, timestamp: float, *, may_detect: bool = True
    ) -> tuple[FrameResult, list[Event]]:
        """Run the pipeline on one frame and hand the result to the alerts; (result, new alert events).
        `may_detect=False`: the shared detector is busy, coast this frame if the stream can."""
        pipe = self.pipeline
        if self.detect_interval is not None:
            pipe.detect_interval = max(pipe.detect_every, min(self.detect_interval, pipe.max_detect_interval))
        result = pipe.process(
            image, source=self.key, frame_index=self.frames, timestamp=timestamp, may_detect=may_detect
        )
        self.frames += 1
        return result, self.sink(self.key, result, image)
