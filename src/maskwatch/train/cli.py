"""`maskwatch train | prepare | evaluate`. torch is imported inside the command bodies only.

Also runnable without the rest of the app (e.g. on a training machine):
`python -m maskwatch.train.cli train ...`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path

import click
import numpy as np

from maskwatch.train.recipe import ARCHS, TASKS, TrainRecipe, shipped

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


def _check_paths(r) -> None:
    """The folders and files a train recipe names exist (checked when it runs: a stage may name what the
    stage before it writes)."""
    paths = (
        [("data", d) for d in r.data]
        + [("val", d) for d in r.val]
        + [("oversample", d) for d in r.oversample]
    )
    missing = [
        f"{key} {p}" for key, p in paths + ([("init", r.init)] if r.init else []) if not Path(p).exists()
    ]
    if missing:
        raise click.UsageError("no such file or folder: " + ", ".join(missing))


def run_training(
    r,
    *,
    resume: bool = False,
    progress: bool = True,
    export_onnx: bool = True,
    command: str | None = None,
) -> dict:
    """Train the stage of recipe `r` (a `recipe.TrainRecipe`), export ONNX + model card + plots into
    `r.out`. Returns the card. (`recipe.run` also records the recipe in the card.)"""
    import torch

    from maskwatch.train import data as D
    from maskwatch.train import export, report
    from maskwatch.train.evaluate import fairness_report
    from maskwatch.train.loop import TrainConfig, make_split, predict_split, resolve_device, train
    from maskwatch.train.nets import DEFAULT_SIZE, build, count_params, normalization
    from maskwatch.train.synth import MASKED_FACE_BOX

    _check_paths(r)
    if r.threads:
        torch.set_num_threads(r.threads)
    out = Path(r.out)
    out.mkdir(parents=True, exist_ok=True)
    task, arch, heads, labels, seed, workers = r.task, r.arch, r.heads, r.labels, r.seed, r.workers
    size = r.size or DEFAULT_SIZE[arch]
    load_size = size if size <= 128 else 112
    cfg = TrainConfig.from_recipe(r, size)
    # load data; split each task's data 80/20 unless a validation folder of that task is given
    train_sets, val_sets, data_card = [], [], []
    vals = [D.load_folder(v, load_size, workers=workers) for v in r.val]
    val_tasks = {v.task for v in vals}
    for d in r.data:
        s = D.load_folder(d, load_size, limit_per_class=r.limit_per_class, seed=seed, workers=workers)
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
    tr_split = make_split(train_sets, labels, cfg.gender_faces_unmasked, cfg.oversample)
    va_split = make_split(val_sets, labels, cfg.gender_faces_unmasked)
    log.warning(
        "train %d samples, val %d samples, heads %s, arch %s, size %d",
        len(tr_split),
        len(va_split),
        heads,
        arch,
        size,
    )

    model = build(arch, heads, pretrained=r.pretrained, widths={h: len(v) for h, v in labels.items()})
    if r.init:  # fine-tune from earlier weights (a state dict, e.g. OUT/best.pt of another run)
        model.load_state_dict(torch.load(r.init, map_location="cpu", weights_only=True))
    if r.train_only:
        model.train_only(r.train_only)
    history = train(model, tr_split, va_split, cfg, out, resume=resume, progress=progress)
    history["parameters"] = {"trainable": count_params(model), "total": count_params(model, False)}
    (out / "history.json").write_text(json.dumps(history, indent=1))
    report.plot_history(history, out / "curves.png")

    # calibration, confusion matrices and fairness on validation (the best epoch's weights)
    device = resolve_device(r.device)
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
        cm = report.confusion(yk, p.argmax(1), len(labels[h]))
        report.plot_confusion(
            cm, list(labels[h]), out / f"confusion_{h}.png", f"{h} (validation, n={len(yk)})"
        )
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
    onnx_name = f"{task}.onnx"
    model.cpu().eval()
    if export_onnx:
        export.export_onnx(model, out / onnx_name, size)
        if r.quantize:
            fp32 = out / onnx_name.replace(".onnx", "-fp32.onnx")
            (out / onnx_name).replace(fp32)
            rng = np.random.default_rng(seed)
            pick = rng.choice(len(tr_split), size=min(r.quantize_samples, len(tr_split)), replace=False)
            calib = tr_split.images[np.sort(pick)]
            if calib.shape[1] != size:
                import cv2

                calib = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_LINEAR) for c in calib])
            export.quantize_int8(fp32, out / onnx_name, calib, mean, std)
    metrics["parameters"] = history["parameters"]
    metrics["best_epoch"] = history.get("best_epoch")
    card = export.make_card(
        name=r.name or f"maskwatch-{arch}-{size}",
        onnx_file=onnx_name,
        arch=arch,
        size=size,
        mean=mean,
        std=std,
        labels=labels,
        thresholds=thresholds,
        # a face the mask head calls masked: gender from a crop framed as the bare face's (synth.py)
        masked_faces=dict(MASKED_FACE_BOX) if {"mask", "gender"} <= set(heads) else None,
        data={
            "train": data_card,
            "synthetic_mask_probability": r.synthetic_mask,
            "gender_sets_teach_no_mask": "mask" in heads and "gender" in heads,
        },
        metrics=metrics,
        fairness=fairness,
        command=command or "maskwatch " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        extra={
            "quantization": {
                "type": "int8 static, QDQ, per-channel weights (onnxruntime)",
                "calibration_images": r.quantize_samples,
                "float_model": fp32.name,
            }
        }
        if r.quantize and export_onnx
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


def _option(*decls, help: str = "", **kw):
    """An option overriding the train recipe key of its name; not given (None): the recipe's value.
    The help shows the default from the one place it is written (recipe.TrainRecipe)."""
    key = decls[0].lstrip("-").split("/")[0].replace("-", "_")
    default = {f.name: f.default for f in dataclasses.fields(TrainRecipe)}[key]
    shown = "" if default in (None, dataclasses.MISSING) else f" [recipe default: {default}]"
    return click.option(*decls, key, default=None, help=help + shown, **kw)


@click.command("train")
@click.argument("task", required=False, type=click.Choice(TASKS))
@click.option(
    "--recipe",
    "recipe_file",
    default=None,
    metavar="FILE",
    help="Recipe of the stage (TOML or JSON; or the name of a shipped one: "
    + ", ".join(shipped())
    + "). Options given override its keys.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key (repeatable, after the options): VALUE in TOML (3, 2e-4, true, "
    '["a", "b"], { "dir" = 5 }) or text; lists also as a,b; none clears; vars.NAME=VALUE sets a variable.',
)
@_option(
    "--data",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of class subfolders (repeatable). For `attributes`, mask and gender folders together.",
)
@_option(
    "--val",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Validation folder (repeatable); else a stratified 80/20 split with a fixed seed.",
)
@_option("--arch", type=click.Choice(ARCHS))
@_option("--out", type=click.Path(file_okay=False), help="Output folder (ONNX, card, plots, history).")
@_option("--size", type=int, help="Input size (default: the arch's).")
@_option("--epochs", type=int)
@_option("--batch-size", type=int)
@_option("--lr", type=float)
@_option("--patience", type=int, help="Early stopping patience (epochs).")
@_option(
    "--synthetic-mask",
    type=float,
    help="Probability of drawing a mask on a face of a gender set (default: 0.4 for mnv2-attr "
    "with a gender head, else 0).",
)
@_option("--occlusion", type=float, help="Probability of hiding part of an unmasked face (it stays no_mask).")
@_option(
    "--incorrect-mask",
    type=float,
    help="Probability of drawing a mask worn below the nose or on the chin on an unmasked face (incorrect, "
    "or no_mask without that label); as many get a properly worn one (mask): only the position tells "
    "them apart.",
)
@_option(
    "--init",
    type=click.Path(exists=True, dir_okay=False),
    help="Start from these weights (a state dict .pt, e.g. best.pt of an earlier run): fine-tuning.",
)
@_option("--low-res", type=float, help="Probability of a down-and-up scaling to 12-48 px (small faces).")
@_option(
    "--mask-from-gender/--no-mask-from-gender",
    help="attributes: gender folders also train the mask head (no_mask, or mask when one is drawn).",
)
@_option(
    "--quantize/--no-quantize", help="Ship int8 (static, QDQ) ONNX; the float one stays as NAME-fp32.onnx."
)
@_option("--device", help="auto, cpu, cuda, cuda:N")
@_option("--limit-per-class", type=int, help="Use at most N images per class and folder.")
@_option("--max-steps", type=int, help="At most N batches per epoch.")
@_option(
    "--oversample",
    multiple=True,
    metavar="DIR=FACTOR",
    help="Draw the samples of DIR (a --data folder, or a class folder inside one, which then overrides "
    "its --data folder's factor) FACTOR times as often as others of their class (a small in-domain set, "
    "a rare kind of face). Repeatable.",
)
@_option(
    "--train-only",
    type=click.Choice(["mask", "gender"]),
    help="Train this head only (with --init): the features and the other head stay exactly as they are.",
)
@_option(
    "--keep",
    type=click.Choice(["best", "last"]),
    help="Export the best epoch on validation, or the last (when validation cannot see the goal).",
)
@_option("--seed", type=int)
@_option("--name", help="Model name in the card.")
@_option("--threads", type=int, help="torch CPU threads.")
@_option("--workers", type=int, help="Threads for image loading/augmentation.")
@_option("--pretrained/--no-pretrained", help="Start from ImageNet weights.")
@_option("--time-budget", type=float, help="Seconds: start no epoch that would end later.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@click.option("--no-progress", is_flag=True)
@click.option("--no-export", is_flag=True, help="Skip the ONNX export (the card is still written).")
def train(task, recipe_file, sets, resume, no_progress, no_export, **options):
    """Train a TASK model (mask, gender, or both heads: attributes) from folders of labeled images, or
    run the training stage of a recipe (`--recipe`; docs/training.md, "Recipes").

    Writes ONNX + model card, recipe.json, history JSON, loss/accuracy curves and confusion matrices into OUT.
    """
    from maskwatch.train import recipe as R

    given = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items() if v not in (None, ())}
    if "oversample" in given:
        given["oversample"] = _parse_oversample(given["oversample"])
    if task:
        given["task"] = task
    if recipe_file is None and not {"task", "data", "out"} <= set(given):
        raise click.UsageError("give TASK, --data and --out, or a --recipe")
    try:
        recipe = R.load(recipe_file, sets, options=given)
    except R.RecipeError as e:
        raise click.UsageError(str(e)) from None
    run_options = {"resume": resume, "progress": not no_progress, "export_onnx": not no_export}
    if recipe.kind != "train":
        if resume or no_progress or no_export:
            raise click.UsageError(
                f"--resume, --no-progress and --no-export are options of kind train, not {recipe.kind}"
            )
        run_options = {}
    card = R.run(recipe, **run_options)
    validation = card.get("metrics", {}).get("validation", {})
    click.echo(
        json.dumps(
            {
                "out": recipe.values.out,
                "onnx": card["onnx"],
                "metrics": {
                    k: {kk: vv for kk, vv in v.items() if kk != "confusion"} if isinstance(v, dict) else v
                    for k, v in validation.items()
                },
            },
            indent=1,
        )
    )


from maskwatch.train.evaluate import matching_options, resolve_matching  # noqa: E402


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
@matching_options
def prepare(src, out, size, margin, yunet, score, no_fallback, exclude_fold, json_out, match, iou):
    """Detect faces in the class folders of SRC and write face crops (the model card's crop rule) to OUT.

    Reports images with no face or several faces (the largest face is kept). A scene set (SRC/images and
    SRC/annotations, PASCAL VOC) gives one crop per annotated face that the app's detector finds, in a
    folder named by its annotated class.
    """
    from maskwatch.train.data import is_scene_set, parse_fold, prepare_scenes
    from maskwatch.train.data import prepare as _prepare

    match_rule, iou_min = resolve_matching(match, iou)
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
            match=match_rule,
            iou_min=iou_min,
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
