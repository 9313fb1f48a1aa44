"""Box geometry shared by the tracker, the classifier crops and drawing. Boxes are (x1, y1, x2, y2).

Example:
    >>> import numpy as np
    >>> iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]])).round(3)
    array([[0.333]])
    >>> expand_box((10, 10, 30, 20), margin=0.5, square=True)
    (0.0, -5.0, 40.0, 35.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Box = tuple[float, float, float, float]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection-over-union of boxes `a` (N, 4) and `b` (M, 4) -> (N, M)."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    return float(iou_matrix(np.asarray(a)[None], np.asarray(b)[None])[0, 0])


def area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def expand_box(box: Sequence[float], margin: float = 0.0, *, square: bool = False) -> Box:
    """`box` grown by `margin` of its width/height on each side; made square around its centre if asked."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = w * (1 + 2 * margin), h * (1 + 2 * margin)
    if square:
        w = h = max(w, h)
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def crop_resize(image: np.ndarray, box: Sequence[float], size: tuple[int, int]) -> np.ndarray:
    """The region `box` of `image` resized to `size` (width, height); outside pixels repeat the edge."""
    w_out, h_out = size
    x1, y1, x2, y2 = (float(v) for v in box)
    sx, sy = w_out / max(x2 - x1, 1e-6), h_out / max(y2 - y1, 1e-6)
    if sx < 0.5 or sy < 0.5:  # strong shrink: cut (with edge padding) then INTER_AREA to avoid aliasing
        return cv2.resize(cut(image, box, border=cv2.BORDER_REPLICATE), size, interpolation=cv2.INTER_AREA)
    m = np.array([[sx, 0, -x1 * sx], [0, sy, -y1 * sy]], dtype=np.float64)
    return cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def cut(image: np.ndarray, box: Sequence[float], *, border: int | None = None) -> np.ndarray:
    """Integer-pixel region of `image`; outside parts are padded with `border` (or clipped when None)."""
    h, w = image.shape[:2]
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    x2, y2 = max(int(np.ceil(box[2])), x1 + 1), max(int(np.ceil(box[3])), y1 + 1)
    cx1, cy1, cx2, cy2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if cx2 <= cx1 or cy2 <= cy1:
        return np.zeros((max(1, y2 - y1), max(1, x2 - x1)) + image.shape[2:], image.dtype)
    region = image[cy1:cy2, cx1:cx2]
    if border is None:
        return region.copy()
    return cv2.copyMakeBorder(region, cy1 - y1, y2 - cy2, cx1 - x1, x2 - cx2, border)


def align_matrix(
    landmarks: Sequence[Sequence[float]], template: Sequence[Sequence[float]]
) -> np.ndarray | None:
    """The 2x3 similarity transform (rotation, uniform scale, shift) taking the 5 `landmarks` (frame pixels)
    onto `template` (crop pixels), as `align_crop` warps; None if degenerate. Its inverse
    (`cv2.invertAffineTransform`) maps crop pixels back into the frame."""
    src = np.asarray(landmarks, dtype=np.float32).reshape(-1, 2)
    dst = np.asarray(template, dtype=np.float32).reshape(-1, 2)
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    return m


def transform_points(m: np.ndarray, points: Sequence[Sequence[float]]) -> np.ndarray:
    """Points (N, 2) mapped by a 2x3 affine matrix."""
    m = np.asarray(m, dtype=np.float64)
    return np.asarray(points, dtype=np.float64).reshape(-1, 2) @ m[:, :2].T + m[:, 2]


def align_crop(
    image: np.ndarray,
    landmarks: Sequence[Sequence[float]],
    template: Sequence[Sequence[float]],
    size: tuple[int, int],
) -> np.ndarray | None:
    """Similarity-warp `image` so the 5 `landmarks` land on `template` (output pixels); None if degenerate."""
    m = align_matrix(landmarks, template)
    if m is None:
        return None
    return cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
