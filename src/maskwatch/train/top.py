"""Fine-tune the top of a shipped attribute model on cached trunk features (recipe kind `top`).

The trunk (MobileNetV2 blocks before `from_block`, int8 exactly as the runtime runs it) stays frozen.
Each training image is augmented into `views` versions (geometry, colour, low resolution, drawn masks
worn properly or wrongly), pushed once through the trunk with ONNX Runtime, and the trunk's output is
kept in memory. The top (the remaining blocks, the 1280-channel conv and the heads) is rebuilt in torch
from the base graph's weights and trained on those features for many epochs: on two CPU cores that is
minutes per epoch where training the whole net is an hour. The exported model is the frozen int8 trunk
joined to the float top, one ONNX graph with the base model's input and one output per head.

Why: the base model's gender head learnt from one source (UTKFace); many more faces of other sources,
ages and framings (and a third mask label, `incorrect`) mostly need the upper layers to move.

Example:
    >>> r = TopRecipe(data=["runs/crops/utkface"], out="runs/top")
    >>> r.from_block, r.mask_labels
    (18, ('mask', 'no_mask', 'incorrect'))
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from maskwatch.train.data import TASK_LABELS, ImageSet, load_folder, stratified_split, utkface_meta

log = logging.getLogger(__name__)

AGE_BAND_EDGES = (0, 13, 20, 40, 60, 200)  # 0-12, 13-19, 20-39, 40-59, 60+ (evaluate.AGE_BANDS)


@dataclass
class TopRecipe:
    """One `top` training stage. Every default of such a stage lives here."""

    data: list[str] = field(default_factory=list)  # class-folder sets (mask and gender) that train
    out: str = "runs/models/top"
    base: str = "src/maskwatch/models/attributes.json"  # card of the model whose trunk stays frozen
    val: list[str] = field(default_factory=list)  # validation folders (mask or gender); never trained on
    # files left out of training and validation (fnmatch on "SET/CLASS/FILE", e.g. "lfw/*/val_*"):
    # kept for cross-dataset figures
    exclude: list[str] = field(default_factory=list)
    # "I/K": also leave out the crops (set folder `fold_crops`) of the photos of fold I of K of the scene
    # set `fold_scenes`, the photos `evaluate scenes --fold I/K` measures: cross-validation by photo
    exclude_fold: str = ""
    fold_scenes: str = "../shared/data/scenes/dev"
    fold_crops: str = "scenes"
    from_block: int = 18  # first MobileNetV2 block (features.N) that learns; the ones before stay frozen
    heads_only: bool = False  # the convs from from_block on stay as in the base too: only the heads learn
    mask_labels: tuple[str, ...] = TASK_LABELS["mask"]
    views: int = 3  # augmented versions of each image (the first one is the plain crop, maybe mirrored)
    val_fraction: float = 0.2  # sets without a --val folder of their task: stratified split, this seed
    epochs: int = 12
    steps_per_epoch: int = 400
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 1e-4
    dropout: float = 0.2
    label_smoothing: float = 0.05
    patience: int = 4  # with keep = "best": epochs without a better validation score before stopping
    # the weights exported: the last epoch's (the default: validation sets are saturated in-domain sets
    # that cannot tell a better model for faces in the wild) or the best on validation
    keep: str = "last"
    synthetic_mask: float = 0.3  # gender faces: a properly worn drawn mask (mask head: mask)
    incorrect_mask: float = 0.15  # unmasked faces: a mask drawn below the nose or on the chin (incorrect)
    correct_mask: float = 0.1  # unmasked faces of mask sets: a properly worn drawn mask (mask)
    low_res: float = 0.35
    jpeg: float = 0.25
    # gender sampling: each source the same share; inside a UTKFace-named set each (age band, gender)
    # cell the same share, so children and the elderly weigh as much as adults
    balance_age: bool = True
    oversample: dict[str, float] = field(default_factory=dict)  # folder -> draw its samples F x as often
    seed: int = 0
    cache: str = "runs/cache"  # trunk features of the views, reused by later runs ("" = no cache)
    threads: int = 2
    name: str = "maskwatch-mnv2-attr-112-top"

    def __post_init__(self) -> None:
        self.mask_labels = tuple(self.mask_labels)
        if set(self.mask_labels) - set(TASK_LABELS["mask"]) or not {"mask", "no_mask"} <= set(
            self.mask_labels
        ):
            raise ValueError(
                f"mask_labels must hold mask and no_mask (and maybe incorrect): {self.mask_labels}"
            )
        for key in ("synthetic_mask", "incorrect_mask", "correct_mask", "low_res", "jpeg", "val_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be best or last, got {self.keep!r}")
        if not 1 <= self.from_block <= 18:
            raise ValueError(f"from_block must be 1..18, got {self.from_block}")
        if self.views < 1 or self.epochs < 1 or self.batch_size < 2:
            raise ValueError("views, epochs >= 1 and batch_size >= 2")


# ------------------------------------------------------------------------------------ the ONNX graph
def _block_of(node_name: str) -> int | None:
    """MobileNetV2 block index of a node named like /m/features/features.N/..., else None."""
    parts = node_name.split("/")
    for p in parts:
        if p.startswith("features.") and p[len("features.") :].isdigit():
            return int(p[len("features.") :])
    return None


def _initializers(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _float_value(name: str, inits: dict, producers: dict) -> np.ndarray:
    """The float value of a weight tensor: an initializer, or a DequantizeLinear of one (QDQ graphs)."""
    if name in inits:
        return inits[name].astype(np.float32)
    node = producers[name]
    if node.op_type != "DequantizeLinear":
        raise ValueError(f"weight {name} is produced by {node.op_type}, not an initializer")
    q = inits[node.input[0]].astype(np.float32)
    scale = inits[node.input[1]].astype(np.float32)
    zp = inits[node.input[2]].astype(np.float32) if len(node.input) > 2 else np.zeros_like(scale)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp) * scale


def _consumed(name: str, graph) -> str:
    """The tensor the next layer reads for `name`: its DequantizeLinear output in a QDQ graph."""
    by_input: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            by_input.setdefault(i, []).append(n)
    cur = name
    for _ in range(2):  # QuantizeLinear -> DequantizeLinear
        nxt = [n for n in by_input.get(cur, []) if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        if not nxt:
            break
        cur = nxt[0].output[0]
    return cur


@dataclass
class TopSpec:
    """What the base graph says about its top: the cut tensor and the layers after it."""

    cut: str  # tensor the first learning block reads
    cut_channels: int
    layers: list[dict]  # per conv: block, weight, bias, stride, group, clip (ReLU6 after it), residual_end
    heads: dict[str, tuple[np.ndarray, np.ndarray]]  # head -> (W (k, 1280), b (k,))


def read_top(onnx_path: str | Path, from_block: int) -> TopSpec:
    import onnx

    model = onnx.load(str(onnx_path))
    g = model.graph
    inits = _initializers(g)
    producers = {o: n for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv" and (_block_of(n.name) or 0) >= from_block]
    if not convs:
        raise ValueError(f"{onnx_path}: no conv layers from block {from_block} on")
    first_input = convs[0].input[0]
    adds = {_block_of(n.name) for n in g.node if n.op_type == "Add" and _block_of(n.name) is not None}
    layers = []
    for n in convs:
        attrs = {a.name: a for a in n.attribute}
        w = _float_value(n.input[1], inits, producers)
        b = (
            _float_value(n.input[2], inits, producers)
            if len(n.input) > 2
            else np.zeros(w.shape[0], np.float32)
        )
        users = [m for m in g.node if n.output[0] in m.input]
        layers.append(
            {
                "block": _block_of(n.name),
                "weight": w,
                "bias": b,
                "stride": int(attrs["strides"].ints[0]) if "strides" in attrs else 1,
                "group": int(attrs["group"].i) if "group" in attrs else 1,
                # QDQ graphs fold ReLU6 into the conv (its output is named .../Clip_output_0)
                "clip": "Clip" in n.output[0] or any(u.op_type == "Clip" for u in users),
            }
        )
    for i, layer in enumerate(layers):
        nxt = layers[i + 1]["block"] if i + 1 < len(layers) else None
        layer["residual_end"] = layer["block"] in adds and nxt != layer["block"]
    heads = {}
    for n in g.node:
        if n.op_type == "Gemm":
            head = n.name.strip("/").split("/")[-2]  # /m/gender/Gemm -> gender
            w = _float_value(n.input[1], inits, producers)
            b = _float_value(n.input[2], inits, producers)
            trans = next((a.i for a in n.attribute if a.name == "transB"), 0)
            heads[head] = (w if trans else w.T, b)
    return TopSpec(first_input, int(layers[0]["weight"].shape[1] * layers[0]["group"]), layers, heads)


def build_top(spec: TopSpec, mask_labels: tuple[str, ...], dropout: float):
    """torch module: the top of the net (convs with the base's weights, BN folded) and the heads."""
    import torch
    from torch import nn

    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList()
            self.meta = []
            for layer in spec.layers:
                w = torch.from_numpy(np.ascontiguousarray(layer["weight"]))
                k = w.shape[-1]
                c = nn.Conv2d(
                    w.shape[1] * layer["group"], w.shape[0], k, layer["stride"], k // 2, groups=layer["group"]
                )
                with torch.no_grad():
                    c.weight.copy_(w)
                    c.bias.copy_(torch.from_numpy(layer["bias"]))
                self.convs.append(c)
                self.meta.append((layer["block"], layer["clip"], layer["residual_end"]))
            self.heads = tuple(spec.heads)
            self.dropout = nn.Dropout(dropout)
            self.head_layers = nn.ModuleDict()
            for h, (w, b) in spec.heads.items():
                w, b = torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
                if h == "mask":  # base labels (mask, no_mask) -> mask_labels; a new label starts as no_mask
                    rows = [0 if lab == "mask" else 1 for lab in mask_labels]
                    w, b = w[rows].clone(), b[rows].clone()
                    for i, lab in enumerate(mask_labels):
                        if lab == "incorrect":
                            b[i] -= 2.0  # rare at first: learnt from drawn and annotated wrongly worn masks
                lin = nn.Linear(w.shape[1], w.shape[0])
                with torch.no_grad():
                    lin.weight.copy_(w)
                    lin.bias.copy_(b)
                self.head_layers[h] = lin

        def pooled(self, x):
            """Output of the convs, averaged over space: what the heads read (before dropout)."""
            if x.dim() == 2:  # already pooled (heads-only training)
                return x
            block_in, cur_block = x, None
            for conv, (block, clip, residual_end) in zip(self.convs, self.meta, strict=True):
                if block != cur_block:
                    block_in, cur_block = x, block
                x = conv(x)
                if clip:
                    x = torch.clamp(x, 0.0, 6.0)
                if residual_end:
                    x = x + block_in
            return torch.flatten(torch.mean(x, dim=(2, 3), keepdim=True), 1)

        def forward(self, x):
            f = self.dropout(self.pooled(x))
            return {h: self.head_layers[h](f) for h in self.heads}

    return Top()


def extract_trunk(onnx_path: str | Path, cut: str):
    """The base graph from its input up to tensor `cut` (shapes inferred so the cut has a type)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    return onnx.utils.Extractor(model).extract_model(["input"], [cut])


def trunk_session(onnx_path: str | Path, cut: str, threads: int):
    """ONNX Runtime session of the base graph cut at `cut` (the frozen trunk)."""
    import onnxruntime as ort

    trunk = extract_trunk(onnx_path, cut)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(trunk.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def export_joined(base_onnx: str | Path, cut: str, top, out_path: str | Path, channels: int) -> Path:
    """One ONNX graph: the base's frozen trunk (up to `cut`) feeding the trained float top."""
    import tempfile

    import onnx
    import torch
    from onnx import compose

    from maskwatch.train.export import tuple_outputs

    top = top.cpu().eval()
    heads = list(top.heads)
    side = 4
    with tempfile.TemporaryDirectory() as tmp:
        tail_path = Path(tmp) / "top.onnx"
        torch.onnx.export(
            tuple_outputs(top),
            (torch.zeros(1, channels, side, side),),
            str(tail_path),
            input_names=["top_in"],
            output_names=heads,
            dynamic_axes={"top_in": {0: "batch", 2: "h", 3: "w"}, **{h: {0: "batch"} for h in heads}},
            opset_version=17,
            dynamo=False,
        )
        tail = onnx.load(str(tail_path))
    trunk = extract_trunk(base_onnx, cut)
    if trunk.opset_import[0].version != tail.opset_import[0].version:
        tail = onnx.version_converter.convert_version(tail, trunk.opset_import[0].version)
    tail = compose.add_prefix(tail, "top/", rename_inputs=False, rename_outputs=False)
    joined = compose.merge_models(trunk, tail, io_map=[(cut, "top_in")])
    onnx.checker.check_model(joined)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(joined, str(out_path))
    return out_path


# ------------------------------------------------------------------------------------ cached views
@dataclass
class Views:
    """Trunk features of augmented views: `x` (N, C, h, w) float16, labels (N, 2) (-1 unknown) with
    columns (mask, gender), the image index and source set of each view."""

    x: np.ndarray
    labels: np.ndarray
    image: np.ndarray
    source: np.ndarray


def _balance_weights(
    labels: np.ndarray, source: np.ndarray, files: list[str], r: TopRecipe, factors
) -> np.ndarray:
    """Per view: mask sets and gender sets get half the draws each, each source inside them the same share.
    Inside a gender source each (age band, gender) cell (or each gender) weighs the same; inside a mask
    source masked and unmasked faces (by the image's folder) weigh the same, so masks drawn on the views
    (`incorrect` below the nose, or `mask`) come at the rate they are drawn, and real `incorrect` faces
    (unmasked for this purpose) at the rate `oversample` gives them. `factors`: per-view oversampling."""
    from maskwatch.train.data import canonical_label

    n = len(labels)
    w = np.zeros(n)
    is_gender = labels[:, 1] >= 0
    for task_rows, col in ((~is_gender, 0), (is_gender, 1)):
        if not task_rows.any():
            continue
        srcs = np.unique(source[task_rows])
        for s in srcs:
            rows = task_rows & (source == s)
            if col == 1 and r.balance_age:
                metas = [utkface_meta(files[i]) for i in np.flatnonzero(rows)]
                if all(m is not None for m in metas):
                    band = np.digitize([m["age"] for m in metas], AGE_BAND_EDGES[1:-1])
                    cell = band * 2 + labels[rows, 1]
                else:
                    cell = labels[rows, 1]
            else:
                cell = np.array(
                    [canonical_label(Path(files[i]).parent.name) == "mask" for i in np.flatnonzero(rows)]
                )
            idx = np.flatnonzero(rows)
            cells = np.unique(cell)
            for c in cells:
                sel = idx[cell == c]
                w[sel] = factors[sel] / factors[sel].sum() / len(cells) / len(srcs)
        w[task_rows] /= w[task_rows].sum() * 2 if is_gender.any() and (~is_gender).any() else 1
    return w / w.sum()


def _views_key(s: ImageSet, r: TopRecipe, base_sha: str, cut: str, train: bool) -> str:
    aug = {
        k: getattr(r, k)
        for k in ("views", "synthetic_mask", "incorrect_mask", "correct_mask", "low_res", "jpeg", "seed")
    }
    h = hashlib.sha256(
        json.dumps([s.root, s.files, s.labels, list(r.mask_labels), aug, base_sha, cut, train]).encode()
    )
    return h.hexdigest()[:20]


def make_views(
    sets: list[ImageSet], session, cut: str, r: TopRecipe, train: bool, base_sha: str, cache: Path | None
) -> Views:
    """Trunk features of every set's views; each set's are cached in `cache` (keyed by its files,
    the augmentation settings, the base graph and the cut), so later runs skip the trunk."""
    parts = []
    for si, s in enumerate(sets):
        path = None if cache is None else cache / f"views-{_views_key(s, r, base_sha, cut, train)}.npz"
        if path is not None and path.is_file():
            z = np.load(path)
            x, labels, image = z["x"], z["labels"], z["image"]
        else:
            t0 = time.time()
            x, labels, image = _set_views(s, session, cut, r, train)
            log.warning("views of %s: %d (%.0f s)", s.root, len(x), time.time() - t0)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, x=x, labels=labels, image=image)
        parts.append(Views(x, labels, image, np.full(len(x), si)))
    return Views(
        *(np.concatenate([getattr(p, k) for p in parts]) for k in ("x", "labels", "image", "source"))
    )


