"""Folder datasets, the crop rule (must equal the runtime's), prepare, synthetic masks."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from maskwatch.train import data as D
from maskwatch.train.synth import (
    DEFAULT_LANDMARKS_112,
    draw_mask,
    masked_face_box,
    measure_masked_box,
    occlude,
)
from maskwatch.types import Face


def _write_set(root, classes, n, size=40, seed=0):
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            img[:, :, ci] += 150
            cv2.imwrite(str(root / c / f"{i}.jpg"), img)
    return root


def test_labels_and_tasks():
    assert D.canonical_label("with_mask") == "mask"
    assert D.canonical_label("without_mask") == D.canonical_label("no_mask") == "no_mask"
    assert D.canonical_label("Male") == "man" and D.canonical_label("female") == "woman"
    assert D.task_of_labels({"man", "woman"}) == "gender"
    with pytest.raises(ValueError):
        D.task_of_labels({"man", "mask"})


def test_stratified_split_is_reproducible():
    labels = ["a"] * 50 + ["b"] * 30
    tr, va = D.stratified_split(labels, 0.2, seed=1)
    assert len(va) == 16 and len(set(tr) & set(va)) == 0 and len(tr) + len(va) == 80
    assert sum(labels[i] == "a" for i in va) == 10
    tr2, va2 = D.stratified_split(labels, 0.2, seed=1)
    assert (va == va2).all()


def test_corrupt_image_is_skipped_and_counted(tmp_path, caplog):
    root = _write_set(tmp_path / "set", ["man", "female"], 5)
    (root / "man" / "broken.jpg").write_bytes(b"not a jpeg")
    s = D.load_folder(root, 32)
    assert s.skipped == 1 and len(s) == 10 and s.images.shape == (10, 32, 32, 3)
    assert set(s.labels) == {"man", "woman"} and s.task == "gender"
    assert "unreadable" in caplog.text


def test_crop_equals_runtime_crop():
    """Training crops are made exactly as the runtime classifier crops a detected face."""
    from maskwatch.vision.classify import AttributeModel

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    box = (250.0, -5.0, 330.0, 90.0)  # touches two borders: edge padding
    ours = D.crop_face(frame, box, 64, margin=0.2, square=True)

    class _Stub(AttributeModel):
        def __init__(self):  # no ONNX needed: only the crop rule
            self.crop_rule, self.margin, self.square, self.size, self.template = (
                "box",
                0.2,
                True,
                (64, 64),
                None,
            )

    theirs = _Stub().crop(frame, Face(box=(250, 0, 320, 90), score=0.9))
    clipped = D.crop_face(frame, (250, 0, 320, 90), 64)
    assert ours.shape == (64, 64, 3)
    assert np.array_equal(clipped, theirs)


def test_prepare_real_photos(tmp_path, shared_data, yunet_path):
    src = tmp_path / "src"
    for lab, folder in (
        ("with_mask", "mask/chandrikadeb7/with_mask"),
        ("without_mask", "mask/chandrikadeb7/without_mask"),
    ):
        (src / lab).mkdir(parents=True)
        for p in sorted((shared_data / folder).iterdir())[:4]:
            (src / lab / p.name).write_bytes(p.read_bytes())
    (src / "with_mask" / "corrupt.jpg").write_bytes(b"\x00\x01")
    blank = np.full((300, 300, 3), 127, np.uint8)
    cv2.imwrite(str(src / "without_mask" / "blank.jpg"), blank)  # a photo with no face
    rep = D.prepare(src, tmp_path / "out", size=64, yunet_path=yunet_path, progress=False)
    assert rep["images"] == 10 and rep["unreadable"] == 1
    assert any("blank" in f for f in rep["no_face_files"])
    crops = list((tmp_path / "out").rglob("*.jpg"))
    assert len(crops) == rep["written"] >= 6
    assert all(cv2.imread(str(c)).shape == (64, 64, 3) for c in crops)
    lm = json.loads((tmp_path / "out" / "landmarks.json").read_text())
    assert lm["size"] == 64 and len(lm["landmarks"]) >= 6
    s = D.load_folder(tmp_path / "out", 64)
    assert np.isfinite(s.landmarks).all(axis=(1, 2)).sum() >= 6


def _scene_set(dst, shared_data, n=6):
    for sub in ("images", "annotations"):
        (dst / sub).mkdir(parents=True)
    for xml in sorted((shared_data / "scenes/dev/annotations").glob("*.xml"))[:n]:
        (dst / "annotations" / xml.name).write_bytes(xml.read_bytes())
        img = next((shared_data / "scenes/dev/images").glob(f"{xml.stem}.*"))
        (dst / "images" / img.name).write_bytes(img.read_bytes())
    return dst


def test_prepare_scene_set_and_folds(tmp_path, shared_data, yunet_path):
    src = _scene_set(tmp_path / "scenes", shared_data)
    rep = D.prepare_scenes(src, tmp_path / "all", size=48, yunet_path=yunet_path, progress=False)
    assert rep["images"] == 6 and rep["written"] + rep["not_detected"] == rep["annotated_faces"]
    assert rep["written"] >= 5 and set(rep["by_class"]) <= {
        "with_mask",
        "without_mask",
        "mask_weared_incorrect",
    }
    crops = sorted((tmp_path / "all").rglob("*.jpg"))
    assert len(crops) == rep["written"] and cv2.imread(str(crops[0])).shape == (48, 48, 3)
    s = D.load_folder(tmp_path / "all", 48)
    assert set(s.labels) <= {"mask", "no_mask", "incorrect"} and len(s.labels) == rep["written"]
    # folds split by photo: fold 0/2 holds photos 0, 2, 4; excluding it leaves 1, 3, 5
    names = [p.name for p, _ in D.scene_images(src)]
    assert [p.name for p, _ in D.scene_images(src, (0, 2))] == names[0::2]
    assert [p.name for p, _ in D.scene_images(src, (0, 2), exclude=True)] == names[1::2]
    part = D.prepare_scenes(
        src, tmp_path / "part", size=48, yunet_path=yunet_path, exclude_fold=(0, 2), progress=False
    )
    stems = {p.stem.rsplit("_", 1)[0] for p in (tmp_path / "part").rglob("*.jpg")}
    assert part["images"] == 3 and stems <= {n.rsplit(".", 1)[0] for n in names[1::2]}
    with pytest.raises(ValueError, match="I/K"):
        D.parse_fold("1-2")
    with pytest.raises(ValueError, match="0 <= I < K"):
        D.parse_fold("2/2")
    with pytest.raises(ValueError, match="not a scene set"):
        D.scene_images(tmp_path / "all")


def test_prepare_scenes_matching_rule(tmp_path, monkeypatch):
    """Whole-head boxes: a face box fills a head box only in part (IoU 0.29 here); `center` matches it."""
    from vision_helpers import FakeDetector, face_canvas

    src = tmp_path / "heads"
    (src / "images").mkdir(parents=True)
    (src / "annotations").mkdir()
    cv2.imwrite(str(src / "images" / "a.png"), face_canvas([((20, 40, 60, 90), (40, 40, 220))]))
    (src / "annotations" / "a.xml").write_text(
        "<annotation><object><name>with_mask</name><bndbox><xmin>5</xmin><ymin>10</ymin><xmax>75</xmax>"
        "<ymax>110</ymax></bndbox></object></annotation>"
    )
    monkeypatch.setattr(D, "photo_detector", lambda *a, **k: FakeDetector([[(20, 40, 60, 90)]]))
    strict = D.prepare_scenes(src, tmp_path / "strict", size=32, progress=False)
    assert strict["written"] == 0 and strict["matching"] == {"rule": "iou", "iou": 0.5}
    rep = D.prepare_scenes(src, tmp_path / "center", size=32, match="center", progress=False)
    assert rep["written"] == 1 and rep["by_class"] == {"with_mask": 1}
    assert json.loads((tmp_path / "center" / "prepare.json").read_text())["matching"] == {
        "rule": "center",
        "iou": None,
    }
    assert D.prepare_scenes(src, tmp_path / "loose", size=32, iou_min=0.25, progress=False)["written"] == 1
    with pytest.raises(ValueError, match="IoU threshold"):
        D.prepare_scenes(src, tmp_path / "bad", iou_min=0, progress=False)


def test_synthetic_mask_covers_mouth_not_eyes():
    rng = np.random.default_rng(3)
    img = np.full((112, 112, 3), 200, np.uint8)
    for k in range(20):
        out = draw_mask(img, DEFAULT_LANDMARKS_112, np.random.default_rng(k))
        diff = np.abs(out.astype(int) - img).sum(2)
        mx, my = DEFAULT_LANDMARKS_112[3:].mean(0).astype(int)  # mouth centre
        assert diff[my - 2 : my + 3, mx - 2 : mx + 3].mean() > 10
        ex, ey = DEFAULT_LANDMARKS_112[0].astype(int)  # an eye
        assert diff[ey - 1 : ey + 2, ex - 1 : ex + 2].mean() < 5
    a = draw_mask(img, DEFAULT_LANDMARKS_112, np.random.default_rng(7))
    b = draw_mask(img, DEFAULT_LANDMARKS_112, np.random.default_rng(7))
    assert np.array_equal(a, b)
    del rng


def test_mask_worn_wrongly_leaves_nose_or_mouth_bare():
    img = np.zeros((112, 112, 3), np.uint8)
    img[:] = (30, 160, 30)  # a colour no mask has
    nx, ny = DEFAULT_LANDMARKS_112[2].astype(int)  # nose tip
    mx, my = DEFAULT_LANDMARKS_112[3:].mean(0).astype(int)  # mouth centre

    def changed(worn, k):
        out = draw_mask(img, DEFAULT_LANDMARKS_112, np.random.default_rng(k), worn=worn)
        return np.abs(out.astype(int) - img).sum(2)[:, 30:82] > 10  # the face's width, no ear loops

    for k in range(10):
        proper, below_nose, chin = changed("correct", k), changed("below_nose", k), changed("chin", k)
        top = [int(np.argmax(m.any(1))) for m in (proper, below_nose, chin)]
        assert top[0] < top[1] < top[2]
        assert proper[my, mx - 30] and below_nose[my, mx - 30] and not below_nose[ny - 1, nx - 30]
        assert not chin[my - 1, mx - 30]
    # a face at the bottom edge: the mask falls (almost) outside the image, which keeps its size
    for dy in range(20, 80, 2):
        for worn in ("correct", "below_nose", "chin"):
            low = DEFAULT_LANDMARKS_112 + (0, dy)
            assert draw_mask(img, low, np.random.default_rng(dy), worn=worn).shape == img.shape


def test_masked_faces_are_boxed_higher_on_real_photos(shared_data, yunet_path):
    from maskwatch.train.data import photo_detector

    photos = sorted((shared_data / "gender" / "utkface" / "woman").glob("*.jpg"))[:12]
    rows = measure_masked_box((D.read_image(p) for p in photos), photo_detector(yunet_path))
    assert rows.shape[1] == 3 and len(rows) >= 8
    box = masked_face_box(rows)
    assert box["shift"][1] < 0 and abs(box["shift"][0]) < 0.05  # moved up (the chin is hidden), not aside
    assert abs(box["log_scale"]) < 0.3


def test_utkface_names():
    assert D.utkface_meta("26_1_2_20170116174525125.jpg") == {"age": 26, "gender": 1, "race": 2}
    assert D.utkface_meta("face_1.jpg") is None


def test_occlusion_pastes_part_of_another_image():
    img = np.full((64, 64, 3), 10, np.uint8)
    src = np.full((64, 64, 3), 250, np.uint8)
    changed = [int((occlude(img, src, np.random.default_rng(k)) != img).any(axis=2).sum()) for k in range(10)]
    assert all(0 < c < 64 * 64 for c in changed)


def test_cli_lists_commands_without_importing_torch():
    import subprocess
    import sys

    code = (
        "import sys, maskwatch.cli as c; names = set(c.main.commands); "
        "assert {'train', 'prepare', 'evaluate'} <= names, names; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
