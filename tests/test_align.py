"""Landmark alignment (`crop.rule = align5`): a rotated synthetic face comes out upright on the template."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from maskwatch.vision.geometry import align_crop, align_matrix, transform_points

# 112 x 112 template (right eye, left eye, nose, right mouth corner, left mouth corner), eyes level
TEMPLATE = np.array([[38.3, 51.6], [73.7, 51.6], [56.0, 71.7], [41.5, 92.3], [70.7, 92.3]])
SCALE, OFFSET, SIDE = 1.5, np.array([36.0, 30.0]), 240  # the synthetic face in the frame


def _face(angle: float) -> tuple[np.ndarray, np.ndarray]:
    """A bright face with a dark dot on each landmark, rotated by `angle` degrees (counter-clockwise) about
    the frame centre; returns (image, its 5 landmarks)."""
    lm = TEMPLATE * SCALE + OFFSET
    img = np.full((SIDE, SIDE, 3), 60, np.uint8)
    cv2.ellipse(img, (120, 130), (70, 90), 0, 0, 360, (200, 200, 200), -1, cv2.LINE_AA)
    for x, y in lm:
        cv2.circle(img, (round(x * 16), round(y * 16)), 3 * 16, (0, 0, 0), -1, cv2.LINE_AA, shift=4)
    rot = cv2.getRotationMatrix2D((SIDE / 2, SIDE / 2), angle, 1.0)
    return cv2.warpAffine(img, rot, (SIDE, SIDE), borderValue=(60, 60, 60)), transform_points(rot, lm)


def _dot(crop: np.ndarray, near: np.ndarray, radius: int = 6) -> np.ndarray:
    """Darkness-weighted centre of the dot near `near` in a crop of the bright face."""
    gray = crop.mean(axis=2)
    x0, y0 = int(round(near[0])), int(round(near[1]))
    win = gray[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    w = np.clip(200.0 - win, 0, None)
    ys, xs = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return np.array([x0 + (w * xs).sum() / w.sum(), y0 + (w * ys).sum() / w.sum()])


@pytest.mark.parametrize("angle", [30.0, -30.0, 0.0])
def test_rotated_face_aligns_upright_on_the_template(angle):
    img, lm = _face(angle)
    if angle:
        assert abs(lm[0, 1] - lm[1, 1]) > 20  # the eyes are far from level in the frame
    crop = align_crop(img, lm, TEMPLATE, (112, 112))
    assert crop.shape == (112, 112, 3)
    dots = np.array([_dot(crop, t) for t in TEMPLATE])
    assert np.abs(dots - TEMPLATE).max() < 1.5  # every landmark on its template position
    assert abs(dots[0, 1] - dots[1, 1]) < 1.0  # eyes level
    assert dots[0, 0] < dots[1, 0] and dots[2, 1] < dots[3, 1]  # not mirrored, not upside down


def test_transform_and_its_inverse():
    img, lm = _face(30.0)
    m = align_matrix(lm, TEMPLATE)
    assert m.shape == (2, 3)
    turn = cv2.getRotationMatrix2D((0, 0), 30.0, 1.0)  # the matrix of the turn `_face` applied
    angle = np.degrees(np.arctan2(m[1, 0], m[0, 0]))
    assert angle == pytest.approx(-np.degrees(np.arctan2(turn[1, 0], turn[0, 0])), abs=0.1)  # undoes it
    assert np.hypot(m[0, 0], m[1, 0]) == pytest.approx(1 / SCALE, rel=1e-3)
    fwd = transform_points(m, lm)
    assert np.abs(fwd - TEMPLATE).max() < 0.01
    back = transform_points(cv2.invertAffineTransform(m), fwd)
    assert np.abs(back - lm).max() < 1e-3
    rng = np.random.default_rng(0)  # noisy landmarks: no exact fit, but forward then back is the identity
    noisy = lm + rng.normal(0, 2.0, lm.shape)
    m2 = align_matrix(noisy, TEMPLATE)
    assert (
        np.abs(transform_points(cv2.invertAffineTransform(m2), transform_points(m2, noisy)) - noisy).max()
        < 1e-3
    )
    assert np.abs(transform_points(m2, noisy) - TEMPLATE).max() < 8


def test_degenerate_landmarks():
    img, _ = _face(0.0)
    assert align_matrix(np.full((5, 2), 50.0), TEMPLATE) is None
    assert align_crop(img, np.full((5, 2), 50.0), TEMPLATE, (112, 112)) is None
