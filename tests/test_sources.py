"""Frame sources: images, folders, videos, streams; clear errors; reconnect with backoff."""

import logging

import cv2
import numpy as np
import pytest

from maskwatch import sources
from maskwatch.sources import Frame, SourceError, VideoSource, open_source


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        cv2.imwrite(str(d / f"{i}.jpg"), np.full((20, 30, 3), i * 50, np.uint8))
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(12):
        w.write(np.full((48, 64, 3), i * 20, np.uint8))
    w.release()
    return path


def test_image_file(images):
    src = open_source(str(images / "1.jpg"))
    frames = list(src)
    assert len(frames) == 1 and frames[0].image.shape == (20, 30, 3) and frames[0].source.endswith("1.jpg")
    assert not src.is_live and not src.is_sequence


def test_folder_skips_undecodable_images(images, caplog):
    (images / "3.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    with caplog.at_level(logging.WARNING), open_source(images) as src:
        frames = list(src)
    assert [f.index for f in frames] == [0, 1, 2] and [f.source[-5:] for f in frames] == [
        "0.jpg",
        "1.jpg",
        "2.jpg",
    ]
    assert "3.jpg" in caplog.text


def test_video_file(video):
    with open_source(str(video)) as src:
        frames = list(src)
        assert src.is_sequence and not src.is_live and src.fps == pytest.approx(10.0)
    assert len(frames) == 12 and isinstance(frames[0], Frame)
    assert [f.index for f in frames] == list(range(12))
    assert frames[1].timestamp == pytest.approx(0.1, abs=0.02)  # media time for files
    src = open_source(video)
    assert next(src).index == 0 and next(src).index == 1  # a real iterator
    src.close()


def test_real_mp4(shared_data):
    with open_source(shared_data / "videos/Gituatu_face-mask-detection__video.mp4") as src:
        frames = [f for f, _ in zip(src, range(5), strict=False)]
    assert frames[-1].image.shape == (720, 1280, 3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: (d / "bad.jpg").write_bytes(b"garbage") and d / "bad.jpg", "cannot decode image"),
        (lambda d: (d / "empty.jpg").touch() or d / "empty.jpg", "cannot decode image"),
        (lambda d: (d / "bad.mp4").write_bytes(b"garbage" * 100) and d / "bad.mp4", "cannot open video"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no images"),
        (lambda d: "rtsp://127.0.0.1:9/x", "cannot open stream"),
        (lambda d: "http://127.0.0.1:9/cam.mjpg", "cannot open stream"),
        (lambda d: "97", "cannot open camera 97"),
    ],
)
def test_clear_errors(tmp_path, make, message):
    with pytest.raises(SourceError, match=message):
        open_source(make(tmp_path))


class FlakyCapture:
    """Stands in for cv2.VideoCapture: delivers `good` frames, then fails to read."""

    def __init__(self, good):
        self.good = good

    def isOpened(self):
        return True

    def read(self):
        if self.good > 0:
            self.good -= 1
            return True, np.zeros((4, 4, 3), np.uint8)
        return False, None

    def get(self, prop):
        return 25.0

    def release(self):
        pass


def test_live_source_reconnects_with_backoff(monkeypatch):
    opens, sleeps = [], []
    plan = iter([FlakyCapture(2), None, None, FlakyCapture(3), None, None, None])

    def fake_open(self):
        opens.append(1)
        cap = next(plan)
        if cap is None:
            raise SourceError("down")
        return cap

    monkeypatch.setattr(VideoSource, "_open", fake_open)
    monkeypatch.setattr(sources.time, "sleep", sleeps.append)
    src = VideoSource("rtsp://cam/x", live=True, max_retries=3)
    frames = []
    with pytest.raises(SourceError, match="did not come back after 3 retries"):
        for f in src:
            frames.append(f.index)
    assert frames == [0, 1, 2, 3, 4]  # frame numbering continues across the reconnect
    assert sleeps == [0.5, 1.0, 2.0, 0.5, 1.0, 2.0]  # exponential backoff, reset after a success


def test_files_do_not_reconnect(video, monkeypatch):
    monkeypatch.setattr(sources.time, "sleep", lambda s: pytest.fail("slept"))
    assert len(list(open_source(video, reconnect=True))) == 12
