"""detect -> track -> classify (only tracks that need it) -> vote: one `FrameResult` per frame.

One `Pipeline` per video stream (it holds tracker state); detector and classifier may be shared by
many pipelines and threads.

Example:
    >>> from maskwatch.config import load_settings
    >>> pipe = Pipeline.from_settings(load_settings())                      # doctest: +SKIP
    >>> result = pipe.process(frame, source="cam0")                         # doctest: +SKIP
    >>> [(f.track_id, f.mask.label) for f in result.faces]                  # doctest: +SKIP
    [(1, 'mask')]
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from maskwatch.types import UNCERTAIN, UNKNOWN, Attribute, Face, FrameResult
from maskwatch.vision.classify import AttributeClassifier
from maskwatch.vision.detect import FaceDetector, create_detector
from maskwatch.vision.track import IouTracker, Track


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """A 3-channel uint8 BGR view of `frame` (grayscale and BGRA frames are converted)."""
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR frame, got shape {frame.shape} {frame.dtype}")
    return frame


MOTION_MIN = 0.004  # share of a 64x48 thumbnail's pixels that must change for "the scene moved"
MOTION_PIXEL_DELTA = 12  # grey levels
# Bhattacharyya distance of appearance signatures above which a face "looks like another person", and
# how many detections in a row must say so. Measured on the 15 clips of ../shared/data/videos (YuNet,
# every frame): one person's face is above 0.35 on 1 % of its frames, two different people on 89 %.
APPEARANCE_CHANGE = 0.35
APPEARANCE_STRIKES = 2
APPEARANCE_EMA = 0.2


def motion_thumbnail(frame_bgr: np.ndarray) -> np.ndarray:
    small = cv2.resize(frame_bgr, (64, 48), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)


def changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(cv2.absdiff(a, b) > MOTION_PIXEL_DELTA))


def appearance_signature(frame_bgr: np.ndarray, box) -> np.ndarray | None:
    """A colour histogram (hue x saturation, L1-normalised) of the upper half of the face and the hair
    above it: what stays when a mask is put on or taken off, and differs between most people."""
    h, w = frame_bgr.shape[:2]
    x1, y1, x2, y2 = box
    bh = y2 - y1
    top, bottom = max(0, int(y1 - 0.15 * bh)), min(h, int(y1 + 0.55 * bh))
    left, right = max(0, int(x1)), min(w, int(x2))
    if bottom - top < 4 or right - left < 4:
        return None
    patch = cv2.resize(frame_bgr[top:bottom, left:right], (24, 20), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(patch, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [12, 4], [0, 180, 0, 256]).ravel()
    return hist / max(float(hist.sum()), 1e-6)


def appearance_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.compareHist(a.astype(np.float32), b.astype(np.float32), cv2.HISTCMP_BHATTACHARYYA))


class Pipeline:
    """Face detection, tracking and attribute voting for one stream.

    `track=False` classifies every face on every frame, independently (images, the bench baseline).
    With tracking, a track is re-classified every `reclassify_every` frames, when its box moved or grew
    a lot, or more often while its vote is still `uncertain`; attributes are the track's vote (a
    confidence-weighted moving average of its predictions, with hysteresis against flicker).
    `gender=False` neither computes nor reports apparent gender.
    `detect_every=N` (with tracking) runs the detector on every Nth frame only; the frames between
    report the last faces moved by their track's velocity (like DeepStream's `interval`): about N
    times less detection work for a box lag of at most N-1 frames. `detect_interval` is that N now; the
    monitor raises it (up to `max_detect_interval`) when the machine is overloaded and lowers it again.
    With `max_detect_interval` > 1 detection is also adaptive: while the picture does not change (less
    than `MOTION_MIN` of a thumbnail's pixels differ from the last detected frame) the detector runs
    only every `max_detect_interval` frames.
    Appearance check: a track whose face no longer looks like the one it followed (another person took
    its place) becomes a new track (`IouTracker.renew`), so one person's labels never pass to another.
    Pass `tracker` to keep tracks (and their ids) across pipelines, e.g. when models are reloaded.
    """

    def __init__(
        self,
        detector: FaceDetector,
        classifier: AttributeClassifier,
        *,
        track: bool = True,
        reclassify_every: int = 10,
        gender: bool = True,
        detect_every: int = 1,
        max_detect_interval: int | None = None,
        tracker: IouTracker | None = None,
        check_appearance: bool = True,
    ) -> None:
        self.detector = detector
        self.check_appearance = check_appearance
        self.classifier = classifier
        self.track = track
        self.reclassify_every = max(1, int(reclassify_every))
        self.gender = gender
        self.tasks = {t for t in classifier.tasks if gender or t != "gender"}
        self.detect_every = max(1, int(detect_every)) if track else 1
        self.max_detect_interval = max(self.detect_every, int(max_detect_interval or 1)) if track else 1
        self.detect_interval = self.detect_every
        self.tracker = tracker if tracker is not None else IouTracker()
        self._frame_index = 0
        self._since_detect = 0
        self._detected_thumb: np.ndarray | None = None  # thumbnail of the last detected frame
        self._confirm = False  # an appearance change waits for confirmation: detect the next frame
        self._last: list[tuple[Face, tuple[float, float]]] = []  # last faces and their per-frame motion
        self.classified_last = 0  # faces sent to the classifier in the last frame (for the benchmark)
        self.detected_last = False  # the detector ran on the last frame (else its faces were tracked)

    @classmethod
    def from_settings(
        cls,
        settings,
        *,
        detector: FaceDetector | None = None,
        classifier: AttributeClassifier | None = None,
        track: bool = True,
        detect_every: int | None = None,
        max_detect_interval: int | None = None,
        tracker: IouTracker | None = None,
    ) -> Pipeline:
        """A pipeline configured by `Settings`; pass `detector` / `classifier` to share loaded models."""
        classifier = classifier or AttributeClassifier.from_dir(
            settings.models.model_dir, uncertain_threshold=settings.models.uncertain_threshold
        )
        detector = detector or create_detector(settings.detector)
        return cls(
            detector,
            classifier,
            track=track,
            reclassify_every=settings.models.reclassify_every,
            gender=settings.privacy.gender_enabled,
            detect_every=settings.detector.detect_every if detect_every is None else detect_every,
            max_detect_interval=max_detect_interval,
            tracker=tracker,
        )

    def reset(self) -> None:
        """Forget all tracks (a new stream or a seek)."""
        self.tracker.reset()
        self._frame_index = 0
        self._since_detect = 0
        self._detected_thumb = None
        self._last = []

    def process(
        self,
        frame_bgr: np.ndarray,
        *,
        source: str = "",
        frame_index: int | None = None,
        timestamp: float | None = None,
        may_detect: bool = True,
    ) -> FrameResult:
        """One frame. `may_detect=False` (the detector is busy with another stream) makes a tracked
        stream coast this frame unless it must detect (its first frame, or too long without)."""
        frame_bgr = as_bgr(frame_bgr)
        t0 = time.perf_counter()
        coast = self._should_coast(frame_bgr, may_detect)
        self.detected_last = not coast
        faces = [] if coast else self.detector.detect(frame_bgr)
        t1 = time.perf_counter()
        if coast:
            faces, t_track, t_cls = self._coast(frame_bgr.shape), time.perf_counter() - t1, 0.0
            self._since_detect += 1
            self.classified_last = 0
        elif self.track:
            faces, t_track, t_cls = self._tracked(frame_bgr, faces)
            self._since_detect = 0
        else:
            t_track = 0.0
            faces = self.classifier.classify(frame_bgr, faces, self.tasks) if faces else []
            self.classified_last = len(faces)
            t_cls = time.perf_counter() - t1
        if not self.gender:
            faces = [f.with_(gender=UNKNOWN) for f in faces]
        total = time.perf_counter() - t0
        index = self._frame_index if frame_index is None else frame_index
        self._frame_index = index + 1
        h, w = frame_bgr.shape[:2]
        return FrameResult(
            source=source,
            frame_index=index,
            timestamp=time.time() if timestamp is None else timestamp,
            faces=tuple(faces),
            timings_ms={
                "detect": (t1 - t0) * 1e3,
                "track": t_track * 1e3,
                "classify": t_cls * 1e3,
                "total": total * 1e3,
            },
            frame_size=(w, h),
        )

    def _tracked(self, frame_bgr: np.ndarray, faces: list[Face]) -> tuple[list[Face], float, float]:
        t0 = time.perf_counter()
        tracks = self.tracker.update([f.box for f in faces])
        if self.check_appearance:
            for f, tr in zip(faces, tracks, strict=True):
                self._check_appearance(frame_bgr, f, tr)
        todo = [
            i
            for i, tr in enumerate(tracks)
            if tr.needs_classification(self.reclassify_every, uncertain=self._uncertain(tr))
        ]
        t1 = time.perf_counter()
        self.classified_last = len(todo)
        if todo:
            probs = self.classifier.predict(frame_bgr, [faces[i] for i in todo], self.tasks)
            for row, i in enumerate(todo):
                tr = tracks[i]
                for task, p in probs.items():
                    tr.vote(task, p[row], quality=faces[i].score)
                tr.mark_classified()
        t2 = time.perf_counter()
        out = []
        for f, tr in zip(faces, tracks, strict=True):
            attrs = {}
            for task in self.tasks:
                vote = tr.votes.get(task)
                if vote is not None and vote.probs is not None:
                    attrs[task] = self._voted_attribute(tr, task, vote.probs)
            out.append(f.with_(track_id=tr.id, **attrs))
        if self.max_detect_interval > 1:
            n = self._since_detect + 1  # the tracker's velocity is per detection, i.e. per n frames
            self._last = [
                (f, (tr.velocity[0] / n, tr.velocity[1] / n)) for f, tr in zip(out, tracks, strict=True)
            ]
        t3 = time.perf_counter()
        return out, (t1 - t0) + (t3 - t2), t2 - t1

    def _should_coast(self, frame_bgr: np.ndarray, may_detect: bool = True) -> bool:
        """Skip the detector on this frame (report the tracked faces moved by their velocity)?"""
        if self.max_detect_interval <= 1:
            return False
        since = self._since_detect + 1  # frames since the last detection, this one included
        thumb = None
        if self._detected_thumb is None or self._confirm:
            coast = False  # the first frame; or a track's face looked like someone else's: look again now
        elif not may_detect and since < 2 * self.max_detect_interval:
            return True
        elif since >= self.max_detect_interval:
            coast = False
        elif since < self.detect_interval:
            coast = bool(self._last) or self.detect_interval > self.detect_every
        else:
            thumb = motion_thumbnail(frame_bgr)
            coast = changed_fraction(thumb, self._detected_thumb) < MOTION_MIN
        if not coast:
            self._confirm = False
            self._detected_thumb = motion_thumbnail(frame_bgr) if thumb is None else thumb
        return coast

    def _check_appearance(self, frame_bgr: np.ndarray, face: Face, track: Track) -> None:
        """Renew `track` when its face stops looking like the one it followed (`APPEARANCE_STRIKES`
        detections in a row), else fold this face into the track's appearance signature."""
        signature = self._signature(frame_bgr, face)
        if signature is None:
            return
        if track.appearance is not None and track.hits > 1:
            if appearance_distance(track.appearance, signature) > APPEARANCE_CHANGE:
                track.appearance_strikes += 1
                if track.appearance_strikes < APPEARANCE_STRIKES:
                    self._confirm = True  # detect on the next frame too, to confirm or clear it soon
                    return  # one odd frame (blur, a hand) is not another person
                self.tracker.renew(track)
            else:
                track.appearance_strikes = 0
        a = track.appearance
        track.appearance = signature if a is None else (1 - APPEARANCE_EMA) * a + APPEARANCE_EMA * signature

    def _signature(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray | None:
        """The face's appearance signature (`maskwatch.batch` replays recorded ones)."""
        return appearance_signature(frame_bgr, face.box)

    def _coast(self, shape) -> list[Face]:
        """Frames between detections (`detect_every` > 1): the last faces moved by their track's velocity."""
        h, w = shape[:2]
        moved = []
        for face, (dx, dy) in self._last:
            x1, y1, x2, y2 = face.box
            box = (max(0.0, x1 + dx), max(0.0, y1 + dy), min(float(w), x2 + dx), min(float(h), y2 + dy))
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue  # moved out of the frame
            lm = None if face.landmarks is None else [(x + dx, y + dy) for x, y in face.landmarks]
            moved.append((face.with_(box=box, landmarks=lm), (dx, dy)))
        self._last = moved
        return [f for f, _ in moved]

    def _voted_attribute(self, track: Track, task: str, probs: np.ndarray) -> Attribute:
        """The track's label with hysteresis: a decided label is kept while it is still the vote's top
        class (one odd frame makes it less confident, not `uncertain`); a new label needs the threshold."""
        attr = self.classifier.to_attribute(task, probs)
        prev = track.shown.get(task)
        if attr.label == UNCERTAIN and prev not in (None, UNCERTAIN):
            i = self.classifier.labels(task).index(prev)
            if probs[i] >= probs.max():
                attr = Attribute(prev, float(probs[i]))
        track.shown[task] = attr.label
        return attr

    def _uncertain(self, track: Track) -> bool:
        for task in self.tasks:
            vote = track.votes.get(task)
            if vote is None or vote.probs is None:
                return True
            if self.classifier.to_attribute(task, vote.probs).label == UNCERTAIN:
                return True
        return False
