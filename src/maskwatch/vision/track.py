"""A small IoU + centroid tracker with per-track label voting (numpy only).

Stable ids come from greedy matching of each frame's detections to live tracks, by overlap, falling
back to centre distance for fast motion. Each track keeps a confidence-weighted exponential moving
average of its class probabilities per task (`Vote`), so labels do not flicker, and remembers when
and where it was last classified, so the pipeline re-classifies only when needed.

Example:
    >>> t = IouTracker(ids=itertools.count(1))
    >>> [tr.id for tr in t.update([(0, 0, 50, 50), (100, 0, 150, 50)])]
    [1, 2]
    >>> [tr.id for tr in t.update([(104, 2, 154, 52), (3, 1, 53, 51)])]
    [2, 1]

Track ids come from one process-wide counter by default, so they are unique across every stream and
tracker of the process for its whole life (alert state is keyed by them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from maskwatch.vision.geometry import Box, area, iou, iou_matrix

# next() on itertools.count is atomic under the GIL: threads may share it
PROCESS_TRACK_IDS: Iterator[int] = itertools.count(1)


class Vote:
    """Confidence-weighted exponential moving average of class probabilities.

    Each observation counts with weight = `quality` x how far its top probability is above chance;
    older observations decay by `decay` per new one, so a real change (a mask put on) wins within a
    few observations while single-frame noise does not flip the label.

    Example:
        >>> v = Vote()
        >>> for p in ([0.9, 0.1], [0.95, 0.05], [0.4, 0.6]):
        ...     v.add(p)
        >>> int(np.argmax(v.probs)), v.count
        (0, 3)
    """

    def __init__(self, decay: float = 0.7) -> None:
        self.decay = decay
        self._sum: np.ndarray | None = None
        self._weight = 0.0
        self.count = 0

    def add(self, probs: Sequence[float], quality: float = 1.0) -> None:
        p = np.asarray(probs, dtype=float)
        n = len(p)
        margin = (p.max() - 1.0 / n) * n / max(n - 1, 1)  # 0 at chance, 1 when certain
        w = max(quality, 1e-3) * (0.05 + margin)
        if self._sum is None:
            self._sum = np.zeros(n)
        self._sum = self.decay * self._sum + w * p
        self._weight = self.decay * self._weight + w
        self.count += 1

    @property
    def probs(self) -> np.ndarray | None:
        return None if self._sum is None else self._sum / self._weight


@dataclass
class Track:
    """One tracked face. `box` is the latest matched detection box."""

    id: int
    box: Box
    hits: int = 1
    missed: int = 0
    age: int = 0  # frames since the track was born
    classified_box: Box | None = None
    since_classified: int = 0  # frames since the last classification
    votes: dict[str, Vote] = field(default_factory=dict)
    shown: dict[str, str] = field(default_factory=dict)  # last label reported per task (for hysteresis)
    velocity: tuple[float, float] = (0.0, 0.0)  # centre motion per frame (smoothed)
    appearance: np.ndarray | None = None  # smoothed appearance signature of the face (see Pipeline)
    appearance_strikes: int = 0  # detections in a row that did not look like `appearance`

    def vote(self, task: str, probs: Sequence[float], quality: float = 1.0) -> None:
        self.votes.setdefault(task, Vote()).add(probs, quality)

    def mark_classified(self) -> None:
        self.classified_box = self.box
        self.since_classified = 0

    def needs_classification(
        self,
        every: int,
        *,
        uncertain: bool = False,
        uncertain_every: int = 2,
        max_uncertain_votes: int = 6,
        min_iou: float = 0.5,
        max_growth: float = 1.5,
    ) -> bool:
        """Whether to classify this track's face in the current frame.

        Yes when it was never classified, `every` frames passed, its box moved (IoU < `min_iou`) or
        grew (area x `max_growth`) since the last classification, or its vote is still `uncertain`
        (then every `uncertain_every` frames, for the first `max_uncertain_votes` votes).
        """
        if self.classified_box is None or self.since_classified >= every:
            return True
        votes = max((v.count for v in self.votes.values()), default=0)
        if uncertain and votes < max_uncertain_votes and self.since_classified >= uncertain_every:
            return True
        if iou(self.box, self.classified_box) < min_iou:
            return True
        return area(self.box) > max_growth * area(self.classified_box)


class IouTracker:
    """Greedy IoU / centroid tracker.

    A detection joins the live track it overlaps most (IoU >= `iou_threshold`), or, failing that, the
    nearest track whose centre is within `max_center_dist` box sizes and whose size is within a factor
    `max_scale_change`. Unmatched detections start new tracks; tracks unseen for more than `max_missed`
    frames are dropped. Ids are never reused: they come from `ids` (default: the process-wide counter).
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        max_missed: int = 15,
        max_center_dist: float = 0.75,
        max_scale_change: float = 1.6,
        ids: Iterator[int] | None = None,
    ) -> None:
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.max_center_dist = max_center_dist
        self.max_scale_change = max_scale_change
        self.tracks: list[Track] = []
        self._ids = PROCESS_TRACK_IDS if ids is None else ids

    def reset(self) -> None:
        """Forget every track (ids keep counting: a later track never reuses an old id)."""
        self.tracks.clear()

    def renew(self, track: Track) -> None:
        """Another face took `track`'s place: it becomes a new track (new id, no votes) at the same box."""
        track.id = next(self._ids)
        track.hits, track.age = 1, 0
        track.classified_box, track.since_classified = None, 0
        track.votes.clear()
        track.shown.clear()
        track.velocity = (0.0, 0.0)
        track.appearance, track.appearance_strikes = None, 0

    def forget_votes(self) -> None:
        """Keep the tracks (ids, boxes) but drop their votes: the models changed."""
        for t in self.tracks:
            t.votes.clear()
            t.shown.clear()
            t.classified_box = None

    def _similarity(self, dets: np.ndarray, trks: np.ndarray) -> np.ndarray:
        """(N, M) matching score, -1 where a pair may not match. IoU first, centre distance second."""
        ious = iou_matrix(dets, trks)
        dc = ((dets[:, None, :2] + dets[:, None, 2:]) - (trks[None, :, :2] + trks[None, :, 2:])) / 2
        dist = np.hypot(dc[..., 0], dc[..., 1])
        size_d = np.sqrt((dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1]))
        size_t = np.sqrt((trks[:, 2] - trks[:, 0]) * (trks[:, 3] - trks[:, 1]))
        ratio = np.maximum(size_d[:, None], size_t[None, :]) / np.maximum(
            np.minimum(size_d[:, None], size_t[None]), 1e-6
        )
        norm_dist = dist / np.maximum((size_d[:, None] + size_t[None, :]) / 2, 1e-6)
        near = (norm_dist <= self.max_center_dist) & (ratio <= self.max_scale_change)
        score = np.where(ious >= self.iou_threshold, 1.0 + ious, np.where(near, 1.0 - norm_dist, -1.0))
        return score

    def update(self, boxes: Sequence[Sequence[float]]) -> list[Track]:
        """Match this frame's detection `boxes`; returns one `Track` per box, in the same order."""
        dets = np.asarray(boxes, dtype=float).reshape(-1, 4)
        for t in self.tracks:
            t.age += 1
            t.since_classified += 1
        assigned: list[Track | None] = [None] * len(dets)
        if len(dets) and self.tracks:
            score = self._similarity(dets, np.array([t.box for t in self.tracks], dtype=float))
            order = np.dstack(np.unravel_index(np.argsort(-score, axis=None), score.shape))[0]
            used_t: set[int] = set()
            for di, ti in order:
                if score[di, ti] < 0:
                    break
                if assigned[di] is not None or ti in used_t:
                    continue
                assigned[di] = self.tracks[ti]
                used_t.add(int(ti))
        matched = {id(t) for t in assigned if t is not None}
        for t in self.tracks:
            if id(t) not in matched:
                t.missed += 1
        for i, t in enumerate(assigned):
            box = tuple(float(v) for v in dets[i])
            if t is None:
                t = Track(id=next(self._ids), box=box)
                self.tracks.append(t)
                assigned[i] = t
            else:
                steps = t.missed + 1
                dx = ((box[0] + box[2]) - (t.box[0] + t.box[2])) / 2 / steps
                dy = ((box[1] + box[3]) - (t.box[1] + t.box[3])) / 2 / steps
                a = 1.0 if t.hits == 1 else 0.5  # first motion as is, then a moving average
                t.velocity = ((1 - a) * t.velocity[0] + a * dx, (1 - a) * t.velocity[1] + a * dy)
                t.box, t.hits, t.missed = box, t.hits + 1, 0
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return assigned  # type: ignore[return-value]
