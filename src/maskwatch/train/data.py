"""Folder datasets, the face-crop rule shared with the runtime, and `prepare` (detect + crop raw photos).

A dataset is a folder of class subfolders. Folder names are mapped to canonical labels:
`with_mask`/`mask` -> `mask`, `without_mask`/`no_mask` -> `no_mask`, `man`/`male` -> `man`,
`woman`/`female` -> `woman`.

Example:
    >>> canonical_label("with_mask"), canonical_label("Female")
    ('mask', 'woman')
    >>> task_of_labels({"mask", "no_mask"})
    'mask'
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from maskwatch.sources import SourceError, read_image
from maskwatch.vision.detect import YuNetDetector

log = logging.getLogger(__name__)

# mask: `incorrect` = a mask is worn but leaves the nose or the mouth uncovered
TASK_LABELS: dict[str, tuple[str, ...]] = {
    "mask": ("mask", "no_mask", "incorrect"),
    "gender": ("man", "woman"),
}
ALIASES = {
    "with_mask": "mask",
    "mask": "mask",
    "masked": "mask",
    "without_mask": "no_mask",
    "no_mask": "no_mask",
    "nomask": "no_mask",
    "unmasked": "no_mask",
    "mask_weared_incorrect": "incorrect",
    "incorrect": "incorrect",
    "mask_incorrect": "incorrect",
    "man": "man",
    "male": "man",
    "men": "man",
    "woman": "woman",
    "female": "woman",
    "women": "woman",
}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
LANDMARKS_FILE = "landmarks.json"

# Where the 5 YuNet landmarks fall, on average, inside a crop made with margin 0.2 / square, in units of
# the crop side (measured on UTKFace). Used when a crop has no landmarks of its own (synthetic masks).
DEFAULT_LANDMARKS = np.array(
    [[0.355, 0.415], [0.645, 0.415], [0.5, 0.56], [0.385, 0.69], [0.615, 0.69]], dtype=np.float32
)


def canonical_label(name: str) -> str | None:
    return ALIASES.get(name.strip().lower())


def task_of_labels(labels: Iterable[str]) -> str:
    labels = set(labels)
    for task, names in TASK_LABELS.items():
        if labels and labels <= set(names):
            return task
    raise ValueError(f"labels {sorted(labels)} match no task ({TASK_LABELS})")


def list_images(root: str | Path) -> list[tuple[Path, str]]:
    """(path, canonical label) for every image in the class subfolders of `root`, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    items: list[tuple[Path, str]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        label = canonical_label(sub.name)
        if label is None:
            log.warning("skipping folder %s: not a known class name", sub)
            continue
        items += [(p, label) for p in sorted(sub.rglob("*")) if p.suffix.lower() in IMAGE_EXTS]
    if not items:
        raise ValueError(f"no images in class subfolders of {root}")
    return items


def stratified_split(
    labels: Sequence[str], val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): `val_fraction` of each class goes to validation, reproducibly."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train, val = [], []
    for lab in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == lab)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# ----------------------------------------------------------------------------------------- crop rule
def crop_face(
    image: np.ndarray, box: Sequence[float], size: int, margin: float = 0.2, square: bool = True
) -> np.ndarray:
    """The card's `box` crop rule, exactly as the runtime does it (`maskwatch.vision.geometry`): grow by
    `margin`, make square, pad with edge pixels, resize to `size` x `size`."""
    from maskwatch.vision.geometry import crop_resize, expand_box

    return crop_resize(image, expand_box(box, margin, square=square), (size, size))


def landmarks_in_crop(
    landmarks: np.ndarray, box: Sequence[float], size: int, margin: float = 0.2, square: bool = True
) -> np.ndarray:
    """Landmarks (5x2 frame pixels) in crop pixels of `crop_face(..., box, size, margin, square)`."""
    from maskwatch.vision.geometry import expand_box

    x1, y1, x2, y2 = expand_box(box, margin, square=square)
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    return np.stack([(pts[:, 0] - x1) * size / (x2 - x1), (pts[:, 1] - y1) * size / (y2 - y1)], 1)


