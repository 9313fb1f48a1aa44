"""`maskwatch train | prepare | evaluate`. torch is imported inside the command bodies only.

Also runnable without the rest of the app (e.g. on a training machine):
`python -m maskwatch.train.cli train ...`.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

import click
import numpy as np

log = logging.getLogger(__name__)

# public origin and license of the datasets the defaults are trained on (see ../shared/data/README.md)
SOURCES = {
    "facemask12k": (
        "Kaggle 'Face Mask 12K Images Dataset' (ashishjangra27)",
        "MIT (GitHub mirror); Kaggle terms apply",
    ),
    "fm12k": (
        "Kaggle 'Face Mask 12K Images Dataset' (ashishjangra27)",
        "MIT (GitHub mirror); Kaggle terms apply",
    ),
    "chandrika": ("GitHub chandrikadeb7/Face-Mask-Detection dataset/", "MIT"),
    "utkface": ("UTKFace", "non-commercial research use only"),
    "balajisrinivas": ("GitHub balajisrinivas/Gender-Detection gender_dataset_face/", "none stated"),
    "scenes": ("Kaggle 'Face Mask Detection' (andrewmvd), development half (scenes/dev)", "CC0"),
}
THRESHOLD_TARGETS = {"mask": 0.99, "gender": 0.97}


def _source_info(path: str) -> dict:
    low = path.lower()
    for key, (origin, lic) in SOURCES.items():
        if key in low:
            return {"source": origin, "license": lic}
    return {"source": "local folder", "license": "unknown"}


def _parse_oversample(specs: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for spec in specs:
        d, sep, factor = spec.rpartition("=")
        try:
            out[d] = float(factor)
        except ValueError:
            sep = ""
        if not sep or not d or out[d] <= 0:
            raise click.BadParameter(
                f"expected DIR=FACTOR (FACTOR > 0), got {spec!r}", param_hint="--oversample"
            )
    return out


def _oversample_factors(data_dirs: list[str], oversample: dict[str, float] | None) -> dict[str, float] | None:
    """Checked --oversample folders: each a --data folder or a class folder directly inside one."""
    if not oversample:
        return None
    roots = {Path(d).resolve() for d in data_dirs}
    unknown = [
        d
        for d in oversample
        if Path(d).resolve() not in roots and not (Path(d).is_dir() and Path(d).resolve().parent in roots)
    ]
    if unknown:
        raise click.UsageError(
            "--oversample names folders that are not --data folders or class folders inside one: "
            + ", ".join(sorted(unknown))
        )
    return dict(oversample)


def _heads_for(task: str) -> tuple[str, ...]:
    return ("mask", "gender") if task == "attributes" else (task,)


def run_training(
    task: str,
    data_dirs: list[str],
    val_dirs: list[str],
    arch: str,
    out: str | Path,
    *,
    size: int | None = None,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float | None = None,
    patience: int = 5,
    synthetic_mask: float | None = None,
    device: str = "auto",
    resume: bool = False,
    limit_per_class: int | None = None,
    max_steps: int | None = None,
    oversample: dict[str, float] | None = None,
    keep: str = "best",
    seed: int = 0,
    name: str | None = None,
    onnx_name: str | None = None,
    workers: int = 8,
    progress: bool = True,
    command: str | None = None,
    pretrained: bool = True,
    export_onnx: bool = True,
    time_budget_s: float | None = None,
    occlusion: float | None = None,
    incorrect_mask: float = 0.0,
    init: str | Path | None = None,
    low_res: float | None = None,
    mask_from_gender: bool = True,
    train_only: str | None = None,
    quantize: bool = False,
    quantize_samples: int = 400,
) -> dict:
    """Train, export ONNX + model card + plots into `out`. Returns the card."""
    import torch

    from maskwatch.train import data as D
    from maskwatch.train import export, report
    from maskwatch.train.evaluate import fairness_report
    from maskwatch.train.loop import TrainConfig, make_split, predict_split, resolve_device, train
    from maskwatch.train.nets import DEFAULT_SIZE, build, count_params, normalization
    from maskwatch.train.synth import MASKED_FACE_BOX

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    heads = _heads_for(task)
    size = size or DEFAULT_SIZE[arch]
    load_size = size if size <= 128 else 112
    if synthetic_mask is None:
        synthetic_mask = 0.4 if "gender" in heads and arch == "mnv2-attr" else 0.0
    default_lr = {
        "seed-gender-cnn": 1e-3,
        "seed-mask-cnn": 1e-3,
        "seed-mobilenetv2": 1e-3,
        "mnv2-attr": 1e-3,
    }[arch]
    cfg = TrainConfig(
        arch=arch,
        heads=heads,
        size=size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr or default_lr,
        patience=patience,
        seed=seed,
        device=device,
        synthetic_mask=synthetic_mask,
        max_steps_per_epoch=max_steps,
        oversample=_oversample_factors(data_dirs, oversample),
        keep=keep,
        num_workers=workers,
        pretrained=pretrained,
        time_budget_s=time_budget_s,
        occlusion_p=occlusion or 0.0,
        incorrect_mask_p=incorrect_mask,
        low_res_p=0.35 if low_res is None else low_res,
        gender_faces_unmasked=mask_from_gender,
        train_only=train_only,
    )
    # load data; split each task's data 80/20 unless a validation folder of that task is given
    train_sets, val_sets, data_card = [], [], []
    vals = [D.load_folder(v, load_size, workers=workers) for v in val_dirs]
    val_tasks = {v.task for v in vals}
    for d in data_dirs:
        s = D.load_folder(d, load_size, limit_per_class=limit_per_class, seed=seed, workers=workers)
        if s.task not in heads and not (s.task == "gender" and "mask" in heads and task == "attributes"):
            raise click.UsageError(f"{d} holds {s.task} classes; task {task} takes {heads}")
        if s.task in val_tasks:
            tr, va = s, None
        else:
            ti, vi = D.stratified_split(s.labels, 0.2, seed)
            tr, va = s.subset(ti), s.subset(vi)
        train_sets.append(tr)
        if va is not None:
            val_sets.append(va)
        counts = {lab: int(sum(1 for x in s.labels if x == lab)) for lab in sorted(set(s.labels))}
        data_card.append(
            {
                "path": str(d),
                "task": s.task,
                "counts": counts,
                "skipped_unreadable": s.skipped,
                "train": len(tr),
                "val": 0 if va is None else len(va),
                **_source_info(str(d)),
            }
        )
    for v in vals:
        val_sets.append(v)
        data_card.append(
            {
                "path": v.root,
                "task": v.task,
                "role": "validation",
                "n": len(v.labels),
                "skipped_unreadable": v.skipped,
                **_source_info(v.root),
            }
        )
    tr_split = make_split(train_sets, heads, cfg.gender_faces_unmasked, cfg.oversample)
    va_split = make_split(val_sets, heads, cfg.gender_faces_unmasked)
    log.warning(
        "train %d samples, val %d samples, heads %s, arch %s, size %d",
        len(tr_split),
        len(va_split),
        heads,
        arch,
        size,
    )

    model = build(arch, heads, pretrained=pretrained)
    if init:  # fine-tune from earlier weights (a state dict, e.g. OUT/best.pt of another run)
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    if train_only:
        if not hasattr(model, "train_only"):
            raise click.UsageError(f"--train-only needs the two-head mnv2-attr net, not {arch}")
        model.train_only(train_only)
    history = train(model, tr_split, va_split, cfg, out, resume=resume, progress=progress)
    history["parameters"] = {"trainable": count_params(model), "total": count_params(model, False)}
    (out / "history.json").write_text(json.dumps(history, indent=1))
    report.plot_history(history, out / "curves.png")

    # calibration, confusion matrices and fairness on validation (the best epoch's weights)
    device = resolve_device(device)
    mean, std = normalization(arch)
    mt = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    st = torch.tensor(std, device=device).view(1, 3, 1, 1)
    probs = predict_split(model, va_split, cfg, device, mt, st)
    thresholds, metrics, fairness = {}, {"validation": {}}, {}
    for hi, h in enumerate(heads):
        y = va_split.labels[:, hi]
        known = y >= 0
        # calibrate on the head's own task data (for the mask head: mask sets, not gender sets)
        own = known & np.array([val_sets[i].task == h for i in va_split.source])
        sel = own if own.any() else known
        p, yk = probs[h][sel], y[sel]
        cal = export.calibrate_threshold(p, yk, THRESHOLD_TARGETS[h])
        thresholds[h] = cal["threshold"]
        labels = list(D.TASK_LABELS[h])
        cm = report.confusion(yk, p.argmax(1), 2)
        report.plot_confusion(cm, labels, out / f"confusion_{h}.png", f"{h} (validation, n={len(yk)})")
        metrics["validation"][h] = {
            "n": int(len(yk)),
            "accuracy": float((p.argmax(1) == yk).mean()),
            "balanced_accuracy": float(np.mean([(p[yk == c].argmax(1) == c).mean() for c in np.unique(yk)])),
            "confusion": cm.tolist(),
            "calibration": cal,
        }
        if h == "gender":
            files = [
                val_sets[si].files[j]
                for si, j in zip(va_split.source, _positions(va_split.source), strict=True)
            ]
            fr = fairness_report([files[i] for i in np.flatnonzero(sel)], yk, p)
            if fr:
                fairness = {"gender": {"set": "UTKFace validation split", **fr}}
    onnx_name = onnx_name or ("attributes.onnx" if task == "attributes" else f"{task}.onnx")
    model.cpu().eval()
    if export_onnx:
        export.export_onnx(model, out / onnx_name, size)
        if quantize:
            fp32 = out / onnx_name.replace(".onnx", "-fp32.onnx")
            (out / onnx_name).replace(fp32)
            rng = np.random.default_rng(seed)
            pick = rng.choice(len(tr_split), size=min(quantize_samples, len(tr_split)), replace=False)
            calib = tr_split.images[np.sort(pick)]
            if calib.shape[1] != size:
                import cv2

                calib = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_LINEAR) for c in calib])
            export.quantize_int8(fp32, out / onnx_name, calib, mean, std)
    metrics["parameters"] = history["parameters"]
    metrics["best_epoch"] = history.get("best_epoch")
    card = export.make_card(
        name=name or f"maskwatch-{arch}-{size}",
        onnx_file=onnx_name,
        arch=arch,
        size=size,
        mean=mean,
        std=std,
        heads=heads,
        thresholds=thresholds,
        # a face the mask head calls masked: gender from a crop framed as the bare face's (synth.py)
        masked_faces=dict(MASKED_FACE_BOX) if {"mask", "gender"} <= set(heads) else None,
        data={
            "train": data_card,
            "synthetic_mask_probability": synthetic_mask,
            "gender_sets_teach_no_mask": "mask" in heads and "gender" in heads,
        },
        metrics=metrics,
        fairness=fairness,
        command=command or "maskwatch " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        extra={
            "quantization": {
                "type": "int8 static, QDQ, per-channel weights (onnxruntime)",
                "calibration_images": quantize_samples,
                "float_model": fp32.name,
            }
        }
        if quantize and export_onnx
        else None,
    )
    export.write_card(card, out / onnx_name.replace(".onnx", ".json"))
    return card


def _positions(source: np.ndarray) -> list[int]:
    """Position of each sample inside its own source set (samples are concatenated in order)."""
    pos, seen = [], {}
    for s in source:
        pos.append(seen.get(int(s), 0))
        seen[int(s)] = pos[-1] + 1
    return pos


@click.command("train")
@click.argument("task", type=click.Choice(["mask", "gender", "attributes"]))
@click.option(
    "--data",
    "data_dirs",
    multiple=True,
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of class subfolders (repeatable). For `attributes`, mask and gender folders together.",
)
@click.option(
    "--val",
    "val_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Validation folder (repeatable); else a stratified 80/20 split with a fixed seed.",
)
@click.option(
    "--arch",
    default="mnv2-attr",
    show_default=True,
    type=click.Choice(["mnv2-attr", "seed-gender-cnn", "seed-mask-cnn", "seed-mobilenetv2"]),
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder (ONNX, card, plots, history).",
)
@click.option("--size", type=int, default=None, help="Input size (default: the arch's).")
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=None)
@click.option("--patience", type=int, default=5, show_default=True, help="Early stopping patience (epochs).")
@click.option(
    "--synthetic-mask", type=float, default=None, help="Probability of drawing a mask on an unmasked face."
)
@click.option(
    "--occlusion",
    type=float,
    default=0.0,
    show_default=True,
    help="Probability of hiding part of an unmasked face (it stays no_mask).",
)
@click.option(
    "--incorrect-mask",
    type=float,
    default=0.0,
    show_default=True,
    help="Probability of drawing a mask worn below the nose or on the chin on an unmasked face (no_mask); "
    "as many get a properly worn one (mask), so only the position tells them apart.",
)
@click.option(
    "--init",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Start from these weights (a state dict .pt, e.g. best.pt of an earlier run): fine-tuning.",
)
@click.option(
    "--low-res",
    type=float,
    default=0.35,
    show_default=True,
    help="Probability of a down-and-up scaling to 12-48 px (small faces).",
)
@click.option(
    "--mask-from-gender/--no-mask-from-gender",
    default=True,
    show_default=True,
    help="attributes: gender folders also train the mask head (no_mask, or mask when one is drawn).",
)
@click.option(
    "--quantize", is_flag=True, help="Ship int8 (static, QDQ) ONNX; the float one is kept as NAME-fp32.onnx."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@click.option("--limit-per-class", type=int, default=None, help="Use at most N images per class and folder.")
@click.option("--max-steps", type=int, default=None, help="At most N batches per epoch.")
@click.option(
    "--oversample",
    multiple=True,
    metavar="DIR=FACTOR",
    help="Draw the samples of DIR (a --data folder, or a class folder inside one, which then overrides "
    "its --data folder's factor) FACTOR times as often as others of their class (a small in-domain set, "
    "a rare kind of face). Repeatable.",
)
@click.option(
    "--train-only",
    type=click.Choice(["mask", "gender"]),
    default=None,
    help="Train this head only (with --init): the features and the other head stay exactly as they are.",
)
@click.option(
    "--keep",
    type=click.Choice(["best", "last"]),
    default="best",
    show_default=True,
    help="Export the best epoch on validation, or the last (when validation cannot see the goal).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", default=None, help="Model name in the card.")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option(
    "--workers", type=int, default=8, show_default=True, help="Threads for image loading/augmentation."
)
@click.option("--no-pretrained", is_flag=True, help="Do not load ImageNet weights.")
@click.option("--no-progress", is_flag=True)
@click.option("--no-export", is_flag=True, help="Skip the ONNX export (the card is still written).")
@click.option("--time-budget", type=float, default=None, help="Seconds: start no epoch that would end later.")
def train(
    task,
    data_dirs,
    val_dirs,
    arch,
    out,
    size,
    epochs,
    batch_size,
    lr,
    patience,
    synthetic_mask,
    occlusion,
    incorrect_mask,
    init,
    low_res,
    mask_from_gender,
    train_only,
    quantize,
    device,
    resume,
    limit_per_class,
    max_steps,
    oversample,
    keep,
    seed,
    name,
    threads,
    workers,
    no_pretrained,
    no_progress,
    no_export,
    time_budget,
):
    """Train a TASK model (mask, gender, or both heads: attributes) from folders of labeled images.

    Writes ONNX + model card, history JSON, loss/accuracy curves and confusion matrices into OUT.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    card = run_training(
        task,
        list(data_dirs),
        list(val_dirs),
        arch,
        out,
        size=size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        synthetic_mask=synthetic_mask,
        occlusion=occlusion,
        incorrect_mask=incorrect_mask,
        init=init,
        low_res=low_res,
        mask_from_gender=mask_from_gender,
        train_only=train_only,
        quantize=quantize,
        device=device,
        resume=resume,
        limit_per_class=limit_per_class,
        max_steps=max_steps,
        oversample=_parse_oversample(oversample),
        keep=keep,
        seed=seed,
        name=name,
        progress=not no_progress,
        workers=workers,
        pretrained=not no_pretrained,
        export_onnx=not no_export,
        time_budget_s=time_budget,
    )
    click.echo(
        json.dumps(
            {
                "out": str(out),
                "onnx": card["onnx"],
                "metrics": {
                    k: {kk: vv for kk, vv in v.items() if kk != "confusion"}
                    for k, v in card["metrics"]["validation"].items()
                },
            },
            indent=1,
        )
    )


