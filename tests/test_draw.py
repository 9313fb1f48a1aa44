import numpy as np

from maskwatch.types import Attribute, Face, FrameResult
from maskwatch.vision.draw import COLORS, annotate, crop_face, face_label


def test_annotate_colours_and_labels():
    frame = np.zeros((240, 320, 3), np.uint8)
    faces = [
        Face((20, 60, 80, 120), 0.9, track_id=1, mask=Attribute("mask", 0.97), gender=Attribute("man", 0.9)),
        Face((120, 60, 180, 120), 0.9, track_id=2, mask=Attribute("no_mask", 0.91)),
        Face((220, 60, 280, 120), 0.9, mask=Attribute("uncertain", 0.55)),
    ]
    out = annotate(frame, FrameResult("t", 0, 0.0, faces))
    assert frame.max() == 0  # the input is not modified
    for f, key in zip(faces, ("mask", "no_mask", "uncertain"), strict=True):
        assert tuple(out[int(f.box[3]), int(f.box[0]) + 20]) == COLORS[key]  # bottom edge of the box
    assert face_label(faces[0]) == ["#1 mask 97%", "man 90%"]
    assert face_label(faces[1], gender=False) == ["#2 no mask 91%"]
    top_left = annotate(frame, FrameResult("t", 0, 0.0, [Face((0, 0, 30, 30), 0.9)]))  # label must fit
    assert top_left.shape == frame.shape


def test_crop_face_clips_to_frame():
    frame = np.arange(100 * 100 * 3, dtype=np.uint8).reshape(100, 100, 3)
    f = Face((10, 10, 50, 50), 0.9)
    assert crop_face(frame, f, margin=0.0).shape == (40, 40, 3)
    assert crop_face(frame, f).shape == (56, 56, 3)  # 20% of the size on each side
    assert crop_face(frame, Face((80, 80, 100, 100), 0.9), margin=0.5).shape == (30, 30, 3)
