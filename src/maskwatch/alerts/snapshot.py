"""The snapshot JPEG of an alert: the frame with the person's box drawn, faces blurred in privacy mode."""

from __future__ import annotations

import cv2
import numpy as np

from maskwatch.types import Face

RED = (40, 40, 230)  # BGR


def blur_faces(frame: np.ndarray, faces: tuple[Face, ...] | list[Face], margin: float = 0.15) -> None:
    """Pixelate every face box in place (coarse enough that a face cannot be recognised)."""
    h, w = frame.shape[:2]
    for f in faces:
        x1, y1, x2, y2 = f.box
        mx, my = (x2 - x1) * margin, (y2 - y1) * margin
        x1, y1 = max(int(x1 - mx), 0), max(int(y1 - my), 0)
        x2, y2 = min(int(x2 + mx), w), min(int(y2 + my), h)
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        roi = frame[y1:y2, x1:x2]
        small = cv2.resize(
            roi, (max(1, (x2 - x1) // 12), max(1, (y2 - y1) // 12)), interpolation=cv2.INTER_AREA
        )
        frame[y1:y2, x1:x2] = cv2.resize(small, (x2 - x1, y2 - y1), interpolation=cv2.INTER_NEAREST)


def make_snapshot(
    frame_bgr: np.ndarray,
    face: Face,
    faces: tuple[Face, ...] | list[Face] = (),
    *,
    blur: bool = False,
    label: str | None = None,
    max_side: int = 1280,
    quality: int = 85,
) -> bytes:
    """JPEG bytes of `frame_bgr` (not modified) with `face`'s box drawn; with `blur`, all `faces`
    (and `face`) pixelated first. Frames larger than `max_side` are scaled down."""
    img = frame_bgr.copy()
    if blur:
        blur_faces(img, [*faces, face])
    h, w = img.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    x1, y1, x2, y2 = (round(v * scale) for v in face.box)
    thick = max(2, round(max(img.shape[:2]) / 400))
    cv2.rectangle(img, (x1, y1), (x2, y2), RED, thick)
    words = "mask worn incorrectly" if face.mask.label == "incorrect" else "no mask"
    text = label or f"{words} {face.mask.confidence:.0%}"
    size = max(0.5, max(img.shape[:2]) / 1200)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, 1)
    ty = y1 - 4 if y1 - th - base - 4 > 0 else y2 + th + 4
    cv2.rectangle(img, (x1, ty - th - base), (x1 + tw + 4, ty + base), RED, -1)
    cv2.putText(img, text, (x1 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, size, (255, 255, 255), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
