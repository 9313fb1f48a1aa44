import numpy as np
import pytest

from maskwatch.vision.geometry import align_crop, crop_resize, cut, expand_box, iou, iou_matrix


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    m = iou_matrix(np.array([[0, 0, 10, 10], [5, 5, 15, 15]]), np.array([[0, 0, 10, 10]] * 3))
    assert m.shape == (2, 3) and m[0, 0] == pytest.approx(1.0)
    assert iou_matrix(np.zeros((0, 4)), np.zeros((2, 4))).shape == (0, 2)


def test_expand_box():
    assert expand_box((10, 10, 30, 20)) == (10, 10, 30, 20)
    assert expand_box((10, 10, 30, 20), 0.5) == (0, 5, 40, 25)
    x1, y1, x2, y2 = expand_box((10, 10, 30, 20), 0.0, square=True)
    assert (x2 - x1, y2 - y1, (x1 + x2) / 2, (y1 + y2) / 2) == (20, 20, 20, 15)


def test_crop_resize_pads_with_edge_pixels():
    img = np.zeros((20, 20, 3), np.uint8)
    img[:, :10] = 255  # left half white
    out = crop_resize(img, (-10, 0, 10, 20), (8, 8))  # half outside on the left
    assert out.shape == (8, 8, 3) and out[:, :3].min() == 255  # padding repeats the white edge
    small = crop_resize(img, (0, 0, 20, 20), (4, 4))  # strong shrink path (INTER_AREA)
    assert small.shape == (4, 4, 3) and small[:, 0].min() == 255 and small[:, -1].max() == 0


def test_cut_clips_or_pads():
    img = np.arange(100, dtype=np.uint8).reshape(10, 10)
    assert cut(img, (-5, -5, 3, 3)).shape == (3, 3)
    assert cut(img, (-5, -5, 3, 3), border=0).shape == (8, 8)
    assert cut(img, (20, 20, 30, 30)).shape == (10, 10)  # fully outside: blank, right size


def test_align_crop_maps_landmarks_onto_template():
    img = np.zeros((100, 100, 3), np.uint8)
    img[48:53, 28:33] = 255  # a bright dot where the first landmark is
    lm = np.array([[30, 50], [70, 50], [50, 65], [35, 80], [65, 80]], float)
    template = lm / 2  # half size, no rotation
    out = align_crop(img, lm, template, (50, 50))
    assert out.shape == (50, 50, 3) and out[25, 15].max() > 200


def test_docstring_examples():
    import doctest

    from maskwatch.vision import detect, draw, geometry, track

    for module in (geometry, track, draw, detect):
        assert doctest.testmod(module).failed == 0, module.__name__
