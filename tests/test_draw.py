import re
from pathlib import Path

import numpy as np

import maskwatch.web
from maskwatch.types import MASK_LABELS, Attribute, Face, FrameResult
from maskwatch.vision.draw import COLORS, HEX_COLORS, annotate, crop_face, face_label


def test_annotate_colours_and_labels():
    frame = np.zeros((240, 320, 3), np.uint8)
    faces = [
        Face((20, 60, 80, 120), 0.9, track_id=1, mask=Attribute("mask", 0.97), gender=Attribute("man", 0.9)),
        Face((120, 60, 180, 120), 0.9, track_id=2, mask=Attribute("no_mask", 0.91)),
        Face((220, 60, 280, 120), 0.9, mask=Attribute("uncertain", 0.55)),
        Face((20, 160, 80, 220), 0.9, track_id=4, mask=Attribute("incorrect", 0.88)),
    ]
    out = annotate(frame, FrameResult("t", 0, 0.0, faces))
    assert frame.max() == 0  # the input is not modified
    for f, key in zip(faces, ("mask", "no_mask", "uncertain", "incorrect"), strict=True):
        assert tuple(out[int(f.box[3]), int(f.box[0]) + 20]) == COLORS[key]  # bottom edge of the box
    assert face_label(faces[0]) == ["#1 mask 97%", "man 90%"]
    assert face_label(faces[1], gender=False) == ["#2 no mask 91%"]
    assert face_label(faces[3], gender=False) == ["#4 incorrect mask 88%"]
    # no room above a face at the top edge: its label goes below the box, inside the frame
    top = annotate(frame, FrameResult("t", 0, 0.0, [Face((0, 0, 30, 30), 0.9, mask=Attribute("mask", 0.9))]))
    assert (top[32:45, 2:28] == COLORS["mask"]).all(axis=2).any()  # the label's block under the box
    assert not top[:, 120:].any()  # and nothing elsewhere


def test_crop_face_clips_to_frame():
    frame = np.arange(100 * 100 * 3, dtype=np.uint8).reshape(100, 100, 3)
    f = Face((10, 10, 50, 50), 0.9)
    assert crop_face(frame, f, margin=0.0).shape == (40, 40, 3)
    assert crop_face(frame, f).shape == (56, 56, 3)  # 20% of the size on each side
    assert crop_face(frame, Face((80, 80, 100, 100), 0.9), margin=0.5).shape == (30, 30, 3)


def test_each_mask_label_has_its_own_colour_the_same_as_the_web_apps():
    assert set(COLORS) == set(MASK_LABELS) and len(set(COLORS.values())) == len(MASK_LABELS)
    b, g, r = COLORS["incorrect"]
    assert r > 200 and 80 < g < 160 and b < 60  # amber / orange
    assert COLORS["no_mask"][2] > 200 and COLORS["mask"][1] > 150  # red, green
    assert max(COLORS["uncertain"]) - min(COLORS["uncertain"]) < 60  # grey
    css = (Path(maskwatch.web.__file__).parent / "static" / "app.css").read_text()
    variables = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-f]{6})", css))
    names = {"mask": "ok", "no_mask": "bad", "incorrect": "incorrect", "uncertain": "unsure"}
    assert {label: variables[name] for label, name in names.items()} == HEX_COLORS
    js = (Path(maskwatch.web.__file__).parent / "static" / "live.js").read_text()
    assert all(f'{label}: "--{name}"' in js for label, name in names.items())  # the live view reads them
