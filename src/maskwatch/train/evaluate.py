"""`maskwatch evaluate crops | faces | scenes`: accuracy of attribute models, the way the app runs them.

Models are model directories (or single model cards) loaded by the runtime's `AttributeClassifier`, so the
crop rule, normalization and labels come from the cards, exactly as in `detect`/`serve`. `faces` and
`scenes` run the runtime detector too. Every command prints and (with `--json`) writes a JSON object with
`n`, `accuracy`, `balanced_accuracy`, `per_class` {label: {n, recall}}, `no_face` and `labels` (the head's).

Mask labels: a mask head has two labels (`mask`, `no_mask`) or three (also `incorrect`: nose or mouth
uncovered). Faces annotated `incorrect` (`mask_weared_incorrect`) count as `no_mask` for a two-label head
(that is how such models were trained) and as their own class for a three-label one; mask results say
which in `incorrect_counts_as`. `per_class` lists the head's labels; `balanced_accuracy` is the mean
recall over those with faces.

Scenes: detected faces are matched one-to-one to annotated boxes, highest IoU first, by a rule reported
as `matching` {`rule`, `iou`}: `iou` (IoU >= `iou`, default 0.5) or `center` (the centre of one box lies
inside the other; for sets annotated with whole-head boxes, which a face box fills only in part).

Per-face dumps (`--dump FILE.jsonl`, for calibration): one JSON object per line for every classified
face (images where no face was found are not written), with
    `file`     the image (scenes: the photo; several lines when it holds several faces)
    `set`      name of the data folder
    `task`     `mask` or `gender`
    `truth`    the label the face counts as (for a two-label mask head `incorrect` becomes `no_mask`)
    `annotated` only when it differs from `truth`: the annotated label (`incorrect`)
    `pred`     the answer after the card's uncertain threshold (`uncertain` below it)
    `argmax`   the top label before the threshold
    `probs`    {label: probability} of the task's head (its labels, its order)
    `box`      scenes only: the annotated box [x1, y1, x2, y2]
    `age`, `race`  only for UTKFace-named files (`AGE_GENDER_RACE_*.jpg`): age in years, race name
               (White, Black, Asian, Indian, Others)

Example:
    >>> m = metrics(["mask", "no_mask", "mask"], ["mask", "mask", "mask"], ("mask", "no_mask"))
    >>> m["accuracy"], m["per_class"]["no_mask"]["recall"]
    (0.6667, 0.0)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import click
import cv2
import numpy as np

from maskwatch.train.data import (
    MATCH_RULES,
    TASK_LABELS,
    FaceFinder,
    canonical_label,
    list_images,
    match_boxes,
    matching,
    parse_fold,
    photo_detector,
    read_image_or_none,
    read_voc,
    scene_images,
    utkface_meta,
)

log = logging.getLogger(__name__)

AGE_BANDS = ((0, 12, "0-12"), (13, 19, "13-19"), (20, 39, "20-39"), (40, 59, "40-59"), (60, 200, "60+"))
RACES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}
SIZE_BINS = ((0, 16, "<16"), (16, 32, "16-32"), (32, 64, "32-64"), (64, 1e9, ">=64"))
NO_FACE = "no_face"
UNCERTAIN = "uncertain"
DEFAULT_MATCHING = {"rule": "iou", "iou": 0.5}


def _r(x: float) -> float:
    return round(float(x), 4)


def metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    uncertain: Sequence[bool] | None = None,
) -> dict:
    """Accuracy, balanced accuracy and per-class recall. A prediction of `no_face` counts as wrong."""
    y_true, y_pred = list(y_true), list(y_pred)
    n = len(y_true)
    correct = [t == p for t, p in zip(y_true, y_pred, strict=True)]
    per_class = {}
    for lab in labels:
        idx = [i for i, t in enumerate(y_true) if t == lab]
        per_class[lab] = {"n": len(idx), "recall": _r(np.mean([correct[i] for i in idx])) if idx else None}
    recalls = [v["recall"] for v in per_class.values() if v["recall"] is not None]
    out = {
        "n": n,
        "accuracy": _r(np.mean(correct)) if n else None,
        "balanced_accuracy": _r(np.mean(recalls)) if recalls else None,
        "per_class": per_class,
        "no_face": sum(p == NO_FACE for p in y_pred),
    }
    detected = [i for i, p in enumerate(y_pred) if p != NO_FACE]
    if out["no_face"] and detected:
        out["accuracy_detected"] = _r(np.mean([correct[i] for i in detected]))
    if uncertain is not None and n:
        unc = np.asarray(uncertain, bool)
        out["uncertain"] = int(unc.sum())
        keep = ~unc
        out["accuracy_when_certain"] = _r(np.mean(np.asarray(correct)[keep])) if keep.any() else None
    return out


def fairness_report(
    files: Sequence[str], y_true: np.ndarray, probs: np.ndarray, min_n: int = 30
) -> dict | None:
    """Gender accuracy by UTKFace age band and race (from file names); None when names do not parse.

    `y_true` are class indices into ("man", "woman"); `probs` (N, 2). The gap is between the best and the
    worst group with at least `min_n` faces.
    """
    metas = [utkface_meta(f) for f in files]
    ok = [i for i, m in enumerate(metas) if m is not None]
    if len(ok) < max(10, 0.5 * len(files)):
        return None
    correct = probs.argmax(1) == np.asarray(y_true)
    out: dict = {"n": len(ok), "accuracy": _r(correct[ok].mean())}
    for key, groups in (
        ("age", [(lo, hi, name) for lo, hi, name in AGE_BANDS]),
        ("race", [(r, r, name) for r, name in RACES.items()]),
    ):
        table = {}
        for lo, hi, name in groups:
            idx = [i for i in ok if lo <= metas[i]["age" if key == "age" else "race"] <= hi]
            if idx:
                table[name] = {"n": len(idx), "accuracy": _r(correct[idx].mean())}
        big = {k: v for k, v in table.items() if v["n"] >= min_n}
        gap = None
        if len(big) >= 2:
            best = max(big, key=lambda k: big[k]["accuracy"])
            worst = min(big, key=lambda k: big[k]["accuracy"])
            gap = {"gap": _r(big[best]["accuracy"] - big[worst]["accuracy"]), "best": best, "worst": worst}
        out[f"by_{key}"] = table
        out[f"largest_gap_{key}"] = gap
    gaps = [out[k]["gap"] for k in ("largest_gap_age", "largest_gap_race") if out[k]]
    out["largest_gap"] = max(gaps) if gaps else None
    return out


# ------------------------------------------------------------------------------------------- models
def load_classifier(model: str | Path | None, threads: int | None = None):
    """AttributeClassifier for a model directory, a single card JSON, or None (the bundled defaults)."""
    from maskwatch.vision.classify import AttributeClassifier, AttributeModel

    if model is not None and Path(model).is_file():
        card_path = Path(model)
        card = json.loads(card_path.read_text())
        return AttributeClassifier(
            [
                AttributeModel(
                    card, card_path.parent / card.get("onnx", card_path.stem + ".onnx"), threads=threads
                )
            ]
        )
    return AttributeClassifier.from_dir(model, threads=threads)


def _run_crops(model, crops_bgr: list[np.ndarray], task: str, batch: int = 64) -> np.ndarray:
    """Probabilities of one head for already-cropped BGR images (resized to the model's input)."""
    outs = []
    for i in range(0, len(crops_bgr), batch):
        chunk = [
            c
            if (c.shape[1], c.shape[0]) == model.size
            else cv2.resize(
                c,
                model.size,
                interpolation=cv2.INTER_AREA if c.shape[0] > model.size[1] else cv2.INTER_LINEAR,
            )
            for c in crops_bgr[i : i + batch]
        ]
        outs.append(model.run_crops(chunk, [task])[task])
    return np.concatenate(outs) if outs else np.zeros((0, len(model.heads[task].labels)), np.float32)


def _owner(classifier, task: str):
    if task not in classifier.heads:
        raise click.UsageError(f"the model(s) give no {task!r} output (they give {sorted(classifier.heads)})")
    return classifier._owner[task]


def _predict_labels(classifier, task: str, probs: np.ndarray) -> tuple[list[str], list[bool]]:
    head = classifier.heads[task]
    thr = classifier.threshold(task)
    preds = [head.labels[int(i)] for i in probs.argmax(1)]
    return preds, [bool(p.max() < thr) for p in probs]


def truth_label(label: str, head_labels: Sequence[str]) -> str:
    """The label a face annotated `label` counts as for a head: `incorrect` is `no_mask` for a mask head
    without an `incorrect` class (two-label models were trained that way)."""
    return "no_mask" if label == "incorrect" and "incorrect" not in head_labels else label


def _label_info(task: str, head_labels: Sequence[str]) -> dict:
    out: dict = {"labels": list(head_labels)}
    if task == "mask":
        out["incorrect_counts_as"] = "incorrect" if "incorrect" in head_labels else "no_mask"
    return out


def _ordered(per_class: dict, task: str) -> dict:
    return {k: per_class[k] for k in TASK_LABELS[task] if k in per_class}


def dump_row(
    file: str | Path,
    task: str,
    annotated: str,
    probs: np.ndarray,
    labels: Sequence[str],
    threshold: float,
    set_name: str,
    **extra,
) -> dict:
    """One line of a `--dump` file (format in the module docstring)."""
    i = int(np.argmax(probs))
    truth = truth_label(annotated, labels)
    row = {
        "file": str(file),
        "set": set_name,
        "task": task,
        "truth": truth,
        "pred": labels[i] if probs[i] >= threshold else UNCERTAIN,
        "argmax": labels[i],
        "probs": {lab: round(float(p), 5) for lab, p in zip(labels, probs, strict=True)},
    }
    if annotated != truth:
        row["annotated"] = annotated
    meta = utkface_meta(str(file))
    if meta is not None and meta["race"] in RACES:
        row["age"], row["race"] = meta["age"], RACES[meta["race"]]
    return {**row, **extra}


def write_dump(path: str | Path, rows: Sequence[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# -------------------------------------------------------------------------------------------- crops
def evaluate_crops(
    data_dir: str | Path,
    task: str,
    model=None,
    *,
    framing: str = "image",
    limit: int | None = None,
    fairness: bool = False,
    yunet: str | None = None,
    dump: str | Path | None = None,
) -> dict:
    """Each image is one face crop. `framing`: `image` feeds the whole image; `detect` finds the face in
    it first (padded, as `prepare` does) and applies the card's crop rule. `dump`: per-face JSONL."""
    classifier = model if hasattr(model, "heads") else load_classifier(model)
    m = _owner(classifier, task)
    items = [(p, lab) for p, lab in list_images(data_dir) if lab in TASK_LABELS[task]]
    if limit:
        rng = np.random.default_rng(0)
        items = [items[i] for i in sorted(rng.choice(len(items), min(limit, len(items)), replace=False))]
    finder = FaceFinder(yunet_path=Path(yunet) if yunet else None, prepare_mode=True, score_threshold=0.5)
    crops, labels, files, skipped = [], [], [], 0
    for p, lab in items:
        img = read_image_or_none(p)
        if img is None:
            skipped += 1
            continue
        if framing == "detect" or m.crop_rule == "align5":
            from maskwatch.types import Face

            dets = finder.detect(img)
            if dets:
                d = max(dets, key=lambda d: d.area)
                img = m.crop(img, Face(box=d.box, score=min(1.0, d.score), landmarks=d.landmarks))
        crops.append(img)
        labels.append(lab)
        files.append(str(p))
    t0 = time.perf_counter()
    probs = _run_crops(m, crops, task)
    ms = (time.perf_counter() - t0) * 1e3 / max(1, len(crops))
    preds, unc = _predict_labels(classifier, task, probs)
    head_labels = classifier.heads[task].labels
    out = {
        "command": "crops",
        "task": task,
        "data": str(data_dir),
        "model": m.name,
        "framing": framing,
        **_label_info(task, head_labels),
        **metrics([truth_label(lab, head_labels) for lab in labels], preds, head_labels, unc),
        "skipped_unreadable": skipped,
        "ms_per_face": round(ms, 3),
    }
    out["per_class"] = _ordered(out["per_class"], task)
    if dump:
        thr, name = classifier.threshold(task), Path(data_dir).name
        rows = [
            dump_row(f, task, lab, pr, head_labels, thr, name)
            for f, lab, pr in zip(files, labels, probs, strict=True)
        ]
        write_dump(dump, rows)
        out["dump"] = str(dump)
    if fairness and task == "gender":
        y = np.array([classifier.heads[task].labels.index(lab) for lab in labels])
        out["fairness"] = fairness_report(files, y, probs)
    return out


# -------------------------------------------------------------------------------------------- faces
def evaluate_faces(
    data_dir: str | Path,
    task: str,
    model=None,
    *,
    synthetic_mask: bool = False,
    detector: str = "yunet",
    yunet: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    thorough: bool = True,
    dump: str | Path | None = None,
) -> dict:
    """Each image goes through detect -> largest face -> classify. Images without a detected face count
    as errors (`no_face`). `synthetic_mask` draws a mask on every detected face first, then detects again.
    `thorough`: the app's photo detector (mirror pass, border retry); False: one plain pass.
    `dump`: per-face JSONL (faces found only)."""
    from maskwatch.train.synth import draw_mask

    classifier = model if hasattr(model, "heads") else load_classifier(model)
    m = _owner(classifier, task)
    det = photo_detector(yunet, backend=detector, thorough=thorough)
    items = [(p, lab) for p, lab in list_images(data_dir) if lab in TASK_LABELS[task]]
    if limit:
        rng = np.random.default_rng(0)
        items = [items[i] for i in sorted(rng.choice(len(items), min(limit, len(items)), replace=False))]
    head_labels, thr = classifier.heads[task].labels, classifier.threshold(task)
    labels, preds, unc, rows, skipped, masked_none = [], [], [], [], 0, 0
    t_cls, n_cls = 0.0, 0
    for k, (p, lab) in enumerate(items):
        img = read_image_or_none(p)
        if img is None:
            skipped += 1
            continue
        faces = det.detect(img)
        if synthetic_mask and faces:
            rng = np.random.default_rng([seed, k])
            for f in faces:
                lm = np.asarray(f.landmarks) if f.landmarks is not None else _box_landmarks(f.box)
                img = draw_mask(img, lm, rng, rgb=False)
            faces = det.detect(img)
            masked_none += not faces
        labels.append(truth_label(lab, head_labels))
        if not faces:
            preds.append(NO_FACE)
            unc.append(False)
            continue
        face = max(faces, key=lambda f: f.width * f.height)
        t0 = time.perf_counter()
        pr = m.predict(img, [face], {task})[task][0]
        t_cls += time.perf_counter() - t0
        n_cls += 1
        lab_p, u = _predict_labels(classifier, task, pr[None])
        preds.append(lab_p[0])
        unc.append(u[0])
        if dump:
            rows.append(dump_row(p, task, lab, pr, head_labels, thr, Path(data_dir).name))
    out = {
        "command": "faces",
        "task": task,
        "data": str(data_dir),
        "model": m.name,
        "detector": getattr(det, "name", detector),
        "synthetic_mask": synthetic_mask,
        "thorough": thorough,
        **_label_info(task, head_labels),
        **metrics(labels, preds, head_labels, unc),
        "skipped_unreadable": skipped,
        "ms_per_face": round(t_cls * 1e3 / max(1, n_cls), 3),
    }
    out["per_class"] = _ordered(out["per_class"], task)
    if dump:
        write_dump(dump, rows)
        out["dump"] = str(dump)
    if synthetic_mask:
        out["no_face_after_mask"] = masked_none
    return out


def _box_landmarks(box) -> np.ndarray:
    from maskwatch.train.data import DEFAULT_LANDMARKS
    from maskwatch.vision.geometry import expand_box

    x1, y1, x2, y2 = expand_box(box, 0.2, square=True)
    return np.stack([x1 + DEFAULT_LANDMARKS[:, 0] * (x2 - x1), y1 + DEFAULT_LANDMARKS[:, 1] * (y2 - y1)], 1)


# ------------------------------------------------------------------------------------------- scenes
def evaluate_scenes(
    data_dir: str | Path,
    model=None,
    *,
    detector: str = "yunet",
    yunet: str | None = None,
    limit: int | None = None,
    score: float | None = None,
    thorough: bool = True,
    fold: tuple[int, int] | None = None,
    match: str = "iou",
    iou_min: float = 0.5,
    dump: str | Path | None = None,
) -> dict:
    """Detection recall/precision (overall and by face size = sqrt(w*h) of the annotated box) and mask
    accuracy on matched faces; faces are matched by `match_boxes(..., iou_min, match)` (IoU >= 0.5 by
    default). `mask_weared_incorrect` counts as `no_mask` for a two-label mask head, as `incorrect` for a
    three-label one, and is also reported alone (`recall_as_no_mask`: how often it is not called `mask`).
    `thorough`: the app's photo detector (mirror pass, border retry); False: one plain pass.
    `fold=(i, k)`: only the photos at positions i mod k (what `prepare --exclude-fold i/k` leaves out).
    `dump`: per-face JSONL of the matched faces."""
    rule = matching(match, iou_min)
    classifier = model if hasattr(model, "heads") else load_classifier(model)
    has_mask = "mask" in classifier.heads
    head_labels = classifier.heads["mask"].labels if has_mask else ()
    det = photo_detector(yunet, score, backend=detector, thorough=thorough)
    data_dir = Path(data_dir)
    imgs = scene_images(data_dir, fold)
    if limit:
        imgs = imgs[:limit]
    n_gt = n_det = n_tp = 0
    by_size = {name: [0, 0] for *_, name in SIZE_BINS}  # [found, total]
    labels, preds, unc, annotated, rows = [], [], [], [], []
    t_cls, n_cls = 0.0, 0
    for p, ann in imgs:
        img = read_image_or_none(p)
        if img is None:
            continue
        gt = read_voc(ann)
        faces = det.detect(img)
        gt_boxes = np.array([b for _, b in gt], float).reshape(-1, 4)
        det_boxes = np.array([f.box for f in faces], float).reshape(-1, 4)
        pairs = match_boxes(gt_boxes, det_boxes, iou_min, match)
        n_gt += len(gt)
        n_det += len(faces)
        n_tp += len(pairs)
        matched = {g for g, _ in pairs}
        for gi, (_, b) in enumerate(gt):
            s = float(np.sqrt(max(b[2] - b[0], 0) * max(b[3] - b[1], 0)))
            for lo, hi, name in SIZE_BINS:
                if lo <= s < hi:
                    by_size[name][0] += gi in matched
                    by_size[name][1] += 1
        pairs = [(g, d) for g, d in pairs if canonical_label(gt[g][0]) in TASK_LABELS["mask"]]
        if has_mask and pairs:
            t0 = time.perf_counter()
            probs = classifier.predict(img, [faces[d] for _, d in pairs], {"mask"})["mask"]
            t_cls += time.perf_counter() - t0
            n_cls += len(pairs)
            lab_p, u = _predict_labels(classifier, "mask", probs)
            for (g, _), pr, lp, uu in zip(pairs, probs, lab_p, u, strict=True):
                lab = canonical_label(gt[g][0])
                annotated.append(lab)
                labels.append(truth_label(lab, head_labels))
                preds.append(lp)
                unc.append(uu)
                if dump:
                    thr, box = classifier.threshold("mask"), [round(v, 1) for v in gt[g][1]]
                    rows.append(dump_row(p, "mask", lab, pr, head_labels, thr, data_dir.name, box=box))
    out = {
        "command": "scenes",
        "data": str(data_dir),
        "detector": getattr(det, "name", detector),
        "thorough": thorough,
        "fold": None if fold is None else f"{fold[0]}/{fold[1]}",
        "matching": rule,
        "images": len(imgs),
        "faces": n_gt,
        "detections": n_det,
        "recall": _r(n_tp / n_gt) if n_gt else None,
        "precision": _r(n_tp / n_det) if n_det else None,
        "recall_by_size": {
            k: {"n": v[1], "recall": _r(v[0] / v[1]) if v[1] else None} for k, v in by_size.items()
        },
    }
    big = [v for k, v in by_size.items() if k in ("32-64", ">=64")]
    tot = sum(v[1] for v in big)
    out["recall_ge32"] = _r(sum(v[0] for v in big) / tot) if tot else None
    if has_mask:
        mm = metrics(labels, preds, head_labels, unc)
        mm["per_class"] = _ordered(mm["per_class"], "mask")
        out.update({"model": classifier._owner["mask"].name, **_label_info("mask", head_labels), **mm})
        out["mask_accuracy"] = mm["accuracy"]
        out["mask_balanced_accuracy"] = mm["balanced_accuracy"]
        inc = [i for i, lab in enumerate(annotated) if lab == "incorrect"]
        out["mask_weared_incorrect"] = {  # how often they are called not-masked (no_mask or incorrect)
            "n": len(inc),
            "recall_as_no_mask": _r(np.mean([preds[i] != "mask" for i in inc])) if inc else None,
        }
        out["ms_per_face"] = round(t_cls * 1e3 / max(1, n_cls), 3)
        if dump:
            write_dump(dump, rows)
            out["dump"] = str(dump)
    else:
        out.update({"n": 0, "accuracy": None, "balanced_accuracy": None, "per_class": {}, "no_face": 0})
    return out


def pool_scene_folds(folds: list[dict]) -> dict:
    """One cross-validation figure from `evaluate scenes --fold I/K` results, one per fold (each fold's
    model never saw its photos): the mean of the folds' mask balanced accuracy, and recalls pooled over
    all matched faces."""
    specs = [f.get("fold") for f in folds]
    if len(folds) < 2 or None in specs or len(set(specs)) != len(specs):
        raise ValueError(f"need the results of two or more different folds (got folds {specs})")
    if any(f.get("mask_balanced_accuracy") is None for f in folds):
        raise ValueError("a fold result has no mask figures (its model gives no mask output)")
    label_sets = {tuple(f["per_class"]) for f in folds}
    if len(label_sets) != 1:
        raise ValueError(f"the folds' models have different mask labels {sorted(label_sets)}")
    rules = {json.dumps(f.get("matching", DEFAULT_MATCHING), sort_keys=True) for f in folds}
    if len(rules) != 1:
        raise ValueError(f"the folds were matched by different rules {sorted(rules)}")
    labels = label_sets.pop()
    pooled = {}
    for lab in labels:
        n = sum(f["per_class"][lab]["n"] for f in folds)
        hits = sum(f["per_class"][lab]["n"] * (f["per_class"][lab]["recall"] or 0) for f in folds)
        pooled[lab] = {"n": n, "recall": _r(hits / n) if n else None}
    inc = [f["mask_weared_incorrect"] for f in folds if f["mask_weared_incorrect"]["n"]]
    inc_n = sum(i["n"] for i in inc)
    recalls = [v["recall"] for v in pooled.values() if v["recall"] is not None]
    return {
        "command": "folds",
        "how": f"{len(folds)}-fold cross-validation by photo: each fold's model is measured on the photos it "
        "was trained without",
        "matching": json.loads(rules.pop()),
        "incorrect_counts_as": "incorrect" if "incorrect" in labels else "no_mask",
        "mask_balanced_accuracy_mean": _r(np.mean([f["mask_balanced_accuracy"] for f in folds])),
        "mask_balanced_accuracy_pooled": _r(np.mean(recalls)) if recalls else None,
        "per_class_pooled": pooled,
        "mask_weared_incorrect_pooled": {
            "n": inc_n,
            "recall_as_no_mask": _r(sum(i["n"] * i["recall_as_no_mask"] for i in inc) / inc_n)
            if inc_n
            else None,
        },
        "recall_ge32_mean": _r(
            np.mean([f["recall_ge32"] for f in folds if f.get("recall_ge32") is not None])
        ),
        "folds": [{k: v for k, v in f.items() if k != "command"} for f in folds],
    }


# ---------------------------------------------------------------------------------------------- CLI
def _emit(result: dict, json_out: str | None, update_card: str | None, key: str | None) -> None:
    text = json.dumps(result, indent=1)
    click.echo(text)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(text + "\n")
    if update_card:
        card_path = Path(update_card)
        card = json.loads(card_path.read_text())
        slim = {k: v for k, v in result.items() if k not in ("fairness",)}
        card.setdefault("metrics", {})[key or result["command"]] = slim
        if result.get("fairness"):  # beside the training's own table (fairness.gender), under the key
            fkey = f"gender:{key}" if key else "gender"
            card.setdefault("fairness", {})[fkey] = {"set": result.get("data"), **result["fairness"]}
        card_path.write_text(json.dumps(card, indent=2) + "\n")


_common = [
    click.option(
        "--model",
        "model",
        default=None,
        type=click.Path(exists=True),
        help="Model directory or card JSON (default: bundled).",
    ),
    click.option(
        "--json",
        "json_out",
        default=None,
        type=click.Path(dir_okay=False),
        help="Write the result JSON here.",
    ),
    click.option("--limit", type=int, default=None, help="Evaluate a seeded sample of N images."),
    click.option(
        "--update-card",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="Also store the result in this model card's metrics.",
    ),
    click.option("--key", default=None, help="Metrics key for --update-card."),
]


def _with_common(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


_detector_opts = [
    click.option(
        "--detector", type=click.Choice(["auto", "yunet", "res10"]), default="yunet", show_default=True
    ),
    click.option(
        "--yunet", type=click.Path(exists=True, dir_okay=False), default=None, help="YuNet ONNX file."
    ),
    click.option(
        "--single-pass",
        is_flag=True,
        help="One plain detector pass per photo (as on video frames) instead of the app's photo detector "
        "(which also searches the mirror image, and inside a border when nothing is found).",
    ),
]


def _with_detector(f):
    for opt in reversed(_detector_opts):
        f = opt(f)
    return f


_dump_opt = click.option(
    "--dump",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write one JSON line per classified face here (truth, prediction, probabilities).",
)


def matching_options(f):
    """`--match iou|center` and `--iou X` (for `evaluate scenes`, and `prepare` of a scene set); the
    command reads them with `resolve_matching(match, iou)`."""
    f = click.option(
        "--iou",
        "iou",
        type=click.FloatRange(0, 1, min_open=True),
        default=None,
        help="--match iou: the least IoU of a match [0.5].",
    )(f)
    return click.option(
        "--match",
        type=click.Choice(MATCH_RULES),
        default="iou",
        show_default=True,
        help="How detected faces match annotated boxes: iou (IoU >= --iou) or center (the centre of one "
        "box inside the other: sets with whole-head boxes); one-to-one, highest IoU first.",
    )(f)


def resolve_matching(match: str, iou: float | None) -> tuple[str, float]:
    if match == "center" and iou is not None:
        raise click.BadParameter("only with --match iou (center matches by centres)", param_hint="--iou")
    return match, 0.5 if iou is None else iou


@click.group("evaluate")
def evaluate() -> None:
    """Measure attribute models on labeled crops, whole images, or annotated scenes."""


@evaluate.command("crops")
@click.option("--task", type=click.Choice(["mask", "gender"]), required=True)
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--framing",
    type=click.Choice(["image", "detect"]),
    default="image",
    show_default=True,
    help="image: the whole image is the crop; detect: find the face and apply the card's crop rule.",
)
@click.option("--fairness", is_flag=True, help="Gender accuracy by UTKFace age band and race (file names).")
@_dump_opt
@_with_common
def crops_cmd(task, data_dir, framing, fairness, dump, model, json_out, limit, update_card, key):
    """Each image of DATA_DIR (class subfolders) is one face crop."""
    _emit(
        evaluate_crops(data_dir, task, model, framing=framing, limit=limit, fairness=fairness, dump=dump),
        json_out,
        update_card,
        key,
    )


@evaluate.command("faces")
@click.option("--task", type=click.Choice(["mask", "gender"]), required=True)
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--synthetic-mask", is_flag=True, help="Draw a synthetic mask on each face first (gender under masks)."
)
@_with_detector
@_dump_opt
@_with_common
def faces_cmd(
    task,
    data_dir,
    synthetic_mask,
    detector,
    yunet,
    single_pass,
    dump,
    model,
    json_out,
    limit,
    update_card,
    key,
):
    """Each image of DATA_DIR goes through detect -> largest face -> classify; no face counts as an error."""
    r = evaluate_faces(
        data_dir,
        task,
        model,
        synthetic_mask=synthetic_mask,
        thorough=not single_pass,
        detector=detector,
        yunet=yunet,
        limit=limit,
        dump=dump,
    )
    _emit(r, json_out, update_card, key)


@evaluate.command("scenes")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--score", type=float, default=None, help="Detector score threshold (default: the app's).")
@click.option(
    "--fold",
    default=None,
    metavar="I/K",
    help="Only the photos of fold I of K (held out from training by `prepare --exclude-fold I/K`).",
)
@matching_options
@_with_detector
@_dump_opt
@_with_common
def scenes_cmd(
    data_dir,
    score,
    fold,
    match,
    iou,
    detector,
    yunet,
    single_pass,
    dump,
    model,
    json_out,
    limit,
    update_card,
    key,
):
    """DATA_DIR holds images/ and annotations/ (PASCAL VOC): detection recall/precision and mask accuracy."""
    try:
        fold = parse_fold(fold)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fold") from None
    match, iou = resolve_matching(match, iou)
    _emit(
        evaluate_scenes(
            data_dir,
            model,
            detector=detector,
            yunet=yunet,
            limit=limit,
            score=score,
            thorough=not single_pass,
            fold=fold,
            match=match,
            iou_min=iou,
            dump=dump,
        ),
        json_out,
        update_card,
        key,
    )


@evaluate.command("folds")
@click.argument("fold_results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the result here."
)
@click.option(
    "--update-card",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Also store the result in this model card's metrics.",
)
@click.option("--key", default="scenes_dev_cross_validation", show_default=True, help="Metrics key.")
def folds_cmd(fold_results, json_out, update_card, key):
    """Pool `evaluate scenes --fold I/K` JSON results (one per fold) into one cross-validation figure."""
    try:
        pooled = pool_scene_folds([json.loads(Path(p).read_text()) for p in fold_results])
    except (ValueError, KeyError) as exc:
        raise click.UsageError(f"cannot pool {', '.join(fold_results)}: {exc}") from None
    _emit(pooled, json_out, update_card, key)


from maskwatch.train.calibrate import calibrate_cmd  # noqa: E402  (torch-free, like this module)

evaluate.add_command(calibrate_cmd)
