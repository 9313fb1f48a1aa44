"""Per-minute statistics accumulated in memory between database writes (no database code here: the
store's statistics section writes what `MinuteBuffer.pending` hands it)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime
from typing import Any

from maskwatch.types import FrameResult

COUNT_KEYS = ("people", "masked", "unmasked", "incorrect", "uncertain", "man", "woman")
_MASK_KEY = {"mask": "masked", "no_mask": "unmasked", "incorrect": "incorrect", "uncertain": "uncertain"}


class MinuteAccumulator:
    """People seen by one camera in one minute: distinct tracks (latest label wins) plus, for faces
    without a track id, the most seen in any single frame. `flushed`: the counts already written."""

    def __init__(self) -> None:
        self.tracks: dict[int, tuple[str, str]] = {}
        self.untracked: Counter = Counter()
        self.flushed: Counter = Counter()

    def add(self, result: FrameResult) -> None:
        untracked: Counter = Counter()
        for f in result.faces:
            if f.track_id is not None:
                self.tracks[f.track_id] = (f.mask.label, f.gender.label)
            else:
                _count(untracked, f.mask.label, f.gender.label)
        if untracked["people"] > self.untracked["people"]:
            self.untracked = untracked

    def counts(self) -> Counter:
        c = Counter(self.untracked)
        for mask, gender in self.tracks.values():
            _count(c, mask, gender)
        return c


def _count(c: Counter, mask: str, gender: str) -> None:
    c["people"] += 1
    c[_MASK_KEY[mask]] += 1
    if gender in ("man", "woman"):
        c[gender] += 1


def with_compliance(d: dict[str, int]) -> dict[str, Any]:
    """Compliance = masked / (masked + unmasked + incorrect): a mask worn incorrectly does not comply."""
    decided = d["masked"] + d["unmasked"] + d["incorrect"]
    return {**d, "compliance": (d["masked"] / decided) if decided else None}


# ((camera, minute), its accumulator, its counts when handed out)
Pending = tuple[tuple[str, datetime], MinuteAccumulator, Counter]


class MinuteBuffer:
    """Camera-minutes not yet (fully) written. Thread-safe.

    >>> from datetime import UTC, datetime
    >>> from maskwatch.types import Attribute, Face, FrameResult
    >>> t = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    >>> buf = MinuteBuffer(flush_every_s=10.0, now=t)
    >>> face = Face(box=(0, 0, 9, 9), score=0.9, track_id=1, mask=Attribute("mask", 0.9))
    >>> buf.add("door", t, FrameResult(source="door", frame_index=0, timestamp=0.0, faces=(face,)), at=t)
    False
    >>> [(key[0], counts["people"], counts["masked"]) for key, _, counts in buf.pending(now=t)]
    [('door', 1, 1)]
    """

    def __init__(self, *, flush_every_s: float, now: datetime):
        self.flush_every_s = flush_every_s
        self._lock = threading.Lock()
        self._minutes: dict[tuple[str, datetime], MinuteAccumulator] = {}
        self._last_flush = now

    def add(self, camera: str, minute: datetime, result: FrameResult, *, at: datetime) -> bool:
        """Count one frame seen at `at` into (camera, minute). True when a write is due: a minute has
        ended or `flush_every_s` passed since the last write."""
        key = (camera, minute)
        with self._lock:
            acc = self._minutes.get(key)
            if acc is None:
                acc = self._minutes[key] = MinuteAccumulator()
            acc.add(result)
            return len(self._minutes) > 1 or (at - self._last_flush).total_seconds() >= self.flush_every_s

    def pending(self, *, now: datetime) -> list[Pending]:
        """What to write now (a write starts: the flush interval restarts)."""
        with self._lock:
            self._last_flush = now
            return [(key, acc, acc.counts()) for key, acc in self._minutes.items()]

    def written(self, pending: list[Pending], *, current: datetime) -> None:
        """`pending` is in the database: remember its counts; minutes before `current` leave."""
        with self._lock:
            for key, acc, counts in pending:
                acc.flushed = counts
                if key[1] < current and self._minutes.get(key) is acc:
                    del self._minutes[key]

    def cameras(self) -> set[str]:
        with self._lock:
            return {cam for cam, _ in self._minutes}
