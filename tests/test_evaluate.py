"""`maskwatch evaluate`: metrics, fairness, JSON schema of crops / faces / scenes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from maskwatch.train import evaluate as E

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "maskwatch" / "models"
KEYS = {"n", "accuracy", "balanced_accuracy", "per_class", "no_face"}


@pytest.fixture(scope="module")
def bundled():
    assert (BUNDLED / "attributes.json").is_file(), "the bundled attribute model is missing"
    return BUNDLED


def test_metrics_and_no_face():
    m = E.metrics(["man", "woman", "woman", "man"], ["man", "woman", E.NO_FACE, "woman"], ("man", "woman"))
    assert m["n"] == 4 and m["accuracy"] == 0.5 and m["no_face"] == 1
    assert m["per_class"] == {"man": {"n": 2, "recall": 0.5}, "woman": {"n": 2, "recall": 0.5}}
    assert m["balanced_accuracy"] == 0.5


def test_fairness_report_groups_and_gap():
    files = [f"{age}_{g}_{race}_2017.jpg" for age, g, race in [(5, 0, 0), (30, 1, 1), (70, 0, 2)] * 40]
    y = np.array([int(f.split("_")[1]) for f in files])
    probs = np.eye(2)[y]
    probs[::3] = probs[::3, ::-1]  # every child wrong
    rep = E.fairness_report(files, y, probs)
    assert rep["by_age"]["0-12"]["accuracy"] == 0.0 and rep["by_age"]["20-39"]["accuracy"] == 1.0
    assert rep["by_race"]["White"]["n"] == 40
    assert rep["largest_gap"] == 1.0 and rep["largest_gap_age"]["worst"] == "0-12"
    assert E.fairness_report(["face_1.jpg"] * 20, np.zeros(20, int), np.ones((20, 2)) / 2) is None


def test_match_boxes_greedy_iou():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    det = np.array([[21, 21, 31, 31], [0, 0, 10, 11], [50, 50, 60, 60]], float)
    assert sorted(E.match_boxes(gt, det)) == [(0, 1), (1, 0)]


def _crops_dir(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ("with_mask", "without_mask"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(root / c / f"{i}.jpg"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (root / "with_mask" / "bad.jpg").write_bytes(b"x")
    return root


def test_evaluate_crops_cli_json(tmp_path, bundled):
    d = _crops_dir(tmp_path / "crops")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        E.evaluate, ["crops", "--task", "mask", str(d), "--model", str(bundled), "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert set(r) >= KEYS and r["n"] == 6 and r["skipped_unreadable"] == 1
    assert set(r["per_class"]) == {"mask", "no_mask"} and r["per_class"]["mask"]["n"] == 3


def test_evaluate_scenes_schema(tmp_path, bundled, yunet_path):
    d = tmp_path / "scenes"
    (d / "images").mkdir(parents=True)
    (d / "annotations").mkdir()
    cv2.imwrite(str(d / "images" / "a.png"), np.full((120, 160, 3), 90, np.uint8))
    (d / "annotations" / "a.xml").write_text(
        "<annotation><object><name>with_mask</name><bndbox><xmin>10</xmin><ymin>10</ymin>"
        "<xmax>50</xmax><ymax>60</ymax></bndbox></object></annotation>"
    )
    r = E.evaluate_scenes(d, bundled, yunet=str(yunet_path))
    assert set(r) >= KEYS and {"faces", "recall", "precision", "recall_by_size", "mask_accuracy"} <= set(r)
    assert r["faces"] == 1 and r["recall"] == 0.0
    assert set(r["recall_by_size"]) == {"<16", "16-32", "32-64", ">=64"}
    assert r["recall_by_size"]["32-64"]["n"] == 1


def test_evaluate_scenes_fold_cli(tmp_path, bundled, yunet_path):
    d = tmp_path / "scenes"
    (d / "images").mkdir(parents=True)
    (d / "annotations").mkdir()
    for name in ("a", "b", "c"):
        cv2.imwrite(str(d / "images" / f"{name}.png"), np.full((120, 160, 3), 90, np.uint8))
        (d / "annotations" / f"{name}.xml").write_text("<annotation></annotation>")
    out = tmp_path / "r.json"
    args = ["scenes", str(d), "--model", str(bundled), "--yunet", str(yunet_path), "--json", str(out)]
    res = CliRunner().invoke(E.evaluate, [*args, "--fold", "1/3"])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["fold"] == "1/3" and r["images"] == 1 and r["thorough"] is True
    res = CliRunner().invoke(E.evaluate, [*args, "--fold", "3/3"])
    assert res.exit_code != 0 and "0 <= I < K" in res.output


def _fold(spec, mask, no_mask, inc):
    """A fold result as `evaluate scenes --fold` writes it: (n, recall) per class."""
    return {
        "command": "scenes",
        "fold": spec,
        "per_class": {
            "mask": {"n": mask[0], "recall": mask[1]},
            "no_mask": {"n": no_mask[0], "recall": no_mask[1]},
        },
        "mask_balanced_accuracy": (mask[1] + no_mask[1]) / 2,
        "mask_weared_incorrect": {"n": inc[0], "recall_as_no_mask": inc[1]},
        "recall_ge32": 0.9,
    }


def test_evaluate_folds_pools_cross_validation(tmp_path, bundled):
    import shutil

    a, b = tmp_path / "f0.json", tmp_path / "f1.json"
    a.write_text(json.dumps(_fold("0/2", (10, 0.9), (5, 0.6), (2, 0.5))))
    b.write_text(json.dumps(_fold("1/2", (30, 1.0), (5, 0.8), (2, 1.0))))
    model = tmp_path / "model"
    shutil.copytree(bundled, model)
    card = model / "attributes.json"
    res = CliRunner().invoke(E.evaluate, ["folds", str(a), str(b), "--update-card", str(card)])
    assert res.exit_code == 0, res.output
    cv = json.loads(card.read_text())["metrics"]["scenes_dev_cross_validation"]
    assert cv["mask_balanced_accuracy_mean"] == 0.825  # (0.75 + 0.9) / 2
    assert cv["per_class_pooled"] == {"mask": {"n": 40, "recall": 0.975}, "no_mask": {"n": 10, "recall": 0.7}}
    assert cv["mask_balanced_accuracy_pooled"] == 0.8375
    assert cv["mask_weared_incorrect_pooled"] == {"n": 4, "recall_as_no_mask": 0.75}
    assert [f["fold"] for f in cv["folds"]] == ["0/2", "1/2"]
    res = CliRunner().invoke(E.evaluate, ["folds", str(a), str(a)])
    assert res.exit_code != 0 and "different folds" in res.output


def test_evaluate_folds_three_labels():
    def three(spec, inc_recall):
        f = _fold(spec, (10, 1.0), (10, 0.8), (5, 0.8))
        f["per_class"]["incorrect"] = {"n": 5, "recall": inc_recall}
        f["matching"] = {"rule": "center", "iou": None}
        return f

    cv = E.pool_scene_folds([three("0/2", 0.4), three("1/2", 0.8)])
    assert cv["per_class_pooled"]["incorrect"] == {"n": 10, "recall": 0.6}
    assert cv["incorrect_counts_as"] == "incorrect" and cv["matching"]["rule"] == "center"
    assert cv["mask_balanced_accuracy_pooled"] == 0.8  # (1.0 + 0.8 + 0.6) / 3
    two = _fold("1/2", (10, 1.0), (10, 0.8), (5, 0.8))
    with pytest.raises(ValueError, match="different mask labels"):
        E.pool_scene_folds([three("0/2", 0.4), two])
    old = E.pool_scene_folds([_fold("0/2", (10, 1.0), (10, 0.8), (5, 0.8)), two])  # results without matching
    assert old["matching"] == {"rule": "iou", "iou": 0.5} and old["incorrect_counts_as"] == "no_mask"


def test_evaluate_faces_real(shared_data, bundled, yunet_path, tmp_path):
    d = tmp_path / "g"
    for c in ("man", "woman"):
        (d / c).mkdir(parents=True)
        for p in sorted((shared_data / "gender" / "balajisrinivas" / c).iterdir())[:3]:
            (d / c / p.name).write_bytes(p.read_bytes())
    cv2.imwrite(str(d / "man" / "noface.jpg"), np.full((100, 100, 3), 50, np.uint8))
    r = E.evaluate_faces(d, "gender", bundled, yunet=str(yunet_path))
    assert set(r) >= KEYS and r["n"] == 7 and r["no_face"] >= 1
    assert r["per_class"]["man"]["n"] == 4
    rm = E.evaluate_faces(d, "gender", bundled, yunet=str(yunet_path), synthetic_mask=True)
    assert rm["synthetic_mask"] is True and rm["n"] == 7
    assert rm["thorough"] is True and rm["no_face"] >= 1  # the blank image has no face, even in a border
    rs = E.evaluate_faces(d, "gender", bundled, yunet=str(yunet_path), synthetic_mask=True, thorough=False)
    assert rs["thorough"] is False and rs["no_face"] >= rm["no_face"]


def test_evaluate_unknown_task(tmp_path, bundled):
    from maskwatch.vision.classify import AttributeClassifier

    clf = AttributeClassifier.from_dir(bundled)
    with pytest.raises(Exception, match="no 'age' output"):
        E._owner(clf, "age")


def test_update_card(tmp_path, bundled):
    import shutil

    d = _crops_dir(tmp_path / "crops")
    model = tmp_path / "model"
    shutil.copytree(bundled, model)
    card = model / "attributes.json"
    args = [
        "crops",
        "--task",
        "mask",
        str(d),
        "--model",
        str(model),
        "--update-card",
        str(card),
        "--key",
        "tiny",
    ]
    res = CliRunner().invoke(E.evaluate, args)
    assert res.exit_code == 0, res.output
    assert json.loads(card.read_text())["metrics"]["tiny"]["n"] == 6


# ------------------------------------------------------------------------------- matching rules
def test_match_boxes_center_rule_for_head_boxes():
    head = np.array([[0, 0, 100, 120]], float)
    face = np.array([[30, 40, 70, 90]], float)  # IoU 0.167 with the head box, centre inside it
    assert E.match_boxes(head, face) == [] and E.match_boxes(head, face, 0.1) == [(0, 0)]
    assert E.match_boxes(head, face, rule="center") == [(0, 0)]
    assert E.match_boxes(face, head, rule="center") == [(0, 0)]  # either box may hold the other's centre
    two = np.array([[10, 10, 40, 40], [30, 30, 90, 100]], float)  # two faces in one head box
    assert E.match_boxes(head, two, rule="center") == [(0, 1)]  # one match, the larger IoU
    far = np.array([[200, 200, 240, 240], [95, 115, 160, 180]], float)  # apart; overlapping a corner
    for rule in ("iou", "center"):
        assert E.match_boxes(head, far, 0.01, rule) == []
    with pytest.raises(ValueError, match="matching rule"):
        E.match_boxes(head, face, rule="centre")
    assert E.matching("center", 0.3) == {"rule": "center", "iou": None}
    assert E.matching("iou", 0.3) == {"rule": "iou", "iou": 0.3}


def test_match_boxes_center_is_one_to_one_both_ways():
    heads = np.array([[0, 0, 100, 100], [90, 0, 190, 100]], float)
    faces = np.array([[80, 20, 110, 60]], float)  # centre (95, 40) inside both head boxes
    assert E.match_boxes(heads, faces, rule="center") == [(0, 0)]
    faces2 = np.vstack([faces, [[120, 20, 160, 60]]])
    assert sorted(E.match_boxes(heads, faces2, rule="center")) == [(0, 0), (1, 1)]


# --------------------------------------------------------------------- three mask labels, dumps
def _tiny(tmp_path, labels):
    from vision_helpers import make_tiny_model

    return make_tiny_model(tmp_path / f"model{len(labels)}", mask_labels=labels)


def _colour_crops(root: Path, classes=("with_mask", "without_mask", "mask_weared_incorrect"), n=3) -> Path:
    from vision_helpers import GREEN, RED, YELLOW

    colours = {"with_mask": RED, "without_mask": GREEN, "mask_weared_incorrect": YELLOW}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / c / f"{i}.png"), np.full((40, 40, 3), colours[c], np.uint8))
    return root


def test_crops_three_label_model(tmp_path):
    from vision_helpers import MASK_LABELS_3

    d = _colour_crops(tmp_path / "crops")
    r = E.evaluate_crops(d, "mask", _tiny(tmp_path, MASK_LABELS_3))
    assert r["labels"] == ["mask", "no_mask", "incorrect"] and r["incorrect_counts_as"] == "incorrect"
    assert r["per_class"] == {k: {"n": 3, "recall": 1.0} for k in ("mask", "no_mask", "incorrect")}
    assert r["balanced_accuracy"] == 1.0
    d2 = _colour_crops(tmp_path / "two", ("with_mask", "without_mask"))  # no incorrect faces
    r2 = E.evaluate_crops(d2, "mask", _tiny(tmp_path, MASK_LABELS_3))
    assert r2["per_class"]["incorrect"] == {"n": 0, "recall": None} and r2["balanced_accuracy"] == 1.0


def test_crops_two_label_model_counts_incorrect_as_no_mask(tmp_path):
    from vision_helpers import MASK_LABELS_2

    d = _colour_crops(tmp_path / "crops")
    r = E.evaluate_crops(d, "mask", _tiny(tmp_path, MASK_LABELS_2))
    assert r["labels"] == ["mask", "no_mask"] and r["incorrect_counts_as"] == "no_mask"
    assert set(r["per_class"]) == {"mask", "no_mask"} and r["per_class"]["no_mask"]["n"] == 6
    assert r["n"] == 9 and r["per_class"]["mask"] == {"n": 3, "recall": 1.0}


def test_crops_dump_jsonl(tmp_path):
    from vision_helpers import GREY, MASK_LABELS_2, MASK_LABELS_3

    d = _colour_crops(tmp_path / "crops", n=1)
    cv2.imwrite(str(d / "with_mask" / "25_0_2_20170116.png"), np.full((40, 40, 3), GREY, np.uint8))
    dump = tmp_path / "out" / "d.jsonl"
    args = ["crops", "--task", "mask", str(d), "--model", str(_tiny(tmp_path, MASK_LABELS_3))]
    res = CliRunner().invoke(E.evaluate, [*args, "--dump", str(dump)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == 4 and all(r["set"] == "crops" and r["task"] == "mask" for r in rows)
    by_name = {Path(r["file"]).name: r for r in rows}
    grey = by_name["25_0_2_20170116.png"]
    assert grey["truth"] == "mask" and grey["pred"] == "uncertain" and grey["argmax"] in MASK_LABELS_3
    assert (grey["age"], grey["race"]) == (25, "Asian")
    assert set(grey["probs"]) == set(MASK_LABELS_3) and abs(sum(grey["probs"].values()) - 1) < 1e-3
    inc = next(r for r in rows if "mask_weared_incorrect" in r["file"])
    assert inc["truth"] == inc["pred"] == inc["argmax"] == "incorrect" and "annotated" not in inc
    assert "age" not in inc
    E.evaluate_crops(d, "mask", _tiny(tmp_path, MASK_LABELS_2), dump=dump)  # two labels: incorrect -> no_mask
    inc2 = next(json.loads(x) for x in dump.read_text().splitlines() if "mask_weared_incorrect" in x)
    assert inc2["truth"] == "no_mask" and inc2["annotated"] == "incorrect"
    assert set(inc2["probs"]) == {"mask", "no_mask"}


# ------------------------------------------------------- scenes with head boxes, a stand-in detector
FACES = [(20, 40, 60, 90), (120, 40, 160, 90), (220, 40, 260, 90), (260, 180, 300, 220)]  # last: a stray
HEADS = [
    ("with_mask", (5, 10, 75, 110)),  # IoU with its face 0.286
    ("without_mask", (105, 10, 175, 110)),
    ("mask_weared_incorrect", (205, 10, 275, 110)),
    ("without_mask", (100, 150, 150, 230)),  # missed by the detector
]


@pytest.fixture
def head_scenes(tmp_path, monkeypatch):
    from vision_helpers import GREEN, RED, YELLOW, FakeDetector, face_canvas

    d = tmp_path / "heads"
    (d / "images").mkdir(parents=True)
    (d / "annotations").mkdir()
    cv2.imwrite(
        str(d / "images" / "a.png"), face_canvas(list(zip(FACES[:3], (RED, GREEN, YELLOW), strict=True)))
    )
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in HEADS
    )
    (d / "annotations" / "a.xml").write_text(f"<annotation>{objs}</annotation>")
    monkeypatch.setattr(E, "photo_detector", lambda *a, **k: FakeDetector([FACES]))
    return d


def test_scenes_head_boxes_center_and_iou(head_scenes, tmp_path):
    from vision_helpers import MASK_LABELS_3

    model = _tiny(tmp_path, MASK_LABELS_3)
    strict = E.evaluate_scenes(head_scenes, model)
    assert strict["matching"] == {"rule": "iou", "iou": 0.5} and strict["recall"] == 0.0 and strict["n"] == 0
    r = E.evaluate_scenes(head_scenes, model, match="center")
    assert r["matching"] == {"rule": "center", "iou": None}
    assert (r["faces"], r["detections"], r["recall"], r["precision"], r["n"]) == (4, 4, 0.75, 0.75, 3)
    assert r["incorrect_counts_as"] == "incorrect" and r["per_class"]["incorrect"] == {"n": 1, "recall": 1.0}
    assert r["mask_balanced_accuracy"] == 1.0
    assert r["mask_weared_incorrect"] == {"n": 1, "recall_as_no_mask": 1.0}  # called incorrect: not masked
    loose = E.evaluate_scenes(head_scenes, model, iou_min=0.25)
    assert loose["n"] == 3 and loose["matching"] == {"rule": "iou", "iou": 0.25}


def test_scenes_two_label_model_and_cli_dump(head_scenes, tmp_path):
    from vision_helpers import MASK_LABELS_2

    model, out, dump = _tiny(tmp_path, MASK_LABELS_2), tmp_path / "r.json", tmp_path / "d.jsonl"
    args = ["scenes", str(head_scenes), "--model", str(model), "--json", str(out), "--dump", str(dump)]
    res = CliRunner().invoke(E.evaluate, [*args, "--match", "center"])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["incorrect_counts_as"] == "no_mask" and set(r["per_class"]) == {"mask", "no_mask"}
    assert r["per_class"]["no_mask"]["n"] == 2 and r["mask_weared_incorrect"]["n"] == 1
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == 3 and {r["set"] for r in rows} == {"heads"}
    assert [row["box"] for row in rows] == [list(map(float, b)) for _, b in HEADS[:3]]
    assert rows[2]["truth"] == "no_mask" and rows[2]["annotated"] == "incorrect"
    res = CliRunner().invoke(E.evaluate, [*args, "--iou", "0.25"])
    assert res.exit_code == 0 and json.loads(out.read_text())["matching"] == {"rule": "iou", "iou": 0.25}
    res = CliRunner().invoke(E.evaluate, [*args, "--match", "center", "--iou", "0.3"])
    assert res.exit_code != 0 and "--iou" in res.output


def test_faces_three_labels_and_dump(tmp_path, monkeypatch):
    from vision_helpers import MASK_LABELS_3, FakeDetector

    d = _colour_crops(tmp_path / "photos", n=2)
    boxes = [[(5, 5, 35, 35)]] * 5 + [[]]  # the last image (name order) has no face
    monkeypatch.setattr(E, "photo_detector", lambda *a, **k: FakeDetector(boxes))
    dump = tmp_path / "f.jsonl"
    r = E.evaluate_faces(d, "mask", _tiny(tmp_path, MASK_LABELS_3), dump=dump)
    assert r["n"] == 6 and r["no_face"] == 1 and r["incorrect_counts_as"] == "incorrect"
    assert r["per_class"]["incorrect"] == {"n": 2, "recall": 1.0}
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == 5 and all(row["pred"] == row["truth"] for row in rows)  # no line for no face


def test_update_card_fairness_goes_beside_the_training_table(tmp_path, bundled):
    import shutil

    import cv2

    rng = np.random.default_rng(0)
    data = tmp_path / "utk"
    for gi, g in enumerate(("man", "woman")):
        (data / g).mkdir(parents=True)
        for i in range(12):
            img = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
            cv2.imwrite(str(data / g / f"{5 + 10 * i}_{gi}_{i % 5}_2017.jpg"), img)
    model = tmp_path / "model"
    shutil.copytree(bundled, model)
    card = model / "attributes.json"
    before = json.loads(card.read_text())["fairness"]["gender"]
    args = ["crops", "--task", "gender", str(data), "--fairness", "--model", str(model)]
    res = CliRunner().invoke(E.evaluate, [*args, "--update-card", str(card), "--key", "utk_extra"])
    assert res.exit_code == 0, res.output
    fairness = json.loads(card.read_text())["fairness"]
    assert fairness["gender"] == before  # the training's own table stays
    assert fairness["gender:utk_extra"]["n"] == 24 and "0-12" in fairness["gender:utk_extra"]["by_age"]
