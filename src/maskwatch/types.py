"""The one data type that flows through maskwatch: a `FrameResult` holding `Face`s.

Example:
    >>> from maskwatch.types import Attribute, Face
    >>> f = Face(box=(10, 20, 110, 140), score=0.93, mask=Attribute("mask", 0.98))
    >>> f.width, f.height, f.mask.label
    (100.0, 120.0, 'mask')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

MASK_LABELS = ("mask", "no_mask", "incorrect", "uncertain")  # incorrect: nose or mouth uncovered
GENDER_LABELS = ("man", "woman", "uncertain")
UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class Attribute:
    """A label with its confidence in [0, 1]; `uncertain` is a real answer."""

    label: str
    confidence: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence}")


UNKNOWN = Attribute(UNCERTAIN, 0.0)


@dataclass(frozen=True)
class Face:
    """One detected face. `box` is (x1, y1, x2, y2) in frame pixels."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...] | None = None
    track_id: int | None = None
    mask: Attribute = UNKNOWN
    gender: Attribute = UNKNOWN

    def __post_init__(self) -> None:
        x1, y1, x2, y2 = (float(v) for v in self.box)
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"box must have x2 > x1 and y2 > y1, got {self.box}")
        object.__setattr__(self, "box", (x1, y1, x2, y2))
        object.__setattr__(self, "score", float(self.score))
        if self.landmarks is not None:
            pts = np.asarray(self.landmarks, dtype=float).reshape(-1, 2)
            if pts.shape != (5, 2):
                raise ValueError(f"landmarks must be 5x2, got {pts.shape}")
            object.__setattr__(self, "landmarks", tuple((float(x), float(y)) for x, y in pts))
        if self.mask.label not in MASK_LABELS:
            raise ValueError(f"mask label must be one of {MASK_LABELS}, got {self.mask.label!r}")
        if self.gender.label not in GENDER_LABELS:
            raise ValueError(f"gender label must be one of {GENDER_LABELS}, got {self.gender.label!r}")

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def with_(self, **changes: Any) -> Face:
        """A copy with some fields changed (the dataclass is frozen)."""
        return replace(self, **changes)

    def to_dict(self, *, gender: bool = True) -> dict[str, Any]:
        """JSON-ready dict; `gender=False` drops apparent gender (privacy setting)."""
        d = asdict(self)
        d["box"] = [round(v, 1) for v in self.box]
        d["score"] = round(self.score, 4)
        if self.landmarks is not None:
            d["landmarks"] = [[round(x, 1), round(y, 1)] for x, y in self.landmarks]
        for key in ("mask", "gender"):
            d[key]["confidence"] = round(d[key]["confidence"], 4)
        if not gender:
            del d["gender"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Face:
        return cls(
            box=tuple(d["box"]),
            score=d["score"],
            landmarks=d.get("landmarks"),
            track_id=d.get("track_id"),
            mask=Attribute(**d["mask"]) if "mask" in d else UNKNOWN,
            gender=Attribute(**d["gender"]) if "gender" in d else UNKNOWN,
        )


@dataclass(frozen=True)
class FrameResult:
    """Everything the pipeline found in one frame, plus per-stage timings in milliseconds."""

    source: str
    frame_index: int
    timestamp: float
    faces: tuple[Face, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)
    frame_size: tuple[int, int] | None = None  # (width, height)

    def __post_init__(self) -> None:
        object.__setattr__(self, "faces", tuple(self.faces))

    def to_dict(self, *, gender: bool = True) -> dict[str, Any]:
        return {
            "source": self.source,
            "frame_index": self.frame_index,
            "timestamp": round(self.timestamp, 3),
            "frame_size": list(self.frame_size) if self.frame_size else None,
            "faces": [f.to_dict(gender=gender) for f in self.faces],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }
