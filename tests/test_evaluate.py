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
    if not (BUNDLED / "attributes.json").is_file():
        pytest.skip("no bundled attribute model")
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
