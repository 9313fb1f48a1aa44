import json

import pytest

from maskwatch.types import UNKNOWN, Attribute, Face, FrameResult


def test_face_normalises_and_validates():
    f = Face(box=(1, 2, 11, 22), score=1, landmarks=[[1, 2]] * 5)
    assert f.box == (1.0, 2.0, 11.0, 22.0) and f.width == 10 and f.height == 20
    assert f.mask is UNKNOWN and f.gender.label == "uncertain"
    with pytest.raises(ValueError):
        Face(box=(10, 0, 5, 5), score=0.5)
    with pytest.raises(ValueError):
        Face(box=(0, 0, 5, 5), score=0.5, landmarks=[[0, 0]] * 4)
    with pytest.raises(ValueError):
        Face(box=(0, 0, 5, 5), score=0.5, mask=Attribute("man", 0.9))
    with pytest.raises(ValueError):
        Attribute("mask", 1.5)


def test_face_dict_round_trip_and_privacy():
    f = Face(
        (0, 0, 10, 10),
        0.91234,
        track_id=4,
        mask=Attribute("no_mask", 0.87654),
        gender=Attribute("woman", 0.8),
    )
    d = f.to_dict()
    assert d["score"] == 0.9123 and d["mask"] == {"label": "no_mask", "confidence": 0.8765}
    assert Face.from_dict(json.loads(json.dumps(d))).mask.label == "no_mask"
    assert "gender" not in f.to_dict(gender=False)
    assert f.with_(track_id=5).track_id == 5 and f.track_id == 4


def test_frame_result_to_dict():
    r = FrameResult("cam", 3, 12.34567, [Face((0, 0, 10, 10), 0.9)], {"detect": 1.234}, (640, 480))
    d = r.to_dict(gender=False)
    assert d["frame_size"] == [640, 480] and d["timestamp"] == 12.346 and d["timings_ms"] == {"detect": 1.23}
    assert isinstance(r.faces, tuple) and "gender" not in d["faces"][0]
