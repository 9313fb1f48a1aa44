"""One-epoch training on tiny generated sets: outputs, ONNX equals torch, resume, corrupt files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _write_set(root, classes, n, size=48, seed=0):
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            cv2.rectangle(img, (8, 8 + 16 * ci), (40, 20 + 16 * ci), (255, 255, 255), -1)
            cv2.imwrite(str(root / c / f"{i}.jpg"), img)
    return root


def _recipe(task, data, out, **kw):
    """A tiny train recipe: size 32, one epoch, no ImageNet weights."""
    from maskwatch.train.recipe import TrainRecipe

    tiny = dict(size=32, epochs=1, batch_size=8, pretrained=False, workers=2)
    return TrainRecipe(task=task, data=[str(d) for d in data], out=str(out), **(tiny | kw))


def _train(task, data, out, **kw):
    from maskwatch.train.cli import run_training

    return run_training(_recipe(task, data, out, **kw), progress=False, command="pytest")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("train")
    mask = _write_set(tmp / "mask", ["with_mask", "without_mask", "mask_weared_incorrect"], 12)
    gender = _write_set(tmp / "gender", ["male", "female"], 12, seed=1)
    (gender / "male" / "corrupt.jpg").write_bytes(b"broken")
    out = tmp / "out"
    card = _train("attributes", [mask, gender], out, synthetic_mask=0.5, occlusion=0.5, incorrect_mask=0.2)
    return out, card, mask, gender


def test_outputs_and_card(trained):
    from maskwatch.train.synth import MASKED_FACE_BOX

    out, card, _, _ = trained
    for f in ("attributes.onnx", "attributes.json", "history.json", "curves.png", "confusion_mask.png",
              "confusion_gender.png", "checkpoint.pt"):  # fmt: skip
        assert (out / f).is_file(), f
    assert json.loads((out / "attributes.json").read_text()) == card
    assert card["input"]["size"] == [32, 32] and card["crop"]["rule"] == "box"
    assert card["crop"]["masked_faces"] == MASKED_FACE_BOX  # two heads: gender reframes masked faces
    assert card["outputs"]["mask"]["labels"] == ["mask", "no_mask", "incorrect"]  # the default: three
    assert card["outputs"]["gender"]["labels"] == ["man", "woman"]
    assert np.array(card["metrics"]["validation"]["mask"]["confusion"]).shape == (3, 3)
    for h in ("mask", "gender"):
        assert 0.5 <= card["outputs"][h]["uncertain_threshold"] <= 0.95
        assert "accuracy" in card["metrics"]["validation"][h]
    assert card["training"]["command"] == "pytest" and card["training"]["date"]
    gender_data = [d for d in card["data"]["train"] if d["task"] == "gender"][0]
    assert gender_data["skipped_unreadable"] == 1 and gender_data["counts"] == {"man": 12, "woman": 12}
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["epochs"]) == 1 and "val" in hist["epochs"][0]


def test_onnx_matches_torch(trained):
    import onnxruntime as ort

    from maskwatch.train.nets import build

    out, card, _, _ = trained
    model = build("mnv2-attr", ("mask", "gender"), pretrained=False)
    model.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=True))
    model.eval()
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    sess = ort.InferenceSession(str(out / "attributes.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["mask", "gender"], {"input": x})
    assert got[0].shape == (3, 3)  # three mask labels: three logits
    np.testing.assert_allclose(got[0], ref["mask"].numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(got[1], ref["gender"].numpy(), atol=1e-4, rtol=1e-3)


def test_runtime_loads_the_card(trained):
    from maskwatch.vision.classify import AttributeClassifier

    out, _, _, _ = trained
    clf = AttributeClassifier.from_dir(out)
    assert clf.tasks == {"mask", "gender"}


def test_resume_continues(trained, tmp_path):
    import shutil

    from maskwatch.train.cli import run_training

    out, _, mask, _ = trained
    run = tmp_path / "run"
    run_training(_recipe("mask", [mask], run), progress=False, export_onnx=False)
    run_training(_recipe("mask", [mask], run, epochs=2), progress=False, resume=True, export_onnx=False)
    hist = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2]
    assert "masked_faces" not in json.loads((run / "mask.json").read_text())["crop"]  # one head: no reframe
    shutil.rmtree(run)


def test_keep_last_exports_the_last_epoch(trained, tmp_path):
    import onnxruntime as ort

    from maskwatch.train.nets import build

    _, _, mask, _ = trained
    run = tmp_path / "last"
    _train("mask", [mask], run, epochs=3, keep="last", lr=3e-3)
    hist = json.loads((run / "history.json").read_text())
    assert hist["kept"] == "last" and len(hist["epochs"]) == 3
    model = build("mnv2-attr", ("mask",), pretrained=False)
    model.load_state_dict(torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["model"])
    model.eval()
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))["mask"].numpy()
    got = ort.InferenceSession(str(run / "mask.onnx"), providers=["CPUExecutionProvider"]).run(
        ["mask"], {"input": x}
    )
    np.testing.assert_allclose(got[0], ref, atol=1e-4, rtol=1e-3)


def test_train_only_one_head_keeps_features_and_the_other_head_exactly(trained, tmp_path):
    import onnxruntime as ort

    out, _, mask, gender = trained
    run = tmp_path / "gender_only"
    _train("attributes", [mask, gender], run, epochs=2, init=str(out / "best.pt"), train_only="gender",
           keep="last", lr=1e-2)  # fmt: skip
    x = np.random.default_rng(2).normal(size=(4, 3, 32, 32)).astype(np.float32)

    def run_onnx(d):
        sess = ort.InferenceSession(str(d / "attributes.onnx"), providers=["CPUExecutionProvider"])
        return sess.run(["mask", "gender"], {"input": x})

    (m0, g0), (m1, g1) = run_onnx(out), run_onnx(run)
    np.testing.assert_array_equal(m1, m0)  # BN statistics and the mask head untouched
    assert np.abs(g1 - g0).max() > 1e-3  # the gender head learnt
    assert json.loads((run / "history.json").read_text())["config"]["train_only"] == "gender"


def test_sample_weights_balance_tasks_and_classes():
    from maskwatch.train.loop import Split, sample_weights

    labels = np.array([[0, -1]] * 10 + [[1, -1]] * 30 + [[1, 0]] * 5 + [[1, 1]] * 55)
    primary = np.array([0] * 40 + [1] * 60)
    n = len(labels)
    s = Split(
        np.zeros((n, 4, 4, 3), np.uint8), labels, np.zeros((n, 5, 2)), np.zeros(n), np.zeros(n, bool), primary
    )
    w = sample_weights(s, primary)
    assert np.isclose(w[:10].sum(), 0.25) and np.isclose(w[10:40].sum(), 0.25)
    assert np.isclose(w[40:45].sum(), 0.25) and np.isclose(w[45:].sum(), 0.25)


def test_oversampling_a_folder_or_a_class_folder_keeps_class_balance(tmp_path):
    from maskwatch.train.data import load_folder
    from maskwatch.train.loop import make_split, sample_weights

    big = load_folder(_write_set(tmp_path / "big", ["with_mask", "without_mask"], 40), 32)
    small_root = _write_set(
        tmp_path / "small", ["with_mask", "without_mask", "mask_weared_incorrect"], 10, 32, 1
    )
    small = load_folder(small_root, 32)

    def weights(oversample):  # two mask labels: incorrect folds into no_mask
        split = make_split([big, small], {"mask": ("mask", "no_mask")}, False, oversample)
        return split, sample_weights(split)

    split, plain = weights(None)
    _, over = weights({str(small_root): 4.0})
    _, rare = weights({str(small_root): 4.0, str(small_root / "mask_weared_incorrect"): 20.0})
    y, in_small = split.labels[:, 0], split.source == 1
    incorrect = np.r_[
        np.zeros(len(big), bool), [Path(f).parent.name == "mask_weared_incorrect" for f in small.files]
    ]
    for w in (plain, over, rare):
        assert np.isclose(w[y == 0].sum(), 0.5) and np.isclose(w[y == 1].sum(), 0.5)
    assert np.isclose(plain[in_small & (y == 0)].sum(), 0.1)  # 10 of 50 masked faces
    assert np.isclose(over[in_small & (y == 0)].sum(), 0.25)  # 10*4 / (40 + 10*4)
    # no_mask: big 40, small without_mask 10*4, the class folder's 10*20 (its factor overrides the set's)
    assert np.isclose(rare[incorrect].sum(), 0.5 * 200 / 280)
    assert np.isclose(rare[incorrect][0] / rare[in_small & (y == 1) & ~incorrect][0], 5.0)
    assert np.isclose(rare[incorrect][0] / rare[~in_small & (y == 1)][0], 20.0)


def test_drawn_masks_worn_properly_or_wrongly_on_unmasked_faces():
    from maskwatch.train.data import DEFAULT_LANDMARKS
    from maskwatch.train.loop import TrainConfig, cpu_augment, label_index

    n = 400
    batch = np.full((n, 64, 64, 3), (30, 160, 30), np.uint8)
    lms = np.repeat(DEFAULT_LANDMARKS[None], n, 0)
    cfg = TrainConfig(arch="mnv2-attr", incorrect_mask_p=0.2, occlusion_p=0.0, jpeg_p=0.0)
    unmasked = np.arange(n) < n // 2
    out, drawn = cpu_augment(batch, lms, np.zeros(n, bool), cfg, np.random.default_rng(0), unmasked)
    changed = (np.abs(out.astype(int) - batch).sum(3) > 10).any((1, 2))
    assert not changed[~unmasked].any() and not (drawn[~unmasked] != "").any()  # masked rows: untouched
    proper, wrong = drawn == "mask", drawn == "incorrect"
    # about 20 % each: properly worn (these become `mask`) and wrongly worn (`incorrect`)
    assert 0.1 < proper[unmasked].mean() < 0.3 and 0.1 < wrong[unmasked].mean() < 0.3
    assert changed[proper | wrong].all() and not changed[drawn == ""].any()
    # a wrongly worn drawn mask is `incorrect` for a three-label head, `no_mask` for a two-label one
    assert label_index(("mask", "no_mask", "incorrect"), "incorrect") == 2
    assert label_index(("mask", "no_mask"), "incorrect") == 1


def test_oversample_option_names_data_or_class_folders(tmp_path):
    from click.testing import CliRunner

    from maskwatch.train.cli import train

    d = _write_set(tmp_path / "g", ["man", "woman"], 2)
    base = ["gender", "--data", str(d), "--arch", "mnv2-attr", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(train, [*base, "--oversample", str(tmp_path / "other") + "=3"])
    assert res.exit_code != 0 and "oversample must name data folders" in res.output
    res = CliRunner().invoke(train, [*base, "--oversample", str(d) + "=x"])
    assert res.exit_code != 0 and "DIR=FACTOR" in res.output
    factors = {str(d): 2.0, str(d / "woman"): 3.0}  # a class folder inside a --data folder is fine
    assert _recipe("gender", [d], tmp_path / "o", oversample=factors).oversample == factors


def test_train_command(tmp_path):
    from click.testing import CliRunner

    from maskwatch.train.cli import train

    d = _write_set(tmp_path / "g", ["man", "woman"], 6)
    args = ["gender", "--data", str(d), "--arch", "mnv2-attr", "--out", str(tmp_path / "o"), "--size", "32"]
    args += [
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--no-pretrained",
        "--no-progress",
        "--workers",
        "1",
        "--threads",
        "2",
        "--quantize",
    ]
    res = CliRunner().invoke(train, args)
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "o" / "gender.json").read_text())
    assert list(card["outputs"]) == ["gender"] and (tmp_path / "o" / "gender.onnx").is_file()
    # without a recipe: the defaults of recipe.TrainRecipe, recorded whole
    recipe = card["training"]["recipe"]
    assert card["training"]["recipe_file"] is None and recipe["kind"] == "train"
    assert recipe["low_res"] == 0.35 and recipe["synthetic_mask"] == 0.4 and recipe["lr"] == 1e-3
    assert recipe["epochs"] == 1 and recipe["quantize"] is True and recipe["patience"] == 5
    assert (
        card["quantization"]["float_model"] == "gender-fp32.onnx"
        and (tmp_path / "o" / "gender-fp32.onnx").is_file()
    )
    from maskwatch.vision.classify import AttributeClassifier

    clf = AttributeClassifier.from_dir(tmp_path / "o")  # the int8 graph runs in the app
    probs = clf.predict(
        np.zeros((64, 64, 3), np.uint8), [__import__("maskwatch").Face(box=(8, 8, 56, 56), score=0.9)]
    )
    assert probs["gender"].shape == (1, 2)