# ------------------------------------------------------------------------------------------ detection
@dataclass
class Detection:
    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None  # 5x2

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass
class FaceFinder:
    """Faces in an image by YuNet at the image's native size (the app's `YuNetDetector`).

    `prepare_mode` upscales small images and pads them with a black border first, so that tight face
    crops (faces touching the image border) are found too.
    """

    yunet_path: Path | None = None
    score_threshold: float = 0.6
    prepare_mode: bool = False
    _impl: YuNetDetector | None = field(default=None, init=False, repr=False)

    def _yunet(self) -> YuNetDetector:
        if self._impl is None:
            path = self.yunet_path or default_yunet_path()
            if path is None:
                raise FileNotFoundError("no YuNet model: pass --yunet PATH")
            self._impl = YuNetDetector(path, score_threshold=self.score_threshold, min_side=0)
        return self._impl

    def detect(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        scale, pad = 1.0, 0
        img = image
        if self.prepare_mode:
            if max(h, w) < 160:
                scale = 160 / max(h, w)
                img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            pad = max(img.shape[:2]) // 2 if max(h, w) <= 256 else 0
            if pad:
                img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        out = []
        for f in self._yunet().detect(img):
            x1, y1, x2, y2 = ((v - pad) / scale for v in f.box)
            # clipped to the image, as the runtime detector does
            box = (max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h)))
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            lm = None if f.landmarks is None else (np.asarray(f.landmarks, np.float64) - pad) / scale
            out.append(Detection(box, f.score, lm))
        return out


def default_yunet_path() -> Path | None:
    """A local YuNet file: $MASKWATCH_YUNET, ../shared/models next to the checkout, or the app's cache."""
    import os

    cands = []
    if os.environ.get("MASKWATCH_YUNET"):
        cands.append(Path(os.environ["MASKWATCH_YUNET"]))
    root = Path(__file__).resolve().parents[3]
    cands += [
        root.parent / "shared" / "models" / "face_detection_yunet.onnx",
        Path("../shared/models/face_detection_yunet.onnx"),
    ]
    for c in cands:
        if c.is_file():
            return c
    return None


def read_image_or_none(path: str | Path) -> np.ndarray | None:
    """`maskwatch.sources.read_image`, or None (with a warning) when the file is unreadable."""
    try:
        return read_image(path)
    except SourceError:
        log.warning("skipping unreadable image %s", path)
        return None


# -------------------------------------------------------------------------------------------- prepare
# Median YuNet box relative to a tight face crop (facemask12k), used when no face is found in a crop.
TIGHT_CROP_BOX = (0.08, -0.02, 0.90, 0.98)


def prepare(
    src: str | Path,
    out: str | Path,
    *,
    size: int = 112,
    margin: float = 0.2,
    yunet_path: Path | None = None,
    score_threshold: float = 0.5,
    fallback_whole: bool = True,
    fallback_max_side: int = 256,
    quality: int = 92,
    progress: bool = True,
) -> dict:
    """Detect the face in every image of the class folders of `src`; write card-rule crops to `out`.

    The largest face is kept. Images with no face are listed (and, when `fallback_whole`, cropped as if
    the whole image were a tight face crop, for images up to `fallback_max_side` px: crops, not photos);
    images with several faces are listed. Landmarks of each
    crop (crop pixels) go to `out/landmarks.json` for synthetic masks; a summary to `out/prepare.json`.
    """
    src, out = Path(src), Path(out)
    items = list_images(src)
    finder = FaceFinder(yunet_path=yunet_path, score_threshold=score_threshold, prepare_mode=True)
    landmarks: dict[str, list] = {}
    no_face, several, unreadable, fallback = [], [], [], []
    written = 0
    it: Iterable = items
    if progress:
        from tqdm import tqdm

        it = tqdm(items, desc=f"prepare {src.name}", unit="img")
    for path, _label in it:
        img = read_image_or_none(path)
        rel = f"{path.parent.name}/{path.stem}.jpg"
        if img is None:
            unreadable.append(str(path))
            continue
        dets = finder.detect(img)
        h, w = img.shape[:2]
        if len(dets) > 1:
            several.append(str(path))
        if dets:
            d = max(dets, key=lambda d: d.area)
            box, lm = d.box, d.landmarks
        else:
            no_face.append(str(path))
            if not fallback_whole or max(h, w) > fallback_max_side:
                continue
            fallback.append(str(path))
            box = (TIGHT_CROP_BOX[0] * w, TIGHT_CROP_BOX[1] * h, TIGHT_CROP_BOX[2] * w, TIGHT_CROP_BOX[3] * h)
            lm = None
        crop = crop_face(img, box, size, margin, True)
        dst = out / path.parent.name / f"{path.stem}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dst), crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
        written += 1
        if lm is not None:
            landmarks[rel] = np.round(landmarks_in_crop(lm, box, size, margin, True), 1).tolist()
    out.mkdir(parents=True, exist_ok=True)
    (out / LANDMARKS_FILE).write_text(json.dumps({"size": size, "landmarks": landmarks}))
    report = {
        "src": str(src),
        "out": str(out),
        "images": len(items),
        "written": written,
        "crop": {"rule": "box", "margin": margin, "square": True, "size": size},
        "no_face": len(no_face),
        "several_faces": len(several),
        "unreadable": len(unreadable),
        "fallback_whole_image": len(fallback),
        "no_face_files": no_face,
        "several_faces_files": several,
        "unreadable_files": unreadable,
    }
    (out / "prepare.json").write_text(json.dumps(report, indent=1))
    return report