@click.command("prepare")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--size", type=int, default=112, show_default=True, help="Crop side in pixels.")
@click.option(
    "--margin",
    type=float,
    default=0.2,
    show_default=True,
    help="Box margin per side (the card's crop.margin).",
)
@click.option("--yunet", type=click.Path(exists=True, dir_okay=False), default=None, help="YuNet ONNX file.")
@click.option(
    "--score", type=float, default=None, help="Detector score threshold [0.5; scene sets: the app's 0.6]."
)
@click.option(
    "--no-fallback",
    is_flag=True,
    help="Skip images without a face (default: treat the image as a tight crop).",
)
@click.option(
    "--exclude-fold",
    default=None,
    metavar="I/K",
    help="Scene sets: leave out the photos of fold I of K (the ones `evaluate scenes --fold I/K` uses).",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
def prepare(src, out, size, margin, yunet, score, no_fallback, exclude_fold, json_out):
    """Detect faces in the class folders of SRC and write face crops (the model card's crop rule) to OUT.

    Reports images with no face or several faces (the largest face is kept). A scene set (SRC/images and
    SRC/annotations, PASCAL VOC) gives one crop per annotated face that the app's detector finds, in a
    folder named by its annotated class.
    """
    from maskwatch.train.data import is_scene_set, parse_fold, prepare_scenes
    from maskwatch.train.data import prepare as _prepare

    if is_scene_set(src):
        try:
            fold = parse_fold(exclude_fold)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--exclude-fold") from None
        rep = prepare_scenes(
            src,
            out,
            size=size,
            margin=margin,
            yunet_path=Path(yunet) if yunet else None,
            score_threshold=0.6 if score is None else score,
            exclude_fold=fold,
        )
        if json_out:
            Path(json_out).write_text(json.dumps(rep, indent=1))
        click.echo(json.dumps(rep, indent=1))
        return
    if exclude_fold is not None:
        raise click.BadParameter("only for scene sets (images/ + annotations/)", param_hint="--exclude-fold")
    rep = _prepare(
        src,
        out,
        size=size,
        margin=margin,
        yunet_path=Path(yunet) if yunet else None,
        score_threshold=0.5 if score is None else score,
        fallback_whole=not no_fallback,
    )
    short = {k: v for k, v in rep.items() if not k.endswith("_files")}
    if json_out:
        Path(json_out).write_text(json.dumps(rep, indent=1))
    click.echo(json.dumps(short, indent=1))
    for key in ("no_face_files", "several_faces_files", "unreadable_files"):
        for f in rep[key][:20]:
            click.echo(f"{key[:-6]}: {f}", err=True)
        if len(rep[key]) > 20:
            click.echo(f"{key[:-6]}: ... {len(rep[key]) - 20} more (see {out}/prepare.json)", err=True)


from maskwatch.train.evaluate import evaluate  # noqa: E402  (a click group; torch-free)


@click.group()
@click.option("-v", "--verbose", count=True)
def cli(verbose: int) -> None:
    """maskwatch training commands (standalone entry point)."""
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


cli.add_command(train)
cli.add_command(prepare)
cli.add_command(evaluate)

if __name__ == "__main__":
    cli()
