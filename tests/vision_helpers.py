"""Helpers for the vision tests: tiny ONNX attribute models built on the fly, synthetic frames.

The tiny model looks at the mean colour of the crop (RGB, values 0..1): red-ish crops are `mask`,
green-ish `no_mask` (and, with the three mask labels, yellow-ish `incorrect`); blue-ish `man`, red-ish
`woman`; grey is undecided (-> `uncertain`).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

# Two shared CPU cores: keep the vision tests single-threaded.
os.environ.setdefault("MASKWATCH_ORT_THREADS", "1")
cv2.setNumThreads(1)

RED, GREEN, BLUE, GREY = (40, 40, 220), (40, 220, 40), (220, 40, 40), (128, 128, 128)  # BGR
YELLOW = (40, 220, 220)  # BGR
MASK_LABELS_2 = ("mask", "no_mask")  # older cards
MASK_LABELS_3 = ("mask", "no_mask", "incorrect")


def tiny_card(
    name: str = "tiny",
    *,
    size: int = 32,
    activation: str = "softmax",
    crop: dict | None = None,
    outputs: tuple[str, ...] = ("mask", "gender"),
    color: str = "RGB",
    layout: str = "NCHW",
    mask_labels: tuple[str, ...] = MASK_LABELS_2,
) -> dict:
    heads = {
        "mask": {
            "output": "mask",
            "labels": list(mask_labels),
            "activation": activation,
            "uncertain_threshold": 0.8,
        },
        "gender": {
            "output": "gender",
            "labels": ["man", "woman"],
            "activation": activation,
            "uncertain_threshold": 0.75,
        },
    }
    return {
        "name": name,
        "onnx": f"{name}.onnx",
        "input": {
            "name": "input",
            "size": [size, size],
            "color": color,
            "layout": layout,
            "scale": 1 / 255,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
        },
        "crop": crop or {"rule": "box", "margin": 0.0, "square": True},
        "outputs": {k: heads[k] for k in outputs},
        "training": {"command": "tests/vision_helpers.py", "date": "2026-01-01", "commit": "test"},
    }


def make_tiny_model(
    model_dir: Path,
    name: str = "tiny",
    *,
    size: int = 32,
    activation: str = "softmax",
    crop: dict | None = None,
    batch: int | str = "N",
    outputs: tuple[str, ...] = ("mask", "gender"),
    mask_labels: tuple[str, ...] = MASK_LABELS_2,
) -> Path:
    """Write NAME.onnx + NAME.json into `model_dir` (created) and return the directory. The mask head
    has the columns of `mask_labels` (two: mask, no_mask; three: also incorrect)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    k = 20.0
    columns = {"mask": [k, -k, 0], "no_mask": [-k, k, 0], "incorrect": [k / 2, k / 2, -k]}  # R-G, G-R, yellow
    w_mask = np.array([columns[lab] for lab in mask_labels], np.float32).T
    w_gender = np.array([[-k, k], [0, 0], [k, -k]], np.float32)  # B - R
    nodes = [helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0)]
    inits, outs = [], []
    for task, w in (("mask", w_mask), ("gender", w_gender)):
        if task not in outputs:
            continue
        inits.append(numpy_helper.from_array(w, f"w_{task}"))
        logits = f"{task}_logits" if activation == "none" else task
        nodes.append(helper.make_node("MatMul", ["pooled", f"w_{task}"], [logits]))
        if activation == "none":
            nodes.append(helper.make_node("Softmax", [logits], [task], axis=1))
        outs.append(helper.make_tensor_value_info(task, TensorProto.FLOAT, [batch, w.shape[1]]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        outs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(model_dir / f"{name}.onnx"))
    card = tiny_card(
        name, size=size, activation=activation, crop=crop, outputs=outputs, mask_labels=mask_labels
    )
    (model_dir / f"{name}.json").write_text(json.dumps(card, indent=2))
    return model_dir


def face_canvas(
    faces: list[tuple[tuple[int, int, int, int], tuple[int, int, int]]], size: tuple[int, int] = (320, 240)
) -> np.ndarray:
    """A dark BGR frame with filled rectangles (x1, y1, x2, y2) in the given colours."""
    img = np.full((size[1], size[0], 3), 30, np.uint8)
    for (x1, y1, x2, y2), color in faces:
        img[y1:y2, x1:x2] = color
    return img


class FakeDetector:
    """Returns preset boxes (one list per call, the last repeats); counts calls."""

    name = "fake"

    def __init__(self, boxes_per_frame):
        self.boxes_per_frame = list(boxes_per_frame)
        self.calls = 0

    def detect(self, frame_bgr):
        from maskwatch.types import Face

        boxes = self.boxes_per_frame[min(self.calls, len(self.boxes_per_frame) - 1)]
        self.calls += 1
        return [Face(box=b, score=0.9) for b in boxes]


def voc_boxes(xml_path: Path) -> tuple[str, np.ndarray, list[str]]:
    """(image file name, (N, 4) boxes, class names) from a PASCAL VOC annotation."""
    root = ET.parse(xml_path).getroot()
    objs = root.findall("object")
    boxes = [[float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")] for o in objs]
    return (
        root.find("filename").text,
        np.array(boxes, dtype=float).reshape(-1, 4),
        [o.find("name").text for o in objs],
    )


def padded_crop(path: Path, pad: float = 1.0, value: int = 170) -> np.ndarray:
    """A tight face crop placed in the middle of a larger plain canvas (`pad` x its size on each side)."""
    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    return cv2.copyMakeBorder(
        img,
        int(h * pad),
        int(h * pad),
        int(w * pad),
        int(w * pad),
        cv2.BORDER_CONSTANT,
        value=(value, value, value),
    )