# ---------------------------------------------------------------------------------- annotated scenes
def read_voc(path: str | Path) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(class name, box) of every object of a PASCAL VOC annotation file."""
    root = ET.parse(path).getroot()
    out = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        box = tuple(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        out.append((obj.findtext("name", "").strip(), box))
    return out


MATCH_RULES = ("iou", "center")


def matching(rule: str = "iou", iou_min: float = 0.5) -> dict:
    """The matching rule as results report it: `{"rule", "iou"}` (`iou` is null for the `center` rule)."""
    if rule not in MATCH_RULES:
        raise ValueError(f"matching rule must be one of {MATCH_RULES}, got {rule!r}")
    if not 0 < iou_min <= 1:
        raise ValueError(f"IoU threshold must be in (0, 1], got {iou_min}")
    return {"rule": rule, "iou": iou_min if rule == "iou" else None}


def centre_inside(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M): whether the centre of box `a[i]` lies inside box `b[j]` (edges included)."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    cx, cy = (a[:, None, 0] + a[:, None, 2]) / 2, (a[:, None, 1] + a[:, None, 3]) / 2
    return (b[None, :, 0] <= cx) & (cx <= b[None, :, 2]) & (b[None, :, 1] <= cy) & (cy <= b[None, :, 3])


def match_boxes(
    gt: np.ndarray, det: np.ndarray, iou_min: float = 0.5, rule: str = "iou"
) -> list[tuple[int, int]]:
    """Greedy one-to-one matching, highest IoU first; pairs (gt index, det index). A pair may match when
    (`rule="iou"`) its IoU is >= `iou_min`, or (`rule="center"`, for sets annotated with boxes around the
    whole head, which a face box fills only in part) the centre of one box lies inside the other."""
    from maskwatch.vision.geometry import iou_matrix

    matching(rule, iou_min)  # validates
    if len(gt) == 0 or len(det) == 0:
        return []
    ious = iou_matrix(gt, det)
    if rule == "center":
        ok = (centre_inside(gt, det) | centre_inside(det, gt).T) & (ious > 0)
    else:
        ok = ious >= iou_min
    pairs = []
    used_g, used_d = set(), set()
    for flat in np.argsort(-ious, axis=None, kind="stable"):
        g, d = divmod(int(flat), ious.shape[1])
        if not ok[g, d] or g in used_g or d in used_d:
            continue
        used_g.add(g)
        used_d.add(d)
        pairs.append((g, d))
    return pairs


def parse_fold(spec: str | None) -> tuple[int, int] | None:
    """'I/K' -> (I, K): fold I of K (0 <= I < K)."""
    if spec is None:
        return None
    try:
        i, k = (int(v) for v in spec.split("/"))
    except ValueError:
        raise ValueError(f"fold must look like I/K (e.g. 0/2), got {spec!r}") from None
    if not 0 <= i < k:
        raise ValueError(f"fold {spec!r}: need 0 <= I < K")
    return i, k


def scene_images(
    root: str | Path, fold: tuple[int, int] | None = None, *, exclude: bool = False
) -> list[tuple[Path, Path]]:
    """(image, VOC annotation) pairs of a scene set (`images/` + `annotations/`), sorted by name.
    `fold=(i, k)`: only the images whose position is i mod k, or (`exclude`) all the others: a split by
    photo for cross-validation, so faces of one photo never sit on both sides."""
    root = Path(root)
    if not is_scene_set(root):
        raise ValueError(f"{root} is not a scene set: it needs images/ and annotations/ (PASCAL VOC)")
    pairs = []
    for p in sorted((root / "images").iterdir()):
        ann = root / "annotations" / f"{p.stem}.xml"
        if p.suffix.lower() in IMAGE_EXTS and ann.is_file():
            pairs.append((p, ann))
    if fold is not None:
        i, k = fold
        pairs = [pr for n, pr in enumerate(pairs) if (n % k == i) != exclude]
    return pairs


def photo_detector(
    yunet_path: str | Path | None = None,
    score_threshold: float | None = None,
    *,
    backend: str = "yunet",
    thorough: bool = True,
):
    """The app's detector as it runs on photos (`thorough`: with the mirrored pass and border retry)."""
    from maskwatch.config import DetectorSettings
    from maskwatch.vision.detect import create_detector, still_photo_detector

    kw = {"backend": backend, "yunet_path": Path(yunet_path) if yunet_path else default_yunet_path()}
    if score_threshold is not None:
        kw["score_threshold"] = score_threshold
    settings = DetectorSettings(**kw, thorough_stills=thorough)
    return still_photo_detector(create_detector(settings), settings)


