"""Detector backends on real images, YuNet download/caching, fallback, thread safety."""

import functools
import hashlib
import http.server
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from maskwatch.config import DetectorSettings, default_cache_dir
from maskwatch.types import Face
from maskwatch.vision.detect import (
    DetectorError,
    FaceDetector,
    Res10Detector,
    StillPhotoDetector,
    YuNetDetector,
    create_detector,
    ensure_yunet,
    still_photo_detector,
)
from maskwatch.vision.geometry import iou_matrix
from vision_helpers import padded_crop, voc_boxes

FAKE_MODEL = b"not really an onnx file, but bytes with a known checksum\n" * 100
FAKE_SHA = hashlib.sha256(FAKE_MODEL).hexdigest()


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server serving tmp_path/www; yields (base_url, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def yunet(yunet_path):
    return YuNetDetector(yunet_path)


@pytest.fixture(scope="module")
def res10():
    return Res10Detector()


def test_download_checks_sha_and_caches(http_dir):
    base, www = http_dir
    (www / "face_detection_yunet_2023mar.onnx").write_bytes(FAKE_MODEL)
    s = DetectorSettings(yunet_url=f"{base}/face_detection_yunet_2023mar.onnx", yunet_sha256=FAKE_SHA)
    path = ensure_yunet(s)
    assert path == default_cache_dir() / "face_detection_yunet_2023mar.onnx"
    assert path.read_bytes() == FAKE_MODEL
    (www / "face_detection_yunet_2023mar.onnx").unlink()
    assert ensure_yunet(s) == path  # second time: from the cache, no network


def test_download_with_wrong_checksum_is_rejected(http_dir, caplog):
    base, www = http_dir
    (www / "y.onnx").write_bytes(FAKE_MODEL + b"tampered")
    s = DetectorSettings(yunet_url=f"{base}/y.onnx", yunet_sha256=FAKE_SHA)
    with caplog.at_level(logging.WARNING):
        assert ensure_yunet(s) is None
    assert "rejected" in caplog.text and "sha256" in caplog.text
    assert not (default_cache_dir() / "y.onnx").exists()
    assert list(default_cache_dir().iterdir()) == []  # no partial download left behind


def test_corrupted_cache_is_replaced(http_dir):
    base, www = http_dir
    (www / "y.onnx").write_bytes(FAKE_MODEL)
    cached = default_cache_dir() / "y.onnx"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage")
    assert ensure_yunet(DetectorSettings(yunet_url=f"{base}/y.onnx", yunet_sha256=FAKE_SHA)) == cached
    assert cached.read_bytes() == FAKE_MODEL


def test_offline_falls_back_to_res10_with_one_log_line(caplog):
    s = DetectorSettings(yunet_url="http://127.0.0.1:9/face_detection_yunet_2023mar.onnx")  # nothing listens
    with caplog.at_level(logging.WARNING, logger="maskwatch.vision.detect"):
        det = create_detector(s)
    assert det.name == "res10" and isinstance(det, FaceDetector)
    assert len(caplog.records) == 1, caplog.text  # one clear line: why, and what is used instead
    assert "res10" in caplog.text and "could not download" in caplog.text
    with pytest.raises(DetectorError, match="YuNet model unavailable"):
        create_detector(s.model_copy(update={"backend": "yunet"}))


def test_downloads_disabled_and_bad_paths(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert ensure_yunet(DetectorSettings(allow_download=False)) is None
    assert "disabled" in caplog.text
    with pytest.raises(DetectorError, match="not found"):
        ensure_yunet(DetectorSettings(yunet_path=tmp_path / "missing.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(DetectorError, match="cannot load YuNet"):
        create_detector(DetectorSettings(yunet_path=bad))


def test_backends_by_settings(yunet_path):
    assert create_detector(DetectorSettings(backend="res10")).name == "res10"
    det = create_detector(DetectorSettings(yunet_path=yunet_path, score_threshold=0.7))
    assert det.name == "yunet" and det.score_threshold == 0.7


def test_input_scale(yunet_path):
    d = YuNetDetector(yunet_path)
    assert d.input_scale(400, 300) == pytest.approx(1.6)  # small photos are upscaled
    assert d.input_scale(640, 480) == 1.0
    assert d.input_scale(1920, 1080) == 1.0  # shrinking would lose 16 px faces
    assert YuNetDetector(yunet_path, min_face_px=48).input_scale(1920, 1080) == pytest.approx(1 / 3)


def test_blank_frames_and_tiny_frames(yunet, res10):
    for det in (yunet, res10):
        assert det.detect(np.zeros((480, 640, 3), np.uint8)) == []
        assert det.detect(np.zeros((20, 30, 3), np.uint8)) == []


@pytest.mark.parametrize("backend", ["yunet", "res10"])
@pytest.mark.parametrize("folder", ["with_mask", "without_mask"])
def test_real_face_crops_masked_and_not(shared_data, backend, folder, request):
    det = request.getfixturevalue(backend)
    files = sorted((shared_data / "mask/facemask12k/test" / folder).glob("*.jpg"))[:10]
    found = 0
    for f in files:
        img = padded_crop(f)
        faces = det.detect(img)
        h, w = img.shape[:2]
        truth = np.array([[w / 3, h / 3, 2 * w / 3, 2 * h / 3]])
        if faces and iou_matrix(truth, [fc.box for fc in faces]).max() > 0.3:
            found += 1
    assert found >= 7, f"{backend} found {found}/10 {folder} faces"


def test_yunet_landmarks_and_score(shared_data, yunet):
    img = padded_crop(sorted((shared_data / "mask/facemask12k/test/without_mask").glob("*.jpg"))[1])
    face = max(yunet.detect(img), key=lambda f: f.score)
    lm = np.array(face.landmarks)
    assert lm.shape == (5, 2) and 0.6 <= face.score <= 1.0
    x1, y1, x2, y2 = face.box
    assert ((lm[:, 0] > x1 - 5) & (lm[:, 0] < x2 + 5) & (lm[:, 1] > y1 - 5) & (lm[:, 1] < y2 + 5)).all()
    assert lm[0, 0] < lm[1, 0]  # right eye (image left) comes first


def scene_recall(det, shared_data, n=20, min_px=16):
    """Share of annotated faces >= `min_px` found (IoU >= 0.3) in the first `n` scenes/dev photos."""
    hit = total = 0
    for xml in sorted((shared_data / "scenes/dev/annotations").glob("*.xml"))[:n]:
        name, gt, _ = voc_boxes(xml)
        img = cv2.imread(str(shared_data / "scenes/dev/images" / name))
        big = np.sqrt((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])) >= min_px
        boxes = [f.box for f in det.detect(img)]
        hits = iou_matrix(gt, boxes).max(1) >= 0.3 if boxes else np.zeros(len(gt), bool)
        hit += int((hits & big).sum())
        total += int(big.sum())
    return hit / total, total


def test_scene_photos_small_faces(shared_data, yunet, res10):
    """Real crowd photos (faces median ~20 px, many masked): YuNet finds most faces >= 16 px."""
    recall, n = scene_recall(yunet, shared_data)
    assert n >= 30 and recall >= 0.75, recall
    recall10, _ = scene_recall(res10, shared_data)
    assert recall10 >= 0.2, recall10  # the offline fallback finds far fewer small faces


def test_shared_detector_is_thread_safe(shared_data, yunet, res10):
    imgs = [cv2.imread(str(p)) for p in sorted((shared_data / "scenes/dev/images").glob("*.jpg"))[:6]]
    for det in (yunet, res10):
        serial = [[f.box for f in det.detect(im)] for im in imgs]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(lambda im, d=det: [f.box for f in d.detect(im)], imgs * 2))
        assert parallel == serial * 2


class OneFaceTopLeft:
    """A stand-in detector with a known answer: one face near the top-left corner of whatever it sees."""

    name = "fixed"

    def detect(self, frame):
        lm = [(12, 14), (22, 14), (17, 19), (13, 24), (21, 24)]
        return [Face(box=(10.0, 10.0, 24.0, 28.0), score=0.9, landmarks=lm)]


def test_still_photo_detector_maps_mirror_detections_back():
    faces = StillPhotoDetector(OneFaceTopLeft()).detect(np.zeros((60, 100, 3), np.uint8))
    assert [f.box for f in faces] == [(10.0, 10.0, 24.0, 28.0), (76.0, 10.0, 90.0, 28.0)]
    lm = np.array(faces[1].landmarks)
    # the mirror's "right eye" (image left) is the person's left eye: image x 100-12 = 88, listed second
    assert lm[:, 0].tolist() == [78.0, 88.0, 83.0, 79.0, 87.0]
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]


def test_still_photo_detector_merges_and_keeps_plain_faces(shared_data, yunet):
    thorough = StillPhotoDetector(yunet)
    for p in sorted((shared_data / "scenes/dev/images").glob("*.jpg"))[:8]:
        img = cv2.imread(str(p))
        plain = [f.box for f in yunet.detect(img)]
        both = [f.box for f in thorough.detect(img)]
        assert len(both) >= len(plain)
        if plain:  # every plain face is still there, each once
            assert (iou_matrix(plain, both).max(1) >= 0.5).all()
        if len(both) > 1:
            ious = iou_matrix(both, both) - np.eye(len(both))
            assert ious.max() <= 0.3


def test_still_photo_detector_finds_faces_in_tight_crops(shared_data, yunet):
    """Masked faces cropped at brow and chin: the border retry finds faces a plain pass misses."""
    from maskwatch.train.synth import draw_mask

    thorough = StillPhotoDetector(yunet)
    plain_found = thorough_found = 0
    for k, p in enumerate(sorted((shared_data / "gender/balajisrinivas/woman").glob("*.jpg"))[:40]):
        img = cv2.imread(str(p))
        faces = yunet.detect(img)
        if not faces:
            continue
        img = draw_mask(img, np.array(faces[0].landmarks), np.random.default_rng(k), rgb=False)
        plain_found += bool(yunet.detect(img))
        found = thorough.detect(img)
        thorough_found += bool(found)
        h, w = img.shape[:2]
        assert all(0 <= f.box[0] < f.box[2] <= w and 0 <= f.box[1] < f.box[3] <= h for f in found)
    assert thorough_found > plain_found, (thorough_found, plain_found)
    assert StillPhotoDetector(yunet, border=0).detect(np.full((80, 80, 3), 90, np.uint8)) == []


def test_still_photo_detector_follows_settings(yunet):
    assert isinstance(still_photo_detector(yunet, DetectorSettings()), StillPhotoDetector)
    assert still_photo_detector(yunet, DetectorSettings(thorough_stills=False)) is yunet
