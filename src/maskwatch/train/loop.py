"""Training loop: multi-task batches, face augmentation on the device, class balancing, early stopping,
checkpoints with resume, and a progress bar. Works on CPU; uses CUDA when present.

A sample carries a label per task (-1 where its dataset says nothing about that task). Gender datasets can
feed the mask head as `no_mask` (their faces are unmasked) and, with synthetic masks drawn on, as `mask`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from maskwatch.train.data import ImageSet
from maskwatch.train.recipe import TrainRecipe
from maskwatch.train.synth import draw_mask, occlude

log = logging.getLogger(__name__)


_R = TrainRecipe  # a training run's defaults are written there, once


@dataclass
class TrainConfig:
    """What the loop reads: a train recipe's values for one run (`from_recipe`), under the loop's names."""

    arch: str = _R.arch
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)  # head -> its labels, in output order
    size: int | None = _R.size  # from_recipe: the arch's when the recipe says None
    epochs: int = _R.epochs
    batch_size: int = _R.batch_size
    lr: float = _R.lr
    weight_decay: float = _R.weight_decay
    patience: int = _R.patience
    seed: int = _R.seed
    device: str = _R.device
    synthetic_mask: float = 0.0  # probability of drawing a mask on a sample that has no mask label
    gender_faces_unmasked: bool = _R.mask_from_gender  # gender sets teach the mask head no_mask (mask drawn)
    augment: bool = True
    low_res_p: float = _R.low_res
    occlusion_p: float = _R.occlusion
    oversample: dict[str, float] | None = None
    incorrect_mask_p: float = _R.incorrect_mask
    jpeg_p: float = _R.jpeg
    max_steps_per_epoch: int | None = _R.max_steps
    keep: str = _R.keep
    train_only: str | None = _R.train_only
    num_workers: int = _R.workers
    amp: bool = True
    label_smoothing: float = _R.label_smoothing
    time_budget_s: float | None = _R.time_budget

    @classmethod
    def from_recipe(cls, r: TrainRecipe, size: int) -> TrainConfig:
        return cls(
            arch=r.arch, labels=r.labels, size=size, epochs=r.epochs, batch_size=r.batch_size, lr=r.lr,
            weight_decay=r.weight_decay, patience=r.patience, seed=r.seed, device=r.device,
            synthetic_mask=r.synthetic_mask, gender_faces_unmasked=r.mask_from_gender, low_res_p=r.low_res,
            occlusion_p=r.occlusion, oversample=r.oversample or None, incorrect_mask_p=r.incorrect_mask,
            jpeg_p=r.jpeg, max_steps_per_epoch=r.max_steps, keep=r.keep, train_only=r.train_only,
            num_workers=r.workers, label_smoothing=r.label_smoothing, time_budget_s=r.time_budget,
        )  # fmt: skip


def label_index(names: tuple[str, ...], label: str) -> int:
    """Index of `label` among a head's labels; `incorrect` reads as no_mask for a head without it (how
    two-label mask models learnt masks worn below the nose)."""
    if label == "incorrect" and label not in names:
        label = "no_mask"
    return names.index(label)


@dataclass
class Split:
    """Samples of one phase: images (N,S,S,3) RGB uint8, labels (N, n_heads) int (-1 unknown), landmarks
    (N,5,2) in units of the side (NaN unknown), the source index of each sample (which --data), and how
    many times as often as others of its class it is drawn (`--oversample`)."""

    images: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray
    source: np.ndarray
    may_synth: np.ndarray  # bool: a synthetic mask may be drawn (faces known to be unmasked)
    primary: np.ndarray | None = None  # head index of each sample's own dataset task
    draw_factor: np.ndarray | None = None  # None: all 1

    def __len__(self) -> int:
        return len(self.images)


def draw_factors(s: ImageSet, oversample: dict[str, float] | None) -> np.ndarray:
    """Per sample of `s`: the factor of its class folder, else of its dataset folder, else 1."""
    factors = {Path(k).resolve(): v for k, v in (oversample or {}).items()}
    own = factors.get(Path(s.root).resolve(), 1.0)
    parents = [str(Path(f).parent) for f in s.files]
    by_class = {d: factors.get(Path(d).resolve(), own) for d in set(parents)}
    return np.array([by_class[d] for d in parents], np.float64)


def make_split(
    sets: list[ImageSet],
    labels: dict[str, tuple[str, ...]],
    gender_faces_unmasked: bool,
    oversample: dict[str, float] | None = None,
) -> Split:
    """The samples of `sets` for heads `labels` (head -> its labels, in output order)."""
    heads = tuple(labels)
    imgs, labs, lms, src, synth, prim = [], [], [], [], [], []
    for si, s in enumerate(sets):
        task = s.task
        lab = np.full((len(s.labels), len(heads)), -1, np.int64)
        if task in heads:
            lab[:, heads.index(task)] = [label_index(labels[task], x) for x in s.labels]
        # faces of gender sets (unmasked) may get a synthetic mask drawn on (then labeled `mask`)
        unmasked_rows = np.full(len(s.labels), task == "gender")
        if task == "gender" and gender_faces_unmasked and "mask" in heads:
            lab[:, heads.index("mask")] = labels["mask"].index("no_mask")
        imgs.append(s.images)
        labs.append(lab)
        lms.append(s.landmarks)
        src.append(np.full(len(s.labels), si))
        synth.append(unmasked_rows)
        prim.append(np.full(len(s.labels), heads.index(task) if task in heads else 0))
    return Split(
        np.concatenate(imgs),
        np.concatenate(labs),
        np.concatenate(lms),
        np.concatenate(src),
        np.concatenate(synth),
        np.concatenate(prim),
        np.concatenate([draw_factors(s, oversample) for s in sets]) if oversample else None,
    )


def sample_weights(split: Split, primary: np.ndarray | None = None) -> np.ndarray:
    """Class balancing: each task (the task of a sample's own dataset) gets the same share of the
    samples, and inside a task each class the same share. A sample with `draw_factor` F is drawn F times
    as often as the others of its class (e.g. a small in-domain set)."""
    if primary is None:  # the first head a sample has a label for
        primary = np.argmax(split.labels >= 0, axis=1)
    factor = np.ones(len(split)) if split.draw_factor is None else split.draw_factor
    w = np.zeros(len(split), np.float64)
    tasks = np.unique(primary)
    for t in tasks:
        in_t = primary == t
        classes = np.unique(split.labels[in_t, t])
        for c in classes:
            sel = in_t & (split.labels[:, t] == c)
            w[sel] = factor[sel] / (len(tasks) * len(classes) * factor[sel].sum())
    return w / w.sum()


# -------------------------------------------------------------------------------------- augmentation
def landmarks_or_default(lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop's landmarks (units of its side), or the typical ones jittered where unknown."""
    if np.isnan(lm).any():
        from maskwatch.train.data import DEFAULT_LANDMARKS

        return DEFAULT_LANDMARKS + rng.normal(0, 0.015, (5, 2))
    return lm


def jpeg_noise(image_rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`image_rgb` re-encoded as JPEG at a random quality 25-84 (compression artefacts of cameras)."""
    q = int(rng.integers(25, 85))
    ok, enc = cv2.imencode(".jpg", image_rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(enc, cv2.IMREAD_COLOR)[..., ::-1] if ok else image_rgb


def cpu_augment(
    batch: np.ndarray,
    landmarks: np.ndarray,
    may_synth: np.ndarray,
    cfg: TrainConfig,
    rng: np.random.Generator,
    may_occlude: np.ndarray | None = None,
):
    """Per-sample CPU work: synthetic masks, occlusions and masks worn wrongly or properly (on
    `may_occlude` rows: unmasked faces of mask sets) and JPEG noise.
    Returns (images, per row the label its drawn mask gives it: "mask" (worn properly), "incorrect"
    (below the nose or on the chin), or "" (none drawn))."""
    out = batch.copy()
    drawn = np.full(len(batch), "", "<U9")
    side = batch.shape[1]
    for i in range(len(batch)):
        if cfg.synthetic_mask > 0 and may_synth[i] and rng.random() < cfg.synthetic_mask:
            out[i] = draw_mask(out[i], landmarks_or_default(landmarks[i], rng) * side, rng)
            drawn[i] = "mask"
        elif cfg.augment and may_occlude is not None and may_occlude[i]:
            r = rng.random()
            if r < 2 * cfg.incorrect_mask_p:
                # worn wrongly (incorrect) or, as often, worn properly (mask): the same drawn masks on
                # both sides, so the model learns where a mask sits, not what a drawn one looks like
                worn = "correct" if r >= cfg.incorrect_mask_p else str(rng.choice(["below_nose", "chin"]))
                out[i] = draw_mask(out[i], landmarks_or_default(landmarks[i], rng) * side, rng, worn=worn)
                drawn[i] = "mask" if worn == "correct" else "incorrect"
            elif len(batch) > 1 and r < 2 * cfg.incorrect_mask_p + cfg.occlusion_p:
                out[i] = occlude(out[i], batch[(i + 1 + rng.integers(len(batch) - 1)) % len(batch)], rng)
        if cfg.augment and rng.random() < cfg.jpeg_p:
            out[i] = jpeg_noise(out[i], rng)
    return out, drawn


def gpu_augment(x, cfg: TrainConfig, out_size: int, train: bool, gen):
    """x: (B,3,S,S) float in [0,1] on the device -> (B,3,out,out): flip, rotate, shift, zoom, color,
    blur and low resolution. Geometry uses edge padding like the runtime crop."""
    import torch
    import torch.nn.functional as F

    B = x.shape[0]
    dev = x.device
    if not (train and cfg.augment):
        if x.shape[-1] != out_size:
            x = F.interpolate(
                x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True
            )
        return x

    def U(a, b, n=B):
        return torch.rand(n, device=dev, generator=gen) * (b - a) + a

    ang = U(-12, 12) * math.pi / 180
    scale = torch.exp(U(math.log(0.85), math.log(1.22)))  # >1 zooms out (face smaller)
    tx, ty = U(-0.07, 0.07), U(-0.07, 0.07)
    flip = torch.where(torch.rand(B, device=dev, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(ang) * scale, torch.sin(ang) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (B, 3, out_size, out_size), align_corners=False)
    if x.shape[-1] > out_size * 1.3:
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # low resolution: downscale to 12..48 px and back up (small faces in wide scenes)
    if cfg.low_res_p > 0:
        sel = torch.rand(B, device=dev, generator=gen) < cfg.low_res_p
        if sel.any():
            r = int(torch.randint(12, 49, (1,), device=dev, generator=gen).item())
            small = F.interpolate(x[sel], size=(r, r), mode="bilinear", align_corners=False, antialias=True)
            x[sel] = F.interpolate(small, size=(out_size, out_size), mode="bilinear", align_corners=False)
    # blur
    sel = torch.rand(B, device=dev, generator=gen) < 0.15
    if sel.any():
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=dev)
        k = (k[:, None] * k[None, :]) / 256
        xs = F.pad(x[sel], (2, 2, 2, 2), mode="replicate")
        x[sel] = F.conv2d(xs, k.expand(3, 1, 5, 5).contiguous(), groups=3)
    # color: brightness, contrast, saturation, gray, per-channel gain
    b = U(-0.2, 0.2).view(B, 1, 1, 1)
    c = U(0.7, 1.35).view(B, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean + b
    gray = x.mean(dim=1, keepdim=True)
    s = U(0.6, 1.4).view(B, 1, 1, 1)
    s = torch.where(torch.rand(B, 1, 1, 1, device=dev, generator=gen) < 0.08, torch.zeros_like(s), s)
    x = gray + (x - gray) * s
    x = x * U(0.92, 1.08, B * 3).view(B, 3, 1, 1)
    x = x + torch.randn(x.shape, device=dev, generator=gen) * U(0, 0.03).view(B, 1, 1, 1)
    return x.clamp(0, 1)


# ------------------------------------------------------------------------------------------- training
def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _to_tensor(batch_np, device):
    import torch

    t = torch.from_numpy(batch_np).to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def predict_split(
    model, split: Split, cfg: TrainConfig, device, mean, std, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Softmax probabilities per head on un-augmented images."""
    import torch

    model.eval()
    outs: dict[str, list] = {h: [] for h in model.heads}
    with torch.no_grad():
        for i in range(0, len(split), batch_size):
            x = _to_tensor(split.images[i : i + batch_size], device)
            x = gpu_augment(x, cfg, cfg.size, False, None)
            x = (x - mean) / std
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
                o = model(x)
            for h in model.heads:
                outs[h].append(torch.softmax(o[h].float(), 1).cpu().numpy())
    return {h: np.concatenate(v) for h, v in outs.items()}


def evaluate_split(model, split: Split, cfg: TrainConfig, device, mean, std) -> dict:
    probs = predict_split(model, split, cfg, device, mean, std)
    res = {}
    for hi, h in enumerate(model.heads):
        y = split.labels[:, hi]
        known = y >= 0
        if not known.any():
            continue
        p = np.clip(probs[h][known], 1e-7, 1)
        yk = y[known]
        res[h] = {
            "loss": float(-np.log(p[np.arange(len(yk)), yk]).mean()),
            "accuracy": float((p.argmax(1) == yk).mean()),
            "balanced_accuracy": float(np.mean([(p[yk == c].argmax(1) == c).mean() for c in np.unique(yk)])),
            "n": int(known.sum()),
        }
    return res


def train(
    model,
    train_split: Split,
    val_split: Split,
    cfg: TrainConfig,
    out: Path,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train `model` in place (the best validation epoch's weights end up loaded). Returns the history."""
    import torch
    import torch.nn.functional as F

    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    from maskwatch.train.nets import normalization

    m, s = normalization(cfg.arch)
    mean = torch.tensor(m, device=device).view(1, 3, 1, 1)
    std = torch.tensor(s, device=device).view(1, 3, 1, 1)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_split) / cfg.batch_size))
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    warm = min(steps_per_epoch, max(1, total // 20))

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm))) * 0.98 + 0.02

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    weights = sample_weights(train_split, train_split.primary)
    no_mask_rows = np.zeros(len(train_split), bool)
    mask_names = cfg.labels.get("mask", ())
    if "mask" in model.heads:
        no_mask_rows = train_split.labels[:, model.heads.index("mask")] == mask_names.index("no_mask")
    history: dict = {"config": {k: v for k, v in asdict(cfg).items()}, "epochs": []}
    best = {"score": -1.0, "epoch": -1}
    start_epoch = 0
    ckpt_path = out / "checkpoint.pt"
    best_path = out / "best.pt"
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        history, best, start_epoch = ck["history"], ck["best"], ck["epoch"] + 1
        rng = np.random.default_rng(cfg.seed + start_epoch)
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)

    pool = ThreadPoolExecutor(2)  # batch assembly, two batches ahead
    chunk_pool = ThreadPoolExecutor(max(1, cfg.num_workers))  # per-sample CPU augmentation
    bad_epochs = 0 if best["epoch"] < 0 else (start_epoch - 1 - best["epoch"])
    n_heads = len(model.heads)
    t_start = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        if cfg.time_budget_s and epoch > start_epoch:
            per_epoch = (t0 - t_start) / (epoch - start_epoch)
            if t0 - t_start + per_epoch > cfg.time_budget_s:
                log.warning("time budget %.0fs reached after %d epochs", cfg.time_budget_s, epoch)
                history["stopped_by_time_budget"] = epoch
                break
        model.train()
        idx_all = rng.choice(len(train_split), size=steps_per_epoch * cfg.batch_size, replace=True, p=weights)

        def prep(step, idx_all=idx_all, epoch=epoch):
            idx = idx_all[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            chunks = np.array_split(np.arange(len(idx)), max(1, min(cfg.num_workers, len(idx) // 16)))
            parts = list(
                chunk_pool.map(
                    lambda jc: cpu_augment(
                        train_split.images[idx[jc[1]]],
                        train_split.landmarks[idx[jc[1]]],
                        train_split.may_synth[idx[jc[1]]],
                        cfg,
                        np.random.default_rng([cfg.seed, epoch, step, jc[0]]),
                        no_mask_rows[idx[jc[1]]],
                    ),
                    enumerate(chunks),
                )
            )
            imgs = np.concatenate([p[0] for p in parts])
            drawn = np.concatenate([p[1] for p in parts])
            labels = train_split.labels[idx].copy()
            if "mask" in model.heads:  # a drawn mask relabels a row; rows of unknown mask label stay unknown
                col = labels[:, model.heads.index("mask")]
                for worn in ("mask", "incorrect"):
                    col[(drawn == worn) & (col >= 0)] = label_index(mask_names, worn)
            return imgs, labels

        sums = np.zeros((n_heads, 3))  # loss sum, correct, count
        it = range(steps_per_epoch)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(it, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
            it = bar
        futs = {k: pool.submit(prep, k) for k in range(min(3, steps_per_epoch))}
        for step in it:
            imgs, labels = futs.pop(step).result()
            if step + 3 < steps_per_epoch:
                futs[step + 3] = pool.submit(prep, step + 3)
            x = _to_tensor(imgs, device)
            x = gpu_augment(x, cfg, cfg.size, True, gen)
            x = (x - mean) / std
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(labels).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
                o = model(x)
            loss = 0.0
            for hi, h in enumerate(model.heads):
                yh = y[:, hi]
                known = yh >= 0
                if not known.any():
                    continue
                logits = o[h].float()[known]
                lh = F.cross_entropy(logits, yh[known], label_smoothing=cfg.label_smoothing)
                loss = loss + lh
                sums[hi] += [
                    lh.item() * known.sum().item(),
                    (logits.argmax(1) == yh[known]).sum().item(),
                    known.sum().item(),
                ]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.set_postfix(loss=f"{float(loss):.3f}")
        if bar is not None:
            bar.close()
        train_metrics = {
            h: {"loss": sums[i, 0] / max(sums[i, 2], 1), "accuracy": sums[i, 1] / max(sums[i, 2], 1)}
            for i, h in enumerate(model.heads)
        }
        val_metrics = evaluate_split(model, val_split, cfg, device, mean, std)
        score = float(
            np.mean([v["balanced_accuracy"] for v in val_metrics.values()])
            - 0.01 * np.mean([v["loss"] for v in val_metrics.values()])
        )
        rec = {
            "epoch": epoch + 1,
            "seconds": round(time.time() - t0, 1),
            "lr": sched.get_last_lr()[0],
            "train": train_metrics,
            "val": val_metrics,
        }
        history["epochs"].append(rec)
        msg = " ".join(
            f"{h}: train {train_metrics[h]['accuracy']:.4f} "
            f"val {val_metrics.get(h, {}).get('accuracy', float('nan')):.4f}"
            for h in model.heads
        )
        log.warning("epoch %d/%d (%.0fs) %s", epoch + 1, cfg.epochs, rec["seconds"], msg)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch}
            torch.save(model.state_dict(), best_path)
            bad_epochs = 0
        else:
            bad_epochs += 1
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "history": history,
                "best": best,
                "epoch": epoch,
            },
            ckpt_path,
        )
        (out / "history.json").write_text(json.dumps(history, indent=1))
        if bad_epochs >= cfg.patience:
            log.warning("early stop: no improvement for %d epochs", cfg.patience)
            history["early_stopped_at"] = epoch + 1
            break
    pool.shutdown()
    chunk_pool.shutdown()
    if cfg.keep == "best" and best_path.is_file():
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    history["best_epoch"] = best["epoch"] + 1
    history["kept"] = cfg.keep
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return history
