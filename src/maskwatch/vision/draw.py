"""Drawing results onto frames and cutting face snapshots (no logic here, only pixels).

Example:
    >>> import numpy as np
    >>> from maskwatch.types import Attribute, Face, FrameResult
    >>> frame = np.zeros((120, 160, 3), np.uint8)
    >>> face = Face((40, 30, 90, 90), 0.9, track_id=3, mask=Attribute("no_mask", 0.93))
    >>> annotate(frame, FrameResult("cam", 0, 0.0, (face,))).shape
    (120, 160, 3)
    >>> crop_face(frame, face, margin=0.0).shape
    (60, 50, 3)
"""

from __future__ import annotations

import cv2
import numpy as np

from maskwatch.types import Face, FrameResult
from maskwatch.vision.geometry import cut, expand_box

# One colour per mask label, the same as the web app's (static/app.css: --ok, --bad, --incorrect, --unsure)
HEX_COLORS = {"mask": "#1f9d55", "no_mask": "#d93025", "incorrect": "#dd6b20", "uncertain": "#718096"}
COLORS = {k: (int(v[5:7], 16), int(v[3:5], 16), int(v[1:3], 16)) for k, v in HEX_COLORS.items()}  # BGR
TEXT_COLOR = (255, 255, 255)
MASK_TEXT = {
    "mask": "mask",
    "no_mask": "no mask",
    "incorrect": "incorrect mask",
    "uncertain": "uncertain",
}


def face_color(face: Face) -> tuple[int, int, int]:
    return COLORS.get(face.mask.label, COLORS["uncertain"])


def face_label(face: Face, *, gender: bool = True) -> list[str]:
    """Label lines, e.g. `['#3 no mask 93%', 'woman 88%']`."""
    head = f"#{face.track_id} " if face.track_id is not None else ""
    lines = [f"{head}{MASK_TEXT.get(face.mask.label, face.mask.label)} {face.mask.confidence:.0%}"]
    if gender:
        lines.append(f"{face.gender.label} {face.gender.confidence:.0%}")
    return lines


def annotate(frame_bgr: np.ndarray, result: FrameResult, *, gender: bool = True) -> np.ndarray:
    """A copy of the frame with each face's box, mask/gender labels, confidences and track id."""
    img = frame_bgr.copy()
    h, w = img.shape[:2]
    thick = max(1, round(min(h, w) / 400))
    font = cv2.FONT_HERSHEY_SIMPLEX
    for face in result.faces:
        color = face_color(face)
        x1, y1, x2, y2 = (round(v) for v in face.box)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thick + 1)
        scale = float(np.clip(face.width / 120, 0.3, max(0.4, min(h, w) / 700)))
        lines = face_label(face, gender=gender)
        sizes = [cv2.getTextSize(t, font, scale, thick) for t in lines]
        line_h = max(s[0][1] + s[1] for s in sizes) + 2
        block_w = max(s[0][0] for s in sizes) + 4
        block_h = line_h * len(lines)
        ty = y1 - block_h if y1 - block_h >= 0 else min(h - block_h, y2)  # above the box, else below
        tx = min(max(0, x1), max(0, w - block_w))
        cv2.rectangle(img, (tx, ty), (tx + block_w, ty + block_h), color, cv2.FILLED)
        for i, ((_, base), text) in enumerate(zip(sizes, lines, strict=True)):
            cv2.putText(
                img,
                text,
                (tx + 2, ty + (i + 1) * line_h - base - 1),
                font,
                scale,
                TEXT_COLOR,
                thick,
                cv2.LINE_AA,
            )
    return img


def crop_face(frame_bgr: np.ndarray, face: Face, margin: float = 0.2) -> np.ndarray:
    """The face region grown by `margin` of its size on each side, clipped to the frame (a snapshot)."""
    return cut(frame_bgr, expand_box(face.box, margin))
