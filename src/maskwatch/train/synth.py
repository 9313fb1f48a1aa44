"""Synthetic face masks drawn from the 5 face landmarks, the way public masked-face sets were made.

A mask shape covers nose, mouth and chin: its top edge sits on the nose bridge (between the eyes and the
nose tip), its bottom wraps under the chin, its sides reach toward the cheeks. Shapes (surgical, N95,
cloth), colors, textures (pleats, stripes, noise, prints), shading, ear loops and the exact placement vary
at random. Landmarks are (right eye, left eye, nose, right mouth corner, left mouth corner) in image order,
as YuNet gives them.

Example:
    >>> import numpy as np
    >>> img = np.full((112, 112, 3), 180, np.uint8)
    >>> lm = DEFAULT_LANDMARKS_112
    >>> out = draw_mask(img, lm, np.random.default_rng(0))
    >>> out.shape == img.shape and bool((out != img).any())
    True
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from maskwatch.train.data import DEFAULT_LANDMARKS

DEFAULT_LANDMARKS_112 = DEFAULT_LANDMARKS * 112

PALETTE = [
    (168, 208, 230),  # surgical light blue (RGB)
    (140, 190, 220),
    (120, 170, 210),
    (240, 240, 240),  # white
    (250, 250, 245),
    (30, 30, 30),  # black
    (60, 60, 70),
    (128, 128, 128),  # gray
    (190, 190, 190),
    (170, 210, 190),  # surgical green
    (235, 190, 200),  # pink
    (40, 50, 90),  # navy
    (200, 180, 150),  # beige
]


# Where the mask's top edge sits, in eye-to-mouth distances below the eyes: over the nose bridge when
# worn properly; below the nose tip or under the mouth when worn wrongly (which counts as `no_mask`).
# (The nose tip is at ~0.5, the nostrils ~0.6, the mouth at 1.0; masks pulled down to just under the
# nostrils are the common wrong way in crowd photos.)
TOP_EDGE = {"correct": (0.32, 0.55), "below_nose": (0.6, 0.82), "chin": (1.12, 1.25)}


def _outline(
    lm: np.ndarray, rng: np.random.Generator, shape: str, worn: str = "correct"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Polygon (N, 2) of the mask plus its frame (top centre, down vector, across unit vector)."""
    re, le, nose, rm, lmo = lm
    eye_c = (re + le) / 2
    mouth_c = (rm + lmo) / 2
    down = mouth_c - eye_c
    L = float(np.hypot(*down))
    if L < 1e-3:
        down = np.array([0.0, 1.0]) * max(np.hypot(*(le - re)), 1.0)
        L = float(np.hypot(*down))
    across = le - re
    de = float(np.hypot(*across))
    across = across / max(de, 1e-3)
    de = max(de, 0.6 * L)
    # yaw: the nose tip is off the eye-mouth axis; shift the mask's centre line toward it a little
    yaw_shift = float(np.dot(nose - (eye_c + 0.55 * down), across))
    t_top = rng.uniform(*TOP_EDGE[worn])
    t_chin = rng.uniform(1.55, 1.95)
    top = eye_c + t_top * down + across * yaw_shift * 0.5
    chin = eye_c + t_chin * down + across * yaw_shift * 0.3
    w_top = de * rng.uniform(0.85, 1.1)
    w_mid = de * rng.uniform(1.05, 1.3)
    w_bot = de * rng.uniform(0.45, 0.75)
    asym = rng.uniform(-0.12, 0.12) * de  # one side wider (pose)
    n = 14
    s = np.linspace(0, 1, n)
    if shape == "n95":
        prof = w_top * 0.8 + (w_mid - w_top * 0.8) * np.sin(np.pi * np.clip(s * 1.1, 0, 1)) ** 0.7
        prof = np.where(s > 0.6, w_mid + (w_bot - w_mid) * np.clip((s - 0.6) / 0.4, 0, 1) ** 1.5, prof)
    elif shape == "cloth":
        prof = w_top + (w_mid - w_top) * np.sin(np.pi / 2 * np.clip(s / 0.5, 0, 1))
        prof = np.where(s > 0.5, w_mid + (w_bot - w_mid) * np.clip((s - 0.5) / 0.5, 0, 1) ** 2, prof)
    else:  # surgical: nearly rectangular, narrower at the chin
        prof = w_top + (w_mid - w_top) * np.clip(s / 0.3, 0, 1)
        prof = np.where(s > 0.7, w_mid + (w_bot - w_mid) * np.clip((s - 0.7) / 0.3, 0, 1) ** 1.2, prof)
    centre = top[None] + s[:, None] * (chin - top)[None]
    left = centre + across[None] * (prof[:, None] + asym)
    right = centre - across[None] * (prof[:, None] - asym)
    if shape == "n95":  # pointed nose bridge
        top_pt = top - (chin - top) * 0.08
        poly = np.concatenate([[top_pt], left, right[::-1]])
    else:
        sag = (chin - top) * rng.uniform(-0.03, 0.05)  # slightly curved top edge
        poly = np.concatenate([[top + sag], left, right[::-1]])
    return poly, top, chin - top, across