def is_scene_set(root: str | Path) -> bool:
    return (Path(root) / "images").is_dir() and (Path(root) / "annotations").is_dir()


def prepare_scenes(
    src: str | Path,
    out: str | Path,
    *,
    size: int = 112,
    margin: float = 0.2,
    yunet_path: Path | None = None,
    score_threshold: float = 0.6,
    exclude_fold: tuple[int, int] | None = None,
    match: str = "iou",
    iou_min: float = 0.5,
    quality: int = 92,
    progress: bool = True,
) -> dict:
    """Face crops of an annotated scene set, as the app sees them: the app's photo detector runs on each
    image, and each detected face matching an annotated box (`match_boxes` by `match` and `iou_min`:
    IoU >= 0.5 by default) is cropped by the crop rule into `out/<annotated class>/`
    (`mask_weared_incorrect` reads as `incorrect`). Annotated faces the detector misses are not written:
    the app never classifies them. `exclude_fold=(i, k)` leaves out the photos `evaluate scenes --fold
    i/k` measures on."""
    rule = matching(match, iou_min)
    detector = photo_detector(yunet_path, score_threshold)
    src, out = Path(src), Path(out)
    pairs = scene_images(src, exclude_fold, exclude=True)
    landmarks: dict[str, list] = {}
    counts: dict[str, int] = {}
    annotated = unreadable = 0
    it: Iterable = pairs
    if progress:
        from tqdm import tqdm

        it = tqdm(pairs, desc=f"prepare {src.name}", unit="img")
    for path, ann in it:
        img = read_image_or_none(path)
        if img is None:
            unreadable += 1
            continue
        gt = [(name, box) for name, box in read_voc(ann) if canonical_label(name) in TASK_LABELS["mask"]]
        annotated += len(gt)
        faces = detector.detect(img)
        gt_boxes = np.array([b for _, b in gt], float).reshape(-1, 4)
        det_boxes = np.array([f.box for f in faces], float).reshape(-1, 4)
        matched = match_boxes(gt_boxes, det_boxes, iou_min, match)
        for g, d in matched:
            name, face = gt[g][0], faces[d]
            rel = f"{name}/{path.stem}_{g}.jpg"
            (out / name).mkdir(parents=True, exist_ok=True)
            crop = crop_face(img, face.box, size, margin, True)
            cv2.imwrite(str(out / rel), crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
            counts[name] = counts.get(name, 0) + 1
            if face.landmarks is not None:
                lm = landmarks_in_crop(np.asarray(face.landmarks), face.box, size, margin, True)
                landmarks[rel] = np.round(lm, 1).tolist()
    out.mkdir(parents=True, exist_ok=True)
    (out / LANDMARKS_FILE).write_text(json.dumps({"size": size, "landmarks": landmarks}))
    report = {
        "src": str(src),
        "out": str(out),
        "images": len(pairs),
        "excluded_fold": None if exclude_fold is None else f"{exclude_fold[0]}/{exclude_fold[1]}",
        "annotated_faces": annotated,
        "written": sum(counts.values()),
        "by_class": counts,
        "not_detected": annotated - sum(counts.values()),
        "unreadable": unreadable,
        "matching": rule,
        "crop": {"rule": "box", "margin": margin, "square": True, "size": size},
    }
    (out / "prepare.json").write_text(json.dumps(report, indent=1))
    return report


# --------------------------------------------------------------------------------------- loading sets
@dataclass
class ImageSet:
    """Images in memory: `images` (N, S, S, 3) uint8 RGB, `labels` (canonical names), landmarks (N,5,2)
    in units of the side (NaN where unknown), source file names."""

    images: np.ndarray
    labels: list[str]
    landmarks: np.ndarray
    files: list[str]
    skipped: int = 0
    root: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def task(self) -> str:
        return task_of_labels(set(self.labels))

    def subset(self, idx: np.ndarray) -> ImageSet:
        return ImageSet(
            self.images[idx],
            [self.labels[i] for i in idx],
            self.landmarks[idx],
            [self.files[i] for i in idx],
            0,
            self.root,
        )


def load_folder(
    root: str | Path, size: int, *, limit_per_class: int | None = None, seed: int = 0, workers: int = 4
) -> ImageSet:
    """Load a class-folder dataset resized to `size` (RGB). Corrupt images are skipped with a warning
    and counted in `skipped`. Landmarks come from `landmarks.json` when `prepare` wrote one."""
    from concurrent.futures import ThreadPoolExecutor

    root = Path(root)
    items = list_images(root)
    if limit_per_class:
        rng = np.random.default_rng(seed)
        keep = []
        for lab in sorted({lab for _, lab in items}):
            idx = [i for i, (_, la) in enumerate(items) if la == lab]
            rng.shuffle(idx)
            keep += idx[:limit_per_class]
        items = [items[i] for i in sorted(keep)]
    lm_map: dict = {}
    lm_size = 1.0
    lm_file = root / LANDMARKS_FILE
    if lm_file.is_file():
        meta = json.loads(lm_file.read_text())
        lm_map, lm_size = meta.get("landmarks", {}), float(meta.get("size", 1))

    def load(p: Path) -> np.ndarray | None:
        img = read_image_or_none(p)
        if img is None:
            return None
        if img.shape[0] != size or img.shape[1] != size:
            interp = cv2.INTER_AREA if max(img.shape[:2]) > size else cv2.INTER_LINEAR
            img = cv2.resize(img, (size, size), interpolation=interp)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    with ThreadPoolExecutor(workers) as ex:
        loaded = list(ex.map(load, [p for p, _ in items]))
    imgs, labels, lms, files = [], [], [], []
    skipped = 0
    for (p, lab), img in zip(items, loaded, strict=True):
        if img is None:
            skipped += 1
            continue
        imgs.append(img)
        labels.append(lab)
        key = f"{p.parent.name}/{p.stem}.jpg"
        lm = lm_map.get(key)
        lms.append(
            np.asarray(lm, np.float32) / lm_size if lm is not None else np.full((5, 2), np.nan, np.float32)
        )
        files.append(str(p))
    if skipped:
        log.warning("%s: skipped %d unreadable image(s)", root, skipped)
    if not imgs:
        raise ValueError(f"no readable images in {root}")
    return ImageSet(np.stack(imgs), labels, np.stack(lms), files, skipped, str(root))


def utkface_meta(filename: str) -> dict | None:
    """Age, gender, race from a UTKFace file name `AGE_GENDER_RACE_DATE.jpg`, or None."""
    parts = Path(filename).name.split("_")
    try:
        age, gender, race = int(parts[0]), int(parts[1]), int(parts[2])
    except (ValueError, IndexError):
        return None
    return {"age": age, "gender": gender, "race": race}
