"""Pipeline: detect -> track -> classify only when needed -> vote; real video end to end."""

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from maskwatch.config import Settings
from maskwatch.sources import open_source
from maskwatch.vision.classify import AttributeClassifier
from maskwatch.vision.detect import YuNetDetector
from maskwatch.vision.pipeline import Pipeline
from maskwatch.vision.track import IouTracker
from vision_helpers import GREEN, MASK_LABELS_3, RED, YELLOW, FakeDetector, face_canvas, make_tiny_model

VIDEO = "videos/916241958_opencv_mask_detection__mask.mp4"  # 388x218, one masked face


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def clf(model_dir):
    return AttributeClassifier.from_dir(model_dir)


def drift(box, i, step=1):
    return (box[0] + i * step, box[1], box[2] + i * step, box[3])


def run(pipe, frames_boxes_colors):
    results = []
    for boxes, colors in frames_boxes_colors:
        frame = face_canvas(list(zip(boxes, colors, strict=True)))
        results.append(pipe.process(frame, source="test"))
    return results


def test_tracks_classify_every_k_frames(clf):
    a, b = (10, 10, 60, 60), (150, 100, 200, 150)
    cyan = (220, 220, 40)  # BGR: no_mask and man, both decided
    seq = [([drift(a, i), drift(b, -i)], [RED, cyan]) for i in range(25)]
    det = FakeDetector([boxes for boxes, _ in seq])
    pipe = Pipeline(det, clf, reclassify_every=10)
    classified = []
    results = []
    for boxes, colors in seq:
        results.append(pipe.process(face_canvas(list(zip(boxes, colors, strict=True)))))
        classified.append(pipe.classified_last)
    ids = [[f.track_id for f in r.faces] for r in results]
    assert ids == [ids[0]] * 25 and len(set(ids[0])) == 2  # two stable ids (process-unique, not 1 and 2)
    assert classified == [2] + [0] * 9 + [2] + [0] * 9 + [2] + [0] * 4
    assert all(r.faces[0].mask.label == "mask" and r.faces[1].mask.label == "no_mask" for r in results)
    assert set(results[0].timings_ms) == {"detect", "track", "classify", "total"}
    assert [r.frame_index for r in results[:3]] == [0, 1, 2] and results[0].frame_size == (320, 240)


def test_moved_or_new_faces_are_classified_at_once(clf):
    a = (10, 10, 60, 60)
    seq = [[a], [a], [(40, 10, 90, 60)], [(40, 10, 90, 60), (200, 100, 250, 150)]]
    pipe = Pipeline(FakeDetector(seq), clf, reclassify_every=10)
    counts = []
    for boxes in seq:
        pipe.process(face_canvas([(b, RED) for b in boxes]))
        counts.append(pipe.classified_last)
    assert counts == [1, 0, 1, 1]  # first sight, still, big move, a new face


def test_voting_resists_a_flicker_and_follows_a_real_change(clf):
    box = (10, 10, 60, 60)
    colors = [RED] * 6 + [GREEN] + [RED] * 3 + [GREEN] * 6
    # the stand-in classifier reads the label from the face's colour, so a recoloured face must stay the
    # same person here: no appearance check
    pipe = Pipeline(FakeDetector([[box]]), clf, reclassify_every=1, check_appearance=False)
    results = run(pipe, [([box], [c]) for c in colors])
    labels = [r.faces[0].mask.label for r in results]
    assert results[6].faces[0].mask.confidence < results[5].faces[0].mask.confidence
    assert labels[6] == "mask"  # one odd frame does not flip the label
    assert labels[-1] == "no_mask"  # a lasting change does
    raw = Pipeline(FakeDetector([[box]]), clf, track=False)
    raw_labels = [r.faces[0].mask.label for r in run(raw, [([box], [c]) for c in colors])]
    assert raw_labels[6] == "no_mask" and raw.classified_last == 1  # no tracking: every face, every frame


def test_three_label_model_votes_incorrect(tmp_path):
    clf3 = AttributeClassifier.from_dir(make_tiny_model(tmp_path, mask_labels=MASK_LABELS_3))
    box = (10, 10, 60, 60)
    colors = [RED] * 4 + [YELLOW] * 8  # the mask slips under the nose
    pipe = Pipeline(FakeDetector([[box]]), clf3, reclassify_every=1)
    labels = [r.faces[0].mask.label for r in run(pipe, [([box], [c]) for c in colors])]
    assert labels[:4] == ["mask"] * 4 and labels[-1] == "incorrect"


def test_no_tracking_mode(clf):
    pipe = Pipeline(FakeDetector([[(10, 10, 60, 60), (100, 10, 150, 60)]]), clf, track=False)
    r = run(pipe, [([(10, 10, 60, 60), (100, 10, 150, 60)], [RED, GREEN])])[0]
    assert [f.track_id for f in r.faces] == [None, None] and r.timings_ms["track"] == 0.0
    assert [f.mask.label for f in r.faces] == ["mask", "no_mask"]


def test_gender_off(clf):
    pipe = Pipeline(FakeDetector([[(10, 10, 60, 60)]]), clf, gender=False)
    assert pipe.tasks == {"mask"}
    f = run(pipe, [([(10, 10, 60, 60)], [RED])])[0].faces[0]
    assert f.mask.label == "mask" and f.gender.label == "uncertain" and f.gender.confidence == 0.0