def _set_views(
    s: ImageSet, session, cut: str, r: TopRecipe, train: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment one set (train: `views` versions of each image; else one plain view), run the trunk.
    Returns the trunk features, labels and image index of each view (see `Views`)."""
    import zlib

    import torch

    from maskwatch.train.loop import TrainConfig, gpu_augment, jpeg_noise, landmarks_or_default
    from maskwatch.train.nets import IMAGENET_MEAN, IMAGENET_STD
    from maskwatch.train.synth import draw_mask, occlude

    rng = np.random.default_rng([r.seed, zlib.crc32(Path(s.root).name.encode())])
    mask_idx = {lab: i for i, lab in enumerate(r.mask_labels)}
    cfg = TrainConfig(low_res_p=r.low_res, augment=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    feats, labs, imgs = [], [], []
    task = s.task
    for v in range(r.views if train else 1):
        for start in range(0, len(s), 256):
            idx = np.arange(start, min(start + 256, len(s)))
            batch = s.images[idx].copy()
            lab = np.full((len(idx), 2), -1, np.int64)
            if task == "gender":
                lab[:, 1] = [TASK_LABELS["gender"].index(s.labels[i]) for i in idx]
                lab[:, 0] = mask_idx["no_mask"]
            else:  # a two-label recipe reads incorrect as no_mask (how older models learnt it)
                lab[:, 0] = [mask_idx.get(s.labels[i], mask_idx["no_mask"]) for i in idx]
            if train and v > 0:
                side = batch.shape[1]
                for j, i in enumerate(idx):
                    lm = landmarks_or_default(s.landmarks[i], rng)
                    unmasked = lab[j, 0] == mask_idx["no_mask"]
                    u = rng.random()
                    p_correct = r.synthetic_mask if task == "gender" else r.correct_mask
                    if unmasked and "incorrect" in mask_idx and u < r.incorrect_mask:
                        worn = str(rng.choice(["below_nose", "chin"]))
                        batch[j] = draw_mask(batch[j], lm * side, rng, worn=worn)
                        lab[j, 0] = mask_idx["incorrect"]
                    elif unmasked and u < r.incorrect_mask + p_correct:
                        batch[j] = draw_mask(batch[j], lm * side, rng, worn="correct")
                        lab[j, 0] = mask_idx["mask"]
                    elif unmasked and task == "mask" and u < r.incorrect_mask + p_correct + 0.1:
                        batch[j] = occlude(batch[j], batch[(j + 1) % len(batch)], rng)  # stays no_mask
                    if rng.random() < r.jpeg:
                        batch[j] = jpeg_noise(batch[j], rng)
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
            if train and v > 0:
                x = gpu_augment(x, cfg, batch.shape[1], True, gen)
            elif train:  # the plain crop, mirrored half of the time
                flip = torch.rand(len(x), generator=gen) < 0.5
                x[flip] = torch.flip(x[flip], dims=[3])
            x = ((x - mean) / std).numpy().astype(np.float32)
            feats.append(session.run([cut], {"input": x})[0].astype(np.float16))
            labs.append(lab)
            imgs.append(idx)
    return np.concatenate(feats), np.concatenate(labs), np.concatenate(imgs)


# ----------------------------------------------------------------------------------------- training
def _excluded(path: str, patterns: list[str]) -> bool:
    p = Path(path)
    key = f"{p.parent.parent.name}/{p.parent.name}/{p.name}"
    return any(fnmatch.fnmatch(key, pat) for pat in patterns)


def _filter(s: ImageSet, patterns: list[str]) -> ImageSet:
    if not patterns:
        return s
    keep = np.array([i for i, f in enumerate(s.files) if not _excluded(f, patterns)], np.int64)
    return s.subset(keep)


def load_sets(r: TopRecipe, size: int) -> tuple[list[ImageSet], list[ImageSet]]:
    """(train sets, validation sets): each --data set minus `exclude`; split 80/20 (stratified, seed)
    unless a validation folder of its task is given, the way `maskwatch train` splits."""
    exclude = list(r.exclude)
    if r.exclude_fold:
        from maskwatch.train.data import parse_fold, scene_images

        photos = scene_images(r.fold_scenes, parse_fold(r.exclude_fold))
        exclude += [f"{r.fold_crops}/*/{p.stem}_*" for p, _ in photos]
    vals = [_filter(load_folder(v, size), exclude) for v in r.val]
    val_tasks = {v.task for v in vals}
    train_sets, val_sets = [], []
    for d in r.data:
        s = _filter(load_folder(d, size), exclude)
        if s.task in val_tasks or r.val_fraction == 0:
            train_sets.append(s)
            continue
        ti, vi = stratified_split(s.labels, r.val_fraction, r.seed)
        train_sets.append(s.subset(ti))
        val_sets.append(s.subset(vi))
    return train_sets, val_sets + vals


def _balanced_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean recall over the classes present in `truth`."""
    return round(float(np.mean([(pred[truth == c] == c).mean() for c in np.unique(truth)])), 4)


def _per_set(views: Views, probs: dict, names: list[str]) -> dict:
    out = {}
    for si, name in enumerate(names):
        rows = views.source == si
        col, h = (1, "gender") if (views.labels[rows, 1] >= 0).any() else (0, "mask")
        y = views.labels[rows, col]
        pred = probs[h][rows].argmax(1)
        out[f"{name}:{h}"] = _balanced_accuracy(pred, y)
    return out


def _evaluate(top, views: Views) -> dict:
    import torch

    top.eval()
    out: dict = {}
    with torch.no_grad():
        logits = {h: [] for h in top.heads}
        for i in range(0, len(views.x), 1024):
            o = top(torch.from_numpy(views.x[i : i + 1024].astype(np.float32)))
            for h in top.heads:
                logits[h].append(torch.softmax(o[h], 1).numpy())
    probs = {h: np.concatenate(v) for h, v in logits.items()}
    for col, h in ((0, "mask"), (1, "gender")):
        if h not in probs:
            continue
        y = views.labels[:, col]
        # the mask head on gender faces: only the mask sets count for its figures
        known = (y >= 0) & ((views.labels[:, 1] < 0) if h == "mask" else True)
        if not known.any():
            continue
        p, yk = probs[h][known], y[known]
        pred = p.argmax(1)
        out[h] = {
            "n": int(known.sum()),
            "accuracy": round(float((pred == yk).mean()), 4),
            "balanced_accuracy": _balanced_accuracy(pred, yk),
            "loss": round(float(-np.log(np.clip(p[np.arange(len(yk)), yk], 1e-7, 1)).mean()), 4),
        }
    return {"metrics": out, "probs": probs}


def run_top(r: TopRecipe) -> dict:
    """Train the top, export the joined ONNX and its card into `r.out`. Returns the card."""
    import torch
    import torch.nn.functional as F

    from maskwatch.train import export
    from maskwatch.train.evaluate import fairness_report

    torch.set_num_threads(r.threads)
    torch.manual_seed(r.seed)
    rng = np.random.default_rng(r.seed)
    out = Path(r.out)
    out.mkdir(parents=True, exist_ok=True)
    base_card_path = Path(r.base)
    base_card = json.loads(base_card_path.read_text())
    base_onnx = base_card_path.parent / base_card.get("onnx", base_card_path.stem + ".onnx")
    size = int(base_card["input"]["size"][0])
    spec = read_top(base_onnx, r.from_block)
    session = trunk_session(base_onnx, spec.cut, r.threads)

    train_sets, val_sets = load_sets(r, size)
    factors = {str(Path(k).resolve()): float(v) for k, v in r.oversample.items()}
    t0 = time.time()
    base_sha = hashlib.sha256(base_onnx.read_bytes()).hexdigest()
    cache = Path(r.cache) if r.cache else None
    tv = make_views(train_sets, session, spec.cut, r, True, base_sha, cache)
    vv = make_views(val_sets, session, spec.cut, r, False, base_sha, cache)
    t_views = time.time() - t0
    files_tr = [train_sets[s].files[i] for s, i in zip(tv.source, tv.image, strict=True)]
    fac = np.array(
        [
            factors.get(
                str(Path(f).parent.resolve()), factors.get(str(Path(train_sets[s].root).resolve()), 1.0)
            )
            for f, s in zip(files_tr, tv.source, strict=True)
        ]
    )
    weights = _balance_weights(tv.labels, tv.source, files_tr, r, fac)
    log.warning("train views %d, val views %d (%.0f s)", len(tv.x), len(vv.x), t_views)
    val_names = [Path(v.root).name for v in val_sets]

    top = build_top(spec, r.mask_labels, r.dropout)
    if r.heads_only:  # features through the frozen convs once; only the heads train on them
        for p in top.convs.parameters():
            p.requires_grad_(False)
        tv.x, vv.x = _pool(top, tv.x), _pool(top, vv.x)
    opt = torch.optim.AdamW(
        [p for p in top.parameters() if p.requires_grad], lr=r.lr, weight_decay=r.weight_decay
    )
    total = r.epochs * r.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / 50) * (0.5 * (1 + math.cos(math.pi * min(s, total) / total)) * 0.98 + 0.02)
        ),
    )
    history = {"recipe": _jsonable(asdict(r)), "epochs": [], "views_seconds": round(t_views, 1)}
    history["epochs"].append({"epoch": 0, "val": _evaluate(top, vv)["metrics"]})
    log.warning("epoch 0 (base weights): %s", history["epochs"][0]["val"])
    best_score, best_epoch, bad = -1.0, 0, 0
    best_path = out / "top_best.pt"
    torch.save(top.state_dict(), best_path)
    for epoch in range(1, r.epochs + 1):
        t1 = time.time()
        top.train()
        idx_all = rng.choice(len(tv.x), size=r.steps_per_epoch * r.batch_size, replace=True, p=weights)
        sums = []
        for step in range(r.steps_per_epoch):
            idx = np.sort(idx_all[step * r.batch_size : (step + 1) * r.batch_size])
            x = torch.from_numpy(tv.x[idx].astype(np.float32))
            y = torch.from_numpy(tv.labels[idx])
            o = top(x)
            loss = 0.0
            for col, h in ((0, "mask"), (1, "gender")):
                if h not in o:
                    continue
                known = y[:, col] >= 0
                if known.any():
                    loss = loss + F.cross_entropy(
                        o[h][known], y[known, col], label_smoothing=r.label_smoothing
                    )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums.append(float(loss.detach()))
        ev = _evaluate(top, vv)
        val = ev["metrics"]
        val["by_set_balanced_accuracy"] = _per_set(vv, ev["probs"], val_names)
        score = float(np.mean([val[h]["balanced_accuracy"] for h in ("mask", "gender") if h in val]))
        rec = {
            "epoch": epoch,
            "seconds": round(time.time() - t1, 1),
            "train_loss": round(float(np.mean(sums)), 4),
            "val": val,
        }
        history["epochs"].append(rec)
        log.warning(
            "epoch %d/%d (%.0fs) loss %.4f val %s", epoch, r.epochs, rec["seconds"], rec["train_loss"], val
        )
        if score > best_score:
            best_score, best_epoch, bad = score, epoch, 0
            torch.save(top.state_dict(), best_path)
        else:
            bad += 1
            if bad >= r.patience and r.keep == "best":
                history["early_stopped_at"] = epoch
                break
        (out / "history.json").write_text(json.dumps(history, indent=1))
    if r.keep == "best":
        top.load_state_dict(torch.load(best_path, weights_only=True))
    history["best_epoch"] = best_epoch
    history["kept"] = r.keep
    (out / "history.json").write_text(json.dumps(history, indent=1))

    # validation figures and the in-domain fairness table of the kept weights
    ev = _evaluate(top, vv)
    ev["metrics"]["by_set_balanced_accuracy"] = _per_set(vv, ev["probs"], val_names)
    metrics: dict = {"validation": ev["metrics"], "best_epoch": best_epoch, "kept": r.keep}
    fairness = {}
    g = vv.labels[:, 1] >= 0
    if g.any():
        files_val = [val_sets[s].files[i] for s, i in zip(vv.source, vv.image, strict=True)]
        fr = fairness_report(
            [files_val[i] for i in np.flatnonzero(g)], vv.labels[g, 1], ev["probs"]["gender"][g]
        )
        if fr:
            fairness = {"gender": {"set": "UTKFace validation splits (utkface + utkface_extra)", **fr}}
    onnx_name = "attributes.onnx"
    export_joined(base_onnx, spec.cut, top, out / onnx_name, spec.cut_channels)

    card = {
        k: v
        for k, v in base_card.items()
        if k not in ("metrics", "fairness", "training", "data", "quantization")
    }
    card["name"] = r.name
    card["onnx"] = onnx_name
    card["outputs"] = json.loads(json.dumps(base_card["outputs"]))
    card["outputs"]["mask"]["labels"] = list(r.mask_labels)
    card["data"] = {
        "train": [
            {"path": s.root, "task": s.task, "n": len(s), "counts": _counts(s.labels)} for s in train_sets
        ],
        "validation": [{"path": s.root, "task": s.task, "n": len(s)} for s in val_sets],
        "excluded": r.exclude,
    }
    card["metrics"] = metrics
    card["fairness"] = fairness
    card["training"] = {
        "kind": "top",
        "recipe": _jsonable(asdict(r)),
        "base": {
            "card": str(base_card_path),
            "name": base_card.get("name"),
            "training": base_card.get("training"),
        },
        "frozen": f"MobileNetV2 blocks 0-{r.from_block - 1}: int8 as in the base model (its quantization)",
        "date": time.strftime("%Y-%m-%d"),
        "commit": export.git_commit(),
    }
    if "quantization" in base_card:
        card["quantization"] = {
            **base_card["quantization"],
            "scope": f"trunk only (blocks 0-{r.from_block - 1}); top float",
        }
    export.write_card(card, out / "attributes.json")
    return card


def _pool(top, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate(
            [
                top.pooled(torch.from_numpy(x[i : i + 1024].astype(np.float32))).numpy()
                for i in range(0, len(x), 1024)
            ]
        )


def _counts(labels: list[str]) -> dict[str, int]:
    return {lab: labels.count(lab) for lab in sorted(set(labels))}


def _jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


from maskwatch.train.recipe import register_kind  # noqa: E402  (recipe imports this module lazily)

register_kind("top", TopRecipe, run_top)
