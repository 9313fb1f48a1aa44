"""Attribute classifier: every model card + ONNX pair in a model directory, one batched call per frame.

Crop rule, input size, colour, normalisation, labels and the `uncertain` threshold all come from the
model card (see DEVELOPERS.md), so models can be swapped without code changes.

Example:
    >>> clf = AttributeClassifier.from_dir("src/maskwatch/models")          # doctest: +SKIP
    >>> faces = clf.classify(frame, detector.detect(frame))                  # doctest: +SKIP
    >>> faces[0].mask                                                        # doctest: +SKIP
    Attribute(label='mask', confidence=0.97)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskwatch.types import GENDER_LABELS, MASK_LABELS, UNCERTAIN, Attribute, Face
from maskwatch.vision.geometry import align_crop, crop_resize, expand_box

log = logging.getLogger(__name__)

BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[1] / "models"
TASK_LABELS = {"mask": MASK_LABELS, "gender": GENDER_LABELS}
# labels a head for the task must have: a mask head answers at least mask / no_mask (older cards), newer
# ones also `incorrect` (nose or mouth uncovered); any order, as the graph's output columns are
REQUIRED_LABELS = {"mask": ("mask", "no_mask"), "gender": ()}
WORN_LABELS = ("mask", "incorrect")  # a mask is worn: the detector boxes the face as masked


class ModelNotFoundError(RuntimeError):
    """No usable model card + ONNX pair in the model directory."""


class ModelCardError(ValueError):
    """A model card is malformed or does not match its ONNX graph."""


@dataclass(frozen=True)
class Head:
    """One attribute a model predicts: which graph output, its class labels, activation, threshold."""

    task: str
    output: str
    labels: tuple[str, ...]
    activation: str
    threshold: float


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class AttributeModel:
    """One ONNX file with its model card; `predict` runs a single batched call."""

    def __init__(self, card: dict[str, Any], onnx_path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort  # imported here: keeps `maskwatch --help` fast

        self.card = card
        self.path = onnx_path
        try:
            inp = card["input"]
            self.input_name = inp.get("name", "input")
            self.size = (int(inp["size"][0]), int(inp["size"][1]))  # (width, height)
            self.color = inp.get("color", "RGB").upper()
            self.layout = inp.get("layout", "NCHW").upper()
            self.scale = float(inp.get("scale", 1 / 255))
            self.mean = np.asarray(inp.get("mean", [0.0, 0.0, 0.0]), np.float32)
            self.std = np.asarray(inp.get("std", [1.0, 1.0, 1.0]), np.float32)
            crop = card.get("crop", {})
            self.crop_rule = crop.get("rule", "box")
            self.margin = float(crop.get("margin", 0.0))
            self.square = bool(crop.get("square", True))
            self.template = crop.get("template")
            masked = crop.get("masked_faces")
            self.masked_faces = (
                None
                if masked is None
                else (np.asarray(masked["shift"], np.float64).reshape(2), float(masked["log_scale"]))
            )
            outputs = card["outputs"]
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ModelCardError(
                f"model card for {onnx_path.name} is missing or has a bad field: {exc}"
            ) from exc
        if self.color not in ("RGB", "BGR") or self.layout not in ("NCHW", "NHWC"):
            raise ModelCardError(f"{onnx_path.name}: unsupported color {self.color} or layout {self.layout}")
        if self.crop_rule not in ("box", "align5") or (self.crop_rule == "align5" and self.template is None):
            raise ModelCardError(f"{onnx_path.name}: crop rule must be 'box' or 'align5' (with a template)")

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = (
            threads or int(os.environ.get("MASKWATCH_ORT_THREADS", "0")) or min(2, os.cpu_count() or 1)
        )
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # share small CPUs politely
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelCardError(f"cannot load ONNX model {onnx_path}: {exc}") from exc
        graph_inputs = {i.name: i for i in self.session.get_inputs()}
        if self.input_name not in graph_inputs:
            raise ModelCardError(
                f"{onnx_path.name}: card input {self.input_name!r} not in {list(graph_inputs)}"
            )
        batch_dim = graph_inputs[self.input_name].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        graph_outputs = {o.name: o for o in self.session.get_outputs()}

        self.heads: dict[str, Head] = {}
        for task, spec in outputs.items():
            if task not in TASK_LABELS:
                log.warning("%s: ignoring unknown task %r in model card", onnx_path.name, task)
                continue
            labels = self._check_labels(task, spec.get("labels"))
            out = graph_outputs.get(spec.get("output"))
            if out is None:
                raise ModelCardError(
                    f"{onnx_path.name}: output {spec.get('output')!r} not in {sorted(graph_outputs)}"
                )
            width = out.shape[-1] if out.shape else None
            if isinstance(width, int) and width != len(labels):
                raise ModelCardError(
                    f"{onnx_path.name}: output {out.name!r} has {width} values per face but the card's "
                    f"{task} head lists {len(labels)} labels {list(labels)}"
                )
            self.heads[task] = Head(
                task=task,
                output=spec["output"],
                labels=labels,
                activation=spec.get("activation", "softmax"),
                threshold=float(spec.get("uncertain_threshold", 0.5)),
            )
        if self.masked_faces is not None and (
            self.crop_rule != "box" or "mask" not in self.heads or "gender" not in self.heads
        ):
            raise ModelCardError(f"{onnx_path.name}: crop.masked_faces needs the box rule and both heads")
        self._warned_no_landmarks = False

    def _check_labels(self, task: str, labels: Any) -> tuple[str, ...]:
        """The head's labels (one per output column), or ModelCardError: known for the task, no repeats,
        at least two, `uncertain` never (it is the threshold's answer, not a class)."""
        where = f"{self.path.name}: {task} labels {labels!r}"
        if not isinstance(labels, list) or not all(isinstance(lab, str) for lab in labels):
            raise ModelCardError(f"{where} must be a list of strings")
        bad = [lab for lab in labels if lab not in TASK_LABELS[task] or lab == UNCERTAIN]
        if bad:
            valid = [lab for lab in TASK_LABELS[task] if lab != UNCERTAIN]
            raise ModelCardError(f"{where}: {bad} not valid (valid: {valid})")
        missing = [lab for lab in REQUIRED_LABELS[task] if lab not in labels]
        if len(set(labels)) != len(labels) or len(labels) < 2 or missing:
            need = f", including {list(REQUIRED_LABELS[task])}" if REQUIRED_LABELS[task] else ""
            raise ModelCardError(f"{where}: need two or more different labels{need}")
        return tuple(labels)

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.path.stem))

    def crop(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray:
        """The model's input crop (BGR, `size`) for one face, following the card's crop rule."""
        if self.crop_rule == "align5":
            if face.landmarks is not None:
                chip = align_crop(frame_bgr, face.landmarks, self.template, self.size)
                if chip is not None:
                    return chip
            elif not self._warned_no_landmarks:
                log.warning(
                    "%s wants landmark alignment but the detector gives none; using box crops", self.name
                )
                self._warned_no_landmarks = True
        box = expand_box(face.box, self.margin, square=self.square)
        return crop_resize(frame_bgr, box, self.size)

    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        x = np.stack(crops)
        if self.color == "RGB":
            x = x[..., ::-1]
        x = (x.astype(np.float32) * self.scale - self.mean) / self.std
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)

    def bare_face_box(self, face: Face) -> tuple[float, float, float, float]:
        """The crop box of a face the mask head calls masked, moved back to where the detector would have
        boxed it bare (card `crop.masked_faces`: how it boxes masked faces, see `train.synth`)."""
        x1, y1, x2, y2 = expand_box(face.box, self.margin, square=self.square)
        shift, log_scale = self.masked_faces
        w, h = (x2 - x1) / np.exp(log_scale), (y2 - y1) / np.exp(log_scale)
        cx, cy = (x1 + x2) / 2 - shift[0] * w, (y1 + y2) / 2 - shift[1] * h
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

    def predict(
        self, frame_bgr: np.ndarray, faces: Sequence[Face], tasks: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Class probabilities per task, each (len(faces), n_labels), from one batched ONNX call; with
        `crop.masked_faces` in the card, gender of the faces wearing a mask (`mask` or `incorrect`: a mask
        under the nose still hides the chin) from a second call on crops framed as the model learnt
        masked faces."""
        wanted = [t for t in self.heads if tasks is None or t in tasks]
        if not faces or not wanted:
            return {t: np.zeros((0, len(self.heads[t].labels)), np.float32) for t in wanted}
        reframe = self.masked_faces is not None and "gender" in wanted
        run_tasks = [t for t in self.heads if t in wanted or (reframe and t == "mask")]
        result = self.run_crops([self.crop(frame_bgr, f) for f in faces], run_tasks)
        if reframe:  # faces with a mask worn, properly or not (`mask` + `incorrect` probability >= 0.5)
            labels = self.heads["mask"].labels
            worn = [labels.index(lab) for lab in WORN_LABELS if lab in labels]
            masked = np.flatnonzero(result["mask"][:, worn].sum(axis=1) >= 0.5)
            if masked.size:
                crops = [crop_resize(frame_bgr, self.bare_face_box(faces[i]), self.size) for i in masked]
                result["gender"][masked] = self.run_crops(crops, ["gender"])["gender"]
        return {t: result[t] for t in wanted}

    def run_crops(self, crops: Sequence[np.ndarray], tasks: Sequence[str]) -> dict[str, np.ndarray]:
        """Class probabilities per task for crops already cut by the card's rule (BGR, `size`)."""
        heads = [self.heads[t] for t in tasks]
        x = self.preprocess(crops)
        names = [h.output for h in heads]
        n = len(crops)
        if self.fixed_batch in (None, n):
            outs = self.session.run(names, {self.input_name: x})
        else:  # a graph exported with a fixed batch size: run it crop by crop
            parts = [self.session.run(names, {self.input_name: x[i : i + 1]}) for i in range(n)]
            outs = [np.concatenate([p[k] for p in parts]) for k in range(len(names))]
        result = {}
        for head, out in zip(heads, outs, strict=True):
            out = np.asarray(out, np.float32).reshape(n, -1)
            if out.shape[1] != len(head.labels):
                raise ModelCardError(
                    f"{self.name}: output {head.output} has {out.shape[1]} values, "
                    f"card lists {len(head.labels)} labels"
                )
            if head.activation == "softmax":
                out = softmax(out)
            else:
                out = np.clip(out, 0.0, None)
                out = out / np.maximum(out.sum(axis=1, keepdims=True), 1e-9)
            result[head.task] = out
        return result


class AttributeClassifier:
    """All attribute models of a model directory behind one `classify(frame, faces)` call.

    Thread-safe (ONNX Runtime sessions may be run from several threads).
    """

    def __init__(self, models: Sequence[AttributeModel], *, uncertain_threshold: float | None = None) -> None:
        self.models = list(models)
        self.uncertain_threshold = uncertain_threshold
        self.heads: dict[str, Head] = {}
        self._owner: dict[str, AttributeModel] = {}
        for m in self.models:
            for task, head in m.heads.items():
                if task in self.heads:
                    log.warning(
                        "task %r provided by %s and %s; using %s",
                        task,
                        self._owner[task].name,
                        m.name,
                        m.name,
                    )
                self.heads[task] = head
                self._owner[task] = m

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path | None = None,
        *,
        uncertain_threshold: float | None = None,
        threads: int | None = None,
    ) -> AttributeClassifier:
        """Load every `NAME.json` model card (with its ONNX file) in `model_dir` (None: bundled models)."""
        d = Path(model_dir).expanduser() if model_dir is not None else BUNDLED_MODEL_DIR
        hint = "train one with `maskwatch train` or point --model / models.model_dir at a model directory"
        if not d.is_dir():
            raise ModelNotFoundError(f"model directory not found: {d} ({hint})")
        models = []
        for card_path in sorted(d.glob("*.json")):
            try:
                card = json.loads(card_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ModelCardError(f"cannot read model card {card_path}: {exc}") from exc
            if not isinstance(card, dict) or "outputs" not in card:
                continue  # not a model card (e.g. a metrics file)
            onnx_path = d / card.get("onnx", card_path.stem + ".onnx")
            if not onnx_path.is_file():
                raise ModelNotFoundError(
                    f"model card {card_path.name} names {onnx_path.name}, which is missing"
                )
            models.append(AttributeModel(card, onnx_path, threads=threads))
        models = [m for m in models if m.heads]
        if not models:
            raise ModelNotFoundError(f"no attribute model (NAME.onnx + NAME.json card) in {d} ({hint})")
        return cls(models, uncertain_threshold=uncertain_threshold)

    @property
    def tasks(self) -> set[str]:
        return set(self.heads)

    @property
    def cards(self) -> list[dict]:
        return [m.card for m in self.models]

    def labels(self, task: str) -> tuple[str, ...]:
        return self.heads[task].labels

    def threshold(self, task: str) -> float:
        return (
            self.uncertain_threshold if self.uncertain_threshold is not None else self.heads[task].threshold
        )

    def to_attribute(self, task: str, probs: np.ndarray) -> Attribute:
        """Top label of `probs`, or `uncertain` when its probability is below the task's threshold.

        The confidence is always the top probability (how sure the best guess is).
        """
        i = int(np.argmax(probs))
        conf = float(np.clip(probs[i], 0.0, 1.0))
        label = self.heads[task].labels[i] if conf >= self.threshold(task) else UNCERTAIN
        return Attribute(label, conf)

    def predict(
        self, frame_bgr: np.ndarray, faces: Sequence[Face], tasks: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Probabilities per task (rows follow `faces`); one batched ONNX call per model."""
        wanted = self.tasks if tasks is None else self.tasks & set(tasks)
        result: dict[str, np.ndarray] = {}
        for m in self.models:
            mine = {t for t in wanted if self._owner[t] is m}
            if mine:
                result.update(m.predict(frame_bgr, faces, mine))
        return result

    def classify(
        self, frame_bgr: np.ndarray, faces: Sequence[Face], tasks: Iterable[str] | None = None
    ) -> list[Face]:
        """`faces` with their `mask` / `gender` attributes filled in (tasks the models provide)."""
        faces = list(faces)
        probs = self.predict(frame_bgr, faces, tasks)
        out = []
        for i, f in enumerate(faces):
            out.append(f.with_(**{t: self.to_attribute(t, p[i]) for t, p in probs.items()}))
        return out