def test_no_faces_and_reset(clf):
    pipe = Pipeline(FakeDetector([[]]), clf)
    r = pipe.process(np.zeros((48, 64, 3), np.uint8), frame_index=7, timestamp=5.0)
    assert r.faces == () and r.frame_index == 7 and r.timestamp == 5.0
    assert pipe.process(np.zeros((48, 64, 3), np.uint8)).frame_index == 8
    pipe.reset()
    assert pipe.process(np.zeros((48, 64, 3), np.uint8)).frame_index == 0


def test_grey_and_bgra_frames(clf):
    pipe = Pipeline(FakeDetector([[(10, 10, 60, 60)]]), clf, track=False)
    assert len(pipe.process(np.zeros((48, 64), np.uint8)).faces) == 1
    assert pipe.process(np.zeros((48, 64, 4), np.uint8)).frame_size == (64, 48)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        pipe.process(np.zeros((48, 64, 3), np.float32))


def test_package_exports():
    import maskwatch.vision as vision

    assert vision.Pipeline is Pipeline and vision.AttributeClassifier is AttributeClassifier
    with pytest.raises(AttributeError):
        vision.nope  # noqa: B018


def test_from_settings(yunet_path, model_dir):
    s = Settings(
        detector={"yunet_path": str(yunet_path)},
        models={"model_dir": str(model_dir), "reclassify_every": 3},
        privacy={"gender_enabled": False},
    )
    pipe = Pipeline.from_settings(s)
    assert pipe.detector.name == "yunet" and pipe.reclassify_every == 3 and not pipe.gender
    shared = Pipeline.from_settings(s, detector=pipe.detector, classifier=pipe.classifier)
    assert shared.detector is pipe.detector and shared.tracker is not pipe.tracker


def video_frames(shared_data, n):
    with open_source(shared_data / VIDEO) as src:
        return [f.image for f, _ in zip(src, range(n), strict=False)]


def test_real_video_end_to_end_stable_ids(shared_data, yunet_path, clf):
    frames = video_frames(shared_data, 60)
    pipe = Pipeline(YuNetDetector(yunet_path), clf, reclassify_every=10)
    results = [pipe.process(f, source=VIDEO) for f in frames]
    ids = [f.track_id for r in results for f in r.faces]
    assert len(ids) >= 55  # the face is found in (nearly) every frame...
    assert len(set(ids)) == 1  # ...and keeps one id


def test_pipelines_share_models_across_threads(shared_data, yunet_path, clf):
    frames = video_frames(shared_data, 12)
    det = YuNetDetector(yunet_path)

    def one_stream(_):
        pipe = Pipeline(det, clf, tracker=IouTracker(ids=itertools.count(1)))  # same ids in each stream
        return [[(f.box, f.track_id, f.mask) for f in pipe.process(im).faces] for im in frames]

    serial = one_stream(0)
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(one_stream, range(3))) == [serial] * 3


class ColourBlobDetector:
    """Finds the one non-background rectangle of a synthetic frame (a 'face'); counts calls."""

    name = "blob"

    def __init__(self):
        self.calls = 0

    def detect(self, frame):
        from maskwatch.types import Face

        self.calls += 1
        ys, xs = np.nonzero((frame != 30).any(axis=2))
        if len(xs) == 0:
            return []
        return [Face((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), 0.9)]


def test_detect_every_n_frames_coasts_tracked_faces(clf):
    det = ColourBlobDetector()
    pipe = Pipeline(det, clf, detect_every=3)
    boxes = [drift((10, 50, 60, 100), i, step=4) for i in range(12)]
    results = [pipe.process(face_canvas([(b, RED)])) for b in boxes]
    assert det.calls == 4  # frames 0, 3, 6, 9
    assert all(len(r.faces) == 1 for r in results) and len({r.faces[0].track_id for r in results}) == 1
    assert all(r.faces[0].mask.label == "mask" for r in results)
    assert (
        results[1].timings_ms["detect"] < 1.0 and results[1].faces[0].box == results[0].faces[0].box
    )  # no motion yet
    for i in (7, 8, 10, 11):  # once the track has a velocity, coasted boxes follow the face
        assert abs(results[i].faces[0].box[0] - boxes[i][0]) <= 1.0, (i, results[i].faces[0].box, boxes[i])


def test_detect_every_still_detects_each_frame_without_faces(clf):
    det = ColourBlobDetector()
    pipe = Pipeline(det, clf, detect_every=5)
    for _ in range(4):
        pipe.process(np.full((48, 64, 3), 30, np.uint8))
    assert det.calls == 4  # nothing to follow: look for new faces on every frame
    assert Pipeline(det, clf, track=False, detect_every=5).detect_every == 1


@pytest.mark.parametrize(
    "video, expected",
    [
        ("Gituatu_face-mask-detection__mask.mp4", "mask"),
        ("Gituatu_face-mask-detection__nomask.mp4", "no_mask"),
    ],
)
def test_real_video_with_the_bundled_model(shared_data, yunet_path, video, expected):
    """The shipped model through the whole pipeline on real clips (a missing bundled model fails)."""
    clf = AttributeClassifier.from_dir()
    pipe = Pipeline(YuNetDetector(yunet_path), clf, detect_every=2)
    with open_source(shared_data / "videos" / video) as src:
        labels = [
            f.mask.label
            for frame, _ in zip(src, range(40), strict=False)
            for f in pipe.process(frame.image).faces
        ]
    assert len(labels) >= 35 and labels.count(expected) >= 0.8 * len(labels), labels