def draw_mask(
    image: np.ndarray,
    landmarks: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    rgb: bool = True,
    worn: str = "correct",
) -> np.ndarray:
    """A copy of `image` (H, W, 3 uint8) with a synthetic mask over nose, mouth and chin, or, with
    `worn` = `below_nose` / `chin`, a mask worn wrongly (nose, or nose and mouth, left bare)."""
    rng = rng if rng is not None else np.random.default_rng()
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    H, W = image.shape[:2]
    shape = str(rng.choice(["surgical", "surgical", "n95", "cloth"]))
    poly, top, vert, across = _outline(lm, rng, shape, worn)
    # work inside the polygon's bounding box only (fast on large frames)
    pad = 3
    x0, y0 = max(0, int(np.floor(poly[:, 0].min())) - pad), max(0, int(np.floor(poly[:, 1].min())) - pad)
    x1, y1 = min(W, int(np.ceil(poly[:, 0].max())) + pad), min(H, int(np.ceil(poly[:, 1].max())) + pad)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image.copy()
    full = image
    image = full[y0:y1, x0:x1]
    offset = np.array([x0, y0], np.float64)
    poly, top = poly - offset, top - offset
    h, w = image.shape[:2]
    ss = 4  # supersampled polygon for smooth edges
    alpha = np.zeros((h, w), np.uint8)
    cv2.fillPoly(alpha, [np.round(poly * ss).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
    if not alpha.any():
        return full.copy()  # the polygon fell outside the image
    k = max(1, int(round(min(H, W) / 150))) * 2 + 1
    alpha_f = cv2.GaussianBlur(alpha, (k, k), 0).astype(np.float32) / 255.0

    # base color and texture
    color = np.array(PALETTE[rng.integers(len(PALETTE))], np.float32)
    if rng.random() < 0.25:
        color = rng.uniform(20, 240, 3).astype(np.float32)
    if not rgb:
        color = color[::-1]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    v = ((xx - top[0]) * vert[0] + (yy - top[1]) * vert[1]) / max(float(vert @ vert), 1e-3)  # 0 top .. 1 chin
    u = (xx - top[0]) * across[0] + (yy - top[1]) * across[1]
    layer = np.broadcast_to(color, (h, w, 3)).copy()
    tex = rng.random()
    scale_px = float(np.hypot(*vert))
    if shape == "surgical" and tex < 0.7:  # pleats
        n_pl = rng.integers(2, 4)
        for i in range(n_pl):
            c = 0.35 + 0.5 * i / max(n_pl - 1, 1)
            band = np.exp(-(((v - c) * scale_px / max(scale_px * 0.025, 0.6)) ** 2))
            layer *= (1 - 0.25 * band)[..., None]
    elif tex < 0.3:  # stripes or checks
        period = scale_px * rng.uniform(0.08, 0.25)
        ang = rng.uniform(0, np.pi)
        coord = u * np.cos(ang) + v * scale_px * np.sin(ang)
        stripes = (np.sin(coord / max(period, 1.0) * 2 * np.pi) > 0).astype(np.float32)
        color2 = rng.uniform(0, 255, 3).astype(np.float32)
        layer = layer * (1 - stripes[..., None]) + color2 * stripes[..., None]
    elif tex < 0.45:  # dots print
        period = max(scale_px * rng.uniform(0.1, 0.2), 2.0)
        dots = ((np.sin(u / period * 2 * np.pi) + np.sin(v * scale_px / period * 2 * np.pi)) > 1.3).astype(
            np.float32
        )
        color2 = rng.uniform(0, 255, 3).astype(np.float32)
        layer = layer * (1 - dots[..., None]) + color2 * dots[..., None]
    # fabric noise and shading (lit from the top, darker under the chin and at the sides)
    noise = rng.normal(0, rng.uniform(2, 10), (h, w, 1)).astype(np.float32)
    side = np.clip(np.abs(u) / max(scale_px, 1.0), 0, 1.5)
    shade = 1.0 + rng.uniform(0.0, 0.15) - rng.uniform(0.1, 0.3) * np.clip(v, 0, 1.2) ** 2 - 0.15 * side**2
    # carry some of the underlying light: masks are shaded like the face they cover
    lum = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if rgb else cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    lum_mean = float((lum * alpha_f).sum() / max(alpha_f.sum(), 1e-3))
    light = 1.0 + rng.uniform(0.1, 0.5) * (lum - lum_mean)
    layer = np.clip(layer * (shade * light)[..., None] + noise, 0, 255)

    out = full.copy()
    blended = image.astype(np.float32) * (1 - alpha_f[..., None]) + layer * alpha_f[..., None]
    out[y0:y1, x0:x1] = np.clip(blended, 0, 255).astype(np.uint8)
    # ear loops from the top corners toward the ears
    if rng.random() < 0.5 and shape != "n95":
        loop_col = tuple(float(c) for c in np.clip(color * 0.95, 0, 255))
        thick = max(1, int(round(scale_px / 40)))
        top_full = top + offset
        for sign in (1, -1):
            a = top_full + across * sign * np.hypot(*(lm[1] - lm[0])) * 1.05 + vert * 0.1
            b = a + across * sign * scale_px * 0.35 - vert * 0.25
            pa, pb = tuple(int(v) for v in np.round(a)), tuple(int(v) for v in np.round(b))
            cv2.line(out, pa, pb, loop_col, thick, cv2.LINE_AA)
    return out


def occlude(image: np.ndarray, source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of `image` with part of the face hidden by something that is not a mask: a patch of
    `source` (another photo: a head in front, a hand, a phone, a camera) with a soft edge.

    Used on unmasked faces, which stay `no_mask`: hiding the mouth is not wearing a mask.
    """
    h, w = image.shape[:2]
    ph, pw = int(h * rng.uniform(0.25, 0.6)), int(w * rng.uniform(0.25, 0.7))
    sy, sx = rng.integers(0, source.shape[0] - ph + 1), rng.integers(0, source.shape[1] - pw + 1)
    patch = source[sy : sy + ph, sx : sx + pw].astype(np.float32)
    # mostly over the lower face or a side, where crowds and hands hide faces
    y = int(rng.uniform(0.5, 0.95) * h - ph / 2)
    x = int(rng.uniform(0.15, 0.85) * w - pw / 2)
    y0, x0 = max(0, y), max(0, x)
    y1, x1 = min(h, y + ph), min(w, x + pw)
    if y1 - y0 < 2 or x1 - x0 < 2:
        return image.copy()
    patch = patch[y0 - y : y1 - y, x0 - x : x1 - x]
    alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
    if rng.random() < 0.5:  # rounded (head, hand) or rectangular (phone, paper)
        ax, ay = max(1, (x1 - x0) // 2), max(1, (y1 - y0) // 2)
        cv2.ellipse(alpha, (ax, ay), (ax, ay), 0, 0, 360, 1.0, -1)
    else:
        alpha[:] = 1.0
    k = max(3, (min(h, w) // 40) * 2 + 1)
    alpha = cv2.GaussianBlur(alpha, (k, k), 0)[..., None]
    out = image.copy()
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(region * (1 - alpha) + patch * alpha, 0, 255).astype(np.uint8)
    return out


# ------------------------------------------------------------------------- framing of masked faces
# How the detector boxes a face once it wears a mask properly, relative to the same face bare, as the `box`
# crop rule (margin 0.2, square) sees it: the crop centre moves by `shift` (x, y; in crop sides; y < 0 is
# up: the chin is hidden) and its side by exp(`log_scale`). Medians over bare faces of two training sets
# (loose UTKFace photos and tight facemask12k crops), with the app's photo detector:
#   python -m maskwatch.train.synth 1200 ../shared/data/gender/utkface ../shared/data/mask/facemask12k/train
# Cards of two-head models carry it (`crop.masked_faces`): the gender head learnt masked faces from masks
# drawn on crops of bare faces, so it reads a face called masked from a crop moved back to that framing.
MASKED_FACE_BOX = {"shift": [0.001, -0.083], "log_scale": -0.022}


def measure_masked_box(images: Iterable[np.ndarray], detector, seed: int = 0) -> np.ndarray:
    """Rows (dx, dy, log side ratio) as in `MASKED_FACE_BOX`, one per BGR photo whose largest face the
    `detector` (the app's photo detector) finds both bare and with a mask drawn on."""
    from maskwatch.vision.geometry import expand_box

    def crop_square(box) -> np.ndarray:
        x1, y1, x2, y2 = expand_box(box, 0.2, square=True)
        return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1])

    rows = []
    for k, img in enumerate(images):
        faces = detector.detect(img)
        if not faces:
            continue
        bare = max(faces, key=lambda f: f.width * f.height)
        if bare.landmarks is None:
            continue
        masked = draw_mask(img, np.asarray(bare.landmarks), np.random.default_rng([seed, k]), rgb=False)
        found = detector.detect(masked)
        if not found:
            continue
        same = min(found, key=lambda f: float(np.hypot(f.box[0] - bare.box[0], f.box[1] - bare.box[1])))
        c0, c1 = crop_square(bare.box), crop_square(same.box)
        rows.append([(c1[0] - c0[0]) / c0[2], (c1[1] - c0[1]) / c0[2], np.log(c1[2] / c0[2])])
    return np.array(rows, np.float64).reshape(-1, 3)


def masked_face_box(rows: np.ndarray) -> dict:
    """`MASKED_FACE_BOX` from `measure_masked_box` rows: medians (a few faces are boxed very differently
    once masked, e.g. found again only by the border retry)."""
    med = np.median(rows, axis=0)
    return {"shift": [round(float(med[0]), 3), round(float(med[1]), 3)], "log_scale": round(float(med[2]), 3)}


if __name__ == "__main__":  # python -m maskwatch.train.synth N DIR [DIR ...]: MASKED_FACE_BOX
    import json
    import sys

    from maskwatch.train.data import list_images, photo_detector, read_image_or_none

    n, folders = int(sys.argv[1]), sys.argv[2:]
    paths = []  # N bare faces of each folder
    for d in folders:
        bare = [p for p, label in list_images(d) if label in ("no_mask", "man", "woman")]
        pick = np.random.default_rng(1).choice(len(bare), min(n, len(bare)), replace=False)
        paths += [bare[i] for i in pick]
    images = (im for im in map(read_image_or_none, paths) if im is not None)
    rows = measure_masked_box(images, photo_detector())
    print(json.dumps({"faces": len(rows), **masked_face_box(rows)}))
