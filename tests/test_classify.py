"""Attribute classifier: model cards drive crop, input and labels; one batched ONNX call per model."""

import json

import numpy as np
import pytest

from maskwatch.types import Face
from maskwatch.vision.classify import AttributeClassifier, ModelCardError, ModelNotFoundError
from vision_helpers import BLUE, GREEN, GREY, MASK_LABELS_3, RED, YELLOW, face_canvas, make_tiny_model

BOXES = [(10, 10, 60, 60), (100, 10, 150, 60), (200, 10, 250, 60), (10, 100, 60, 150)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def clf(model_dir):
    return AttributeClassifier.from_dir(model_dir)


def frame_and_faces(colors):
    frame = face_canvas(list(zip(BOXES, colors, strict=False)))
    return frame, [Face(b, 0.9) for b in BOXES[: len(colors)]]


def test_labels_from_card(clf):
    frame, faces = frame_and_faces([RED, GREEN, BLUE, GREY])
    out = clf.classify(frame, faces)
    assert [f.mask.label for f in out] == ["mask", "no_mask", "uncertain", "uncertain"]
    assert [f.gender.label for f in out] == ["woman", "uncertain", "man", "uncertain"]
    assert out[0].mask.confidence > 0.99 and 0.4 < out[3].mask.confidence < 0.6
    assert out[0].box == faces[0].box and out[0].score == faces[0].score
    assert clf.tasks == {"mask", "gender"} and clf.cards[0]["name"] == "tiny"


def test_one_batched_call_per_model(clf, monkeypatch):
    model = clf.models[0]
    calls = []
    real_run = model.session.run

    class Spy:
        def run(self, names, feeds):
            calls.append(feeds["input"].shape)
            return real_run(names, feeds)

    monkeypatch.setattr(model, "session", Spy())
    frame, faces = frame_and_faces([RED, GREEN, BLUE, GREY])
    clf.classify(frame, faces)
    assert calls == [(4, 3, 32, 32)]
    assert clf.classify(frame, []) == [] and len(calls) == 1  # no faces: no call


def test_fixed_batch_graph_and_probability_outputs(tmp_path):
    d = make_tiny_model(tmp_path / "m", batch=1, activation="none")
    clf = AttributeClassifier.from_dir(d)
    frame, faces = frame_and_faces([RED, GREEN])
    assert [f.mask.label for f in clf.classify(frame, faces)] == ["mask", "no_mask"]


def test_uncertain_threshold_override_and_task_subset(model_dir):
    pinkish = (100, 100, 140)  # BGR, mask with p ~ 0.998
    frame, faces = frame_and_faces([pinkish, RED])
    strict = AttributeClassifier.from_dir(model_dir, uncertain_threshold=0.999)
    assert [f.mask.label for f in strict.classify(frame, faces)] == ["uncertain", "mask"]
    loose = AttributeClassifier.from_dir(model_dir)
    only_mask = loose.classify(frame, faces, tasks={"mask"})
    assert only_mask[0].mask.label == "mask" and only_mask[0].gender.label == "uncertain"
    assert only_mask[0].gender.confidence == 0.0


def test_two_models_one_task_each(tmp_path):
    d = tmp_path / "m"
    make_tiny_model(d, "maskonly", outputs=("mask",))
    make_tiny_model(d, "genderonly", outputs=("gender",))
    clf = AttributeClassifier.from_dir(d)
    assert clf.tasks == {"mask", "gender"} and len(clf.models) == 2
    frame, faces = frame_and_faces([RED])
    f = clf.classify(frame, faces)[0]
    assert (f.mask.label, f.gender.label) == ("mask", "woman")


def test_align5_crop_uses_landmarks(tmp_path):
    # template: where the 5 points go in the 32 px chip
    template = [[10, 12], [22, 12], [16, 18], [11, 24], [21, 24]]
    clf = AttributeClassifier.from_dir(
        make_tiny_model(tmp_path / "m", crop={"rule": "align5", "template": template})
    )
    frame = face_canvas([((100, 100, 160, 160), RED)], size=(320, 240))
    lm = [[115, 120], [145, 120], [130, 135], [118, 148], [142, 148]]
    face = Face((10, 10, 60, 60), 0.9, landmarks=lm)  # box is elsewhere on purpose: alignment wins
    assert clf.classify(frame, [face])[0].mask.label == "mask"
    no_lm = Face((100, 100, 160, 160), 0.9)  # no landmarks (res10): falls back to the box crop
    assert clf.classify(frame, [no_lm])[0].mask.label == "mask"


def test_crop_box_rule_margin_and_square(model_dir):
    clf = AttributeClassifier.from_dir(model_dir)
    m = clf.models[0]
    m.margin, m.square = 0.5, True
    frame = face_canvas([((100, 100, 120, 140), RED)])
    chip = m.crop(frame, Face((100, 100, 120, 140), 0.9))
    assert chip.shape == (32, 32, 3)
    assert (chip[16, 16] == RED).all() and (chip[16, 0] != RED).any()  # the margin shows background


def test_masked_faces_get_gender_from_a_crop_framed_as_when_bare(tmp_path):
    # a detector boxes a masked face higher; the card says how, and the gender crop moves back down
    shift = {
        "rule": "box",
        "margin": 0.0,
        "square": True,
        "masked_faces": {"shift": [0, -0.5], "log_scale": 0},
    }
    plain = AttributeClassifier.from_dir(make_tiny_model(tmp_path / "a", crop={"rule": "box", "margin": 0.0}))
    moved = AttributeClassifier.from_dir(make_tiny_model(tmp_path / "b", crop=shift))
    masked, bare = (100, 60, 140, 100), (200, 60, 240, 100)
    frame = face_canvas(
        [(masked, RED), ((100, 100, 140, 140), BLUE), (bare, GREEN), ((200, 100, 240, 140), BLUE)]
    )
    faces = [Face(masked, 0.9), Face(bare, 0.9)]
    a, b = plain.predict(frame, faces), moved.predict(frame, faces)
    np.testing.assert_array_equal(a["mask"], b["mask"])  # the mask head reads the detector's crop
    assert a["gender"][0, 1] > 0.99 and b["gender"][0, 1] < 0.9  # woman (red) -> half red, half blue
    np.testing.assert_array_equal(a["gender"][1], b["gender"][1])  # no mask: the same crop
    assert b["gender"].shape == (2, 2) and set(moved.predict(frame, faces, {"gender"})) == {"gender"}
    x1, y1, x2, y2 = moved.models[0].bare_face_box(faces[0])
    assert (x1, y1, x2, y2) == (100, 80, 140, 120)


def test_two_and_three_label_mask_cards_both_load_and_work(tmp_path, clf):
    three = AttributeClassifier.from_dir(make_tiny_model(tmp_path / "m3", mask_labels=MASK_LABELS_3))
    assert three.labels("mask") == ("mask", "no_mask", "incorrect")
    assert clf.labels("mask") == ("mask", "no_mask")  # an older card (like the shipped one)
    frame, faces = frame_and_faces([RED, GREEN, YELLOW, GREY])
    assert [f.mask.label for f in three.classify(frame, faces)] == [
        "mask",
        "no_mask",
        "incorrect",
        "uncertain",
    ]
    assert three.predict(frame, faces)["mask"].shape == (4, 3)
    assert [f.mask.label for f in clf.classify(frame, faces)][:2] == ["mask", "no_mask"]


def test_masked_faces_reframe_applies_to_masks_worn_incorrectly(tmp_path):
    # a mask under the nose still hides the chin: gender is read from the moved crop, as for `mask`
    box = {"rule": "box", "margin": 0.0, "square": True}
    crop = {**box, "masked_faces": {"shift": [0, -0.5], "log_scale": 0}}
    plain = AttributeClassifier.from_dir(make_tiny_model(tmp_path / "a", crop=box, mask_labels=MASK_LABELS_3))
    moved = AttributeClassifier.from_dir(
        make_tiny_model(tmp_path / "b", crop=crop, mask_labels=MASK_LABELS_3)
    )
    incorrect, bare = (100, 60, 140, 100), (200, 60, 240, 100)
    frame = face_canvas(
        [(incorrect, YELLOW), ((100, 100, 140, 140), BLUE), (bare, GREEN), ((200, 100, 240, 140), BLUE)]
    )
    faces = [Face(incorrect, 0.9), Face(bare, 0.9)]
    a, b = plain.predict(frame, faces), moved.predict(frame, faces)
    assert b["mask"][0].argmax() == 2  # incorrect
    assert a["gender"][0, 1] > 0.99 and b["gender"][0, 1] < 0.9  # woman (yellow) -> half yellow, half blue
    np.testing.assert_array_equal(a["gender"][1], b["gender"][1])  # no mask: the same crop


def test_missing_models_are_clear(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no attribute model"):
        AttributeClassifier.from_dir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="not found"):
        AttributeClassifier.from_dir(tmp_path / "nope")
    d = make_tiny_model(tmp_path / "m")
    (d / "tiny.onnx").unlink()
    with pytest.raises(ModelNotFoundError, match="missing"):
        AttributeClassifier.from_dir(d)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c["outputs"]["mask"].update(labels=["mask", "cat"]), "not valid"),
        (lambda c: c["outputs"]["mask"].update(labels=["mask", "uncertain"]), "not valid"),
        (lambda c: c["outputs"]["mask"].update(labels=["mask", "mask"]), "different labels"),
        (lambda c: c["outputs"]["mask"].update(labels=["mask", "incorrect"]), "including"),
        (lambda c: c["outputs"]["mask"].update(labels="mask,no_mask"), "list of strings"),
        (lambda c: c["outputs"]["mask"].pop("labels"), "list of strings"),
        # the graph's output is two wide: a card listing three labels does not fit it
        (lambda c: c["outputs"]["mask"].update(labels=["mask", "no_mask", "incorrect"]), "has 2 values"),
        (lambda c: c["outputs"]["mask"].update(output="nope"), "not in"),
        (lambda c: c["input"].update(name="x"), "not in"),
        (lambda c: c["input"].update(layout="CHWN"), "unsupported"),
        (lambda c: c.pop("input"), "bad field"),
        (lambda c: c["crop"].update(masked_faces={"shift": [0, -0.1]}), "bad field"),
        (
            lambda c: (
                c["crop"].update(masked_faces={"shift": [0, 0], "log_scale": 0}),
                c["outputs"].pop("gender"),
            ),
            "both heads",
        ),
    ],
)
def test_bad_cards_are_rejected(tmp_path, edit, match):
    d = make_tiny_model(tmp_path / "m")
    card = json.loads((d / "tiny.json").read_text())
    edit(card)
    (d / "tiny.json").write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match=match):
        AttributeClassifier.from_dir(d)


def test_bundled_model_reads_real_faces():
    """The shipped model must be there (a missing one fails, it is part of the product) and must tell a
    masked face from a bare one (real photos from ../shared, else a photo with a drawn mask)."""
    from web_helpers import face_tiles

    clf = AttributeClassifier.from_dir()
    assert "mask" in clf.tasks and "gender" in clf.tasks
    tiles = face_tiles()
    box = Face((15, 15, 185, 185), 0.9)  # the tiles are 200 px face crops
    masked = clf.classify(tiles["masked"], [box])[0]
    bare = clf.classify(tiles["unmasked"], [box])[0]
    assert bare.mask.label == "no_mask" and bare.mask.confidence >= 0.8, bare.mask
    if tiles["real"]:
        assert masked.mask.label == "mask" and masked.mask.confidence >= 0.8, masked.mask
    else:  # a mask drawn on a photo: never taken for a bare face (the model is unsure, 0.69 mask)
        assert masked.mask.label in ("mask", "uncertain"), masked.mask
