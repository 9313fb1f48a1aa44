"""Fine-tuning the top of the bundled model on cached trunk features (train/top.py)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from maskwatch.train import top as T  # noqa: E402
from maskwatch.vision.classify import BUNDLED_MODEL_DIR  # noqa: E402

BASE = BUNDLED_MODEL_DIR / "attributes.onnx"


def _faces(root, classes, n, seed):
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(60, 200, (112, 112, 3), dtype=np.uint8)
            cv2.circle(img, (56, 60), 30 + 6 * ci, (40 * ci, 90, 160), -1)
            cv2.imwrite(str(root / c / f"{i}.jpg"), img)
    return str(root)


def test_rebuilt_top_reproduces_the_base_and_joins_exactly(tmp_path):
    import onnxruntime as ort

    torch.set_num_threads(2)
    spec = T.read_top(BASE, 18)
    assert spec.cut_channels == 320 and set(spec.heads) == {"mask", "gender"}
    x = np.random.default_rng(0).normal(0, 1, (8, 3, 112, 112)).astype(np.float32)
    trunk = T.trunk_session(BASE, spec.cut, 2).run([spec.cut], {"input": x})[0]
    outs = ort.InferenceSession(str(BASE)).run(["mask", "gender"], {"input": x})
    base = dict(zip(["mask", "gender"], outs, strict=True))
    top = T.build_top(spec, ("mask", "no_mask", "incorrect"), 0.0).eval()
    with torch.no_grad():
        o = {h: v.numpy() for h, v in top(torch.from_numpy(trunk)).items()}
    # float top vs the base's int8 one: equal up to quantization noise; incorrect starts as no_mask - 2
    assert np.abs(o["gender"] - base["gender"]).max() < 0.15
    assert np.abs(o["mask"][:, :2] - base["mask"]).max() < 0.15
    assert np.allclose(o["mask"][:, 2], o["mask"][:, 1] - 2.0, atol=1e-4)
    joined = T.export_joined(BASE, spec.cut, top, tmp_path / "j.onnx", spec.cut_channels)
    j = ort.InferenceSession(str(joined)).run(["mask", "gender"], {"input": x})
    assert np.abs(j[0] - o["mask"]).max() < 1e-4 and np.abs(j[1] - o["gender"]).max() < 1e-4


def test_run_top_three_mask_labels_runtime_loads_it(tmp_path):
    from maskwatch.types import Face
    from maskwatch.vision.classify import AttributeClassifier

    gender = _faces(tmp_path / "g", ["man", "woman"], 6, 0)
    mask = _faces(tmp_path / "m", ["with_mask", "without_mask", "mask_weared_incorrect"], 5, 1)
    recipe = T.TopRecipe(
        data=[gender, mask], out=str(tmp_path / "out"), base=str(BUNDLED_MODEL_DIR / "attributes.json"),
        views=2, epochs=2, steps_per_epoch=2, batch_size=8, val_fraction=0.34, cache=str(tmp_path / "cache"),
    )  # fmt: skip
    card = T.run_top(recipe)
    assert card["outputs"]["mask"]["labels"] == ["mask", "no_mask", "incorrect"]
    assert card["training"]["kind"] == "top" and card["training"]["recipe"]["views"] == 2
    assert json.loads((tmp_path / "out" / "attributes.json").read_text()) == card
    cached = sorted((tmp_path / "cache").glob("views-*.npz"))
    assert len(cached) == 4  # train and validation views of both sets
    clf = AttributeClassifier.from_dir(tmp_path / "out")
    frame = cv2.imread(str(next((tmp_path / "g" / "man").glob("*.jpg"))))
    (face,) = clf.classify(frame, [Face(box=(10, 10, 100, 100), score=0.9)])
    assert face.mask.label in ("mask", "no_mask", "incorrect", "uncertain")
    # a second run with the same data and augmentation reads the cached views
    mtimes = [p.stat().st_mtime_ns for p in cached]
    T.run_top(recipe)
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "cache").glob("views-*.npz"))] == mtimes


def test_recipe_validation():
    with pytest.raises(ValueError, match="mask_labels"):
        T.TopRecipe(mask_labels=("mask", "incorrect"))
    with pytest.raises(ValueError, match="incorrect_mask"):
        T.TopRecipe(incorrect_mask=1.5)
