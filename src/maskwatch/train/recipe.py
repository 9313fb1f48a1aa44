"""Training recipes: one TOML (or JSON) file per training stage, validated once, recorded whole in the card.

A recipe is a flat table of one stage's keys; a key left out takes its default:

    kind = "train"                  # optional (default "train"): picks the schema and the runner
    task = "attributes"
    data = ["runs/crops/fm12k_train", "${scenes}"]
    out = "runs/models/scene"
    lr = 1.5e-4

    [vars]                          # optional: strings that other values name as ${name}
    scenes = "runs/crops/scenes"

    [oversample]
    "${scenes}" = 5

- The keys are the fields of the kind's schema, a dataclass (kind "train": `TrainRecipe`, one
  `maskwatch train` run). Its field defaults are the only place the defaults of such a stage are written.
  `kind` and `vars` are reserved; `${name}` is replaced in every string, list item and table key.
- Paths are relative to the current directory (the repository root when `make` runs a recipe).
- Overrides, `load(path, sets)` / `maskwatch train --recipe FILE --set KEY=VALUE` (repeatable, applied in
  order after the file and the command's options): VALUE is read as a TOML value (`3`, `2e-4`, `true`,
  `["a", "b"]`, `{ "runs/x" = 5 }`, `"text"`), else taken as text; text for a list key is split at
  commas (`--set data=a,b`); a string key takes VALUE as it is; `none` clears an optional key;
  `--set vars.NAME=VALUE` changes a variable the recipe defines.
- Unknown keys, wrong types and bad values raise `RecipeError` naming the file and the key.
- `run(recipe)` writes the effective recipe to OUT/recipe.json (itself a recipe that reruns the stage),
  runs the kind's runner and adds to the card's `training`: `kind`, `recipe` (the effective recipe,
  whole), `recipe_file`, `recipe_sha256` and `recipe_overrides`.

A new kind of stage:

    register_kind(name: str, schema: type, runner: Callable[..., dict]) -> None

`schema` is a dataclass: fields with type annotations (str, int, float, bool, `X | None`, `list[X]`,
`tuple[X, ...]`, `dict[str, X]`), an `out` field (the output folder), and a `__post_init__` raising
ValueError (message starting with the key) for bad values. `runner(values)` (values: a schema instance)
trains, writes the model card as OUT/<stem of card["onnx"]>.json and returns the card. A kind K whose
`register_kind` call sits at the end of module `maskwatch.train.K` is found by importing that module the
first time a recipe names it (kind "top": `register_kind("top", TopRecipe, run_top)` in train/top.py).

Example:
    >>> r = load(None, ["task=mask", "data=runs/a,runs/b", "out=runs/m", "epochs=3"])
    >>> r.kind, r.values.data, r.values.epochs, r.values.low_res
    ('train', ['runs/a', 'runs/b'], 3, 0.35)
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import importlib.util
import json
import re
import tomllib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskwatch.train.data import TASK_LABELS

RECIPES_DIR = Path(__file__).parent / "recipes"  # the shipped stages: base, finetune, scene, ...
ARCHS = ("mnv2-attr", "seed-gender-cnn", "seed-mask-cnn", "seed-mobilenetv2")  # see nets.py
TASKS = ("mask", "gender", "attributes")  # attributes: both heads (mask + gender) of one net
RESERVED = ("kind", "vars")


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the file (or option) and the key."""


@dataclass(frozen=True)
class Kind:
    schema: type
    runner: Callable[..., dict]


KINDS: dict[str, Kind] = {}


def register_kind(name: str, schema: type, runner: Callable[..., dict]) -> None:
    """Make recipes of `kind = name` build `schema` (a dataclass) and run with `runner(values) -> card`."""
    if not dataclasses.is_dataclass(schema) or "out" not in {f.name for f in dataclasses.fields(schema)}:
        raise TypeError(f"kind {name!r}: the schema must be a dataclass with an `out` field")
    KINDS[name] = Kind(schema, runner)


def get_kind(name: str) -> Kind:
    if name not in KINDS and name.isidentifier() and importlib.util.find_spec(f"maskwatch.train.{name}"):
        importlib.import_module(f"maskwatch.train.{name}")  # a kind registered by its own module
    if name not in KINDS:
        raise RecipeError(f"unknown kind {name!r} (known: {', '.join(sorted(KINDS))})")
    return KINDS[name]


# ------------------------------------------------------------------------------------ kind "train"
def _check(ok: bool, key: str, must: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{key} must {must}, got {value!r}")


@dataclass
class TrainRecipe:
    """Kind "train": one `maskwatch train` run. Every default of a training run is written here, once."""

    task: str  # mask, gender, or attributes (both heads of one net)
    data: list[str]  # class-folder sets; for attributes mask and gender sets together
    out: str  # output folder: ONNX, card, recipe.json, plots, history, best.pt, checkpoint.pt
    val: list[str] = field(default_factory=list)  # validation sets; else each set splits 80/20 (seed)
    arch: str = "mnv2-attr"
    size: int | None = None  # input side; None: the arch's (nets.DEFAULT_SIZE)
    # the mask head's outputs; without `incorrect`, incorrect samples and masks drawn worn wrongly are no_mask
    mask_labels: tuple[str, ...] = TASK_LABELS["mask"]
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3  # peak of AdamW's warm-up + cosine schedule
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    patience: int = 5  # early stopping: epochs without a better validation score
    max_steps: int | None = None  # at most this many batches per epoch
    time_budget: float | None = None  # seconds: start no epoch that would end later
    keep: str = "best"  # weights exported: the best epoch on validation, or the last
    init: str | None = None  # start from these weights (a state dict, e.g. OUT/best.pt of a stage before)
    train_only: str | None = None  # mnv2-attr: only this head learns; features and the other head stay
    pretrained: bool = True  # ImageNet MobileNetV2 features (before `init`)
    # probability of drawing a mask on a gender set's face (then `mask`); None: 0.4 for mnv2-attr with a
    # gender head, else 0
    synthetic_mask: float | None = None
    mask_from_gender: bool = True  # attributes: gender sets also teach the mask head (their faces: no_mask)
    occlusion: float = 0.0  # probability of hiding part of an unmasked face of a mask set (stays no_mask)
    # probability of a mask drawn below the nose or on the chin of an unmasked face of a mask set
    # (`incorrect`, or no_mask without that label); as many get a properly worn one (`mask`)
    incorrect_mask: float = 0.0
    low_res: float = 0.35  # probability of a down-and-up scaling to 12-48 px (small faces in scenes)
    jpeg: float = 0.25  # probability of a JPEG re-encoding
    # folder (a data set, or a class folder inside one, whose factor then replaces its set's) -> its
    # samples are drawn this many times as often as the others of their class
    oversample: dict[str, float] = field(default_factory=dict)
    limit_per_class: int | None = None  # at most N images per class and set
    quantize: bool = False  # ship int8 ONNX (static QDQ); the float graph stays as NAME-fp32.onnx
    quantize_samples: int = 400  # training crops that calibrate the quantization
    seed: int = 0
    name: str | None = None  # model name in the card; None: maskwatch-ARCH-SIZE
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    threads: int | None = None  # torch CPU threads; None: torch's choice
    workers: int = 8  # threads for image loading and CPU augmentation

    @property
    def heads(self) -> tuple[str, ...]:
        return ("mask", "gender") if self.task == "attributes" else (self.task,)

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        """Head -> its labels, in output order."""
        return {h: tuple(self.mask_labels) if h == "mask" else TASK_LABELS[h] for h in self.heads}

    def __post_init__(self) -> None:
        self.mask_labels = tuple(self.mask_labels)
        if self.synthetic_mask is None:
            self.synthetic_mask = 0.4 if "gender" in self.heads and self.arch == "mnv2-attr" else 0.0
        _check(self.task in TASKS, "task", f"be one of {TASKS}", self.task)
        _check(self.arch in ARCHS, "arch", f"be one of {ARCHS}", self.arch)
        _check(bool(self.data), "data", "name at least one folder", self.data)
        _check(bool(self.out), "out", "name a folder", self.out)
        ok = {"mask", "no_mask"} <= set(self.mask_labels) <= set(TASK_LABELS["mask"])
        ok = ok and len(set(self.mask_labels)) == len(self.mask_labels)
        _check(ok, "mask_labels", "hold mask, no_mask and maybe incorrect, once each", self.mask_labels)
        for key in ("synthetic_mask", "occlusion", "incorrect_mask", "low_res", "jpeg", "label_smoothing"):
            _check(0.0 <= getattr(self, key) <= 1.0, key, "be in [0, 1]", getattr(self, key))
        for key in ("epochs", "patience", "workers", "quantize_samples"):
            _check(getattr(self, key) >= 1, key, "be >= 1", getattr(self, key))
        for key in ("size", "max_steps", "limit_per_class", "threads", "time_budget"):
            _check(getattr(self, key) is None or getattr(self, key) > 0, key, "be > 0", getattr(self, key))
        _check(self.batch_size >= 2, "batch_size", "be >= 2", self.batch_size)
        _check(self.lr > 0, "lr", "be > 0", self.lr)
        _check(self.weight_decay >= 0, "weight_decay", "be >= 0", self.weight_decay)
        _check(self.keep in ("best", "last"), "keep", "be best or last", self.keep)
        devices = "be auto, cpu, cuda or cuda:N"
        _check(
            self.device in ("auto", "cpu") or self.device.startswith("cuda"), "device", devices, self.device
        )
        _check(
            self.train_only is None or (self.arch == "mnv2-attr" and self.train_only in self.heads),
            "train_only",
            f"name a head of the two-head mnv2-attr net ({self.heads})",
            self.train_only,
        )
        roots = {Path(d).resolve() for d in self.data}
        for d, factor in self.oversample.items():
            _check(factor > 0, f"oversample.{d}", "be > 0", factor)
            inside = Path(d).resolve() in roots or Path(d).resolve().parent in roots
            _check(inside, "oversample", "name data folders or class folders directly inside one", d)


def _run_train(values: TrainRecipe, **run_options) -> dict:
    from maskwatch.train.cli import run_training

    return run_training(values, **run_options)


register_kind("train", TrainRecipe, _run_train)


# ------------------------------------------------------------------------------------ loading
@dataclass
class Recipe:
    """A validated recipe: its kind, the schema instance (`values`), where it came from."""

    kind: str
    values: Any
    file: str | None = None
    sha256: str | None = None
    overrides: dict = field(default_factory=dict)  # key -> value given by options and --set

    def to_dict(self) -> dict:
        return {"kind": self.kind, **_jsonable(dataclasses.asdict(self.values))}

    def provenance(self) -> dict:
        return {
            "kind": self.kind,
            "recipe": self.to_dict(),
            "recipe_file": self.file,
            "recipe_sha256": self.sha256,
            "recipe_overrides": _jsonable(self.overrides),
        }


def resolve_path(path: str | Path) -> Path:
    """A recipe file, or the name of a shipped one (`base` -> recipes/base.toml)."""
    p = Path(path)
    if not p.is_file() and (RECIPES_DIR / f"{path}.toml").is_file():
        return RECIPES_DIR / f"{path}.toml"
    if not p.is_file():
        raise RecipeError(f"{path}: no such recipe file (shipped: {', '.join(shipped())})")
    return p


def shipped() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def load(path: str | Path | None = None, sets: Sequence[str] = (), *, options: dict | None = None) -> Recipe:
    """The recipe of file `path` (None: no file, only defaults), then `options` (key -> value, e.g. a
    command's options), then `sets` ("KEY=VALUE", see the module doc): checked, validated."""
    table: dict = {}
    file = sha = None
    source = "command line"
    if path is not None:
        p = resolve_path(path)
        raw = p.read_bytes()
        file = str(path) if Path(path).is_file() else f"maskwatch/train/recipes/{p.name}"
        sha, source = hashlib.sha256(raw).hexdigest(), str(path)
        try:
            table = json.loads(raw) if p.suffix == ".json" else tomllib.loads(raw.decode())
        except (ValueError, UnicodeDecodeError) as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
            raise RecipeError(f"{source}: {e}") from None
    name = table.pop("kind", "train")
    if not isinstance(name, str):
        raise RecipeError(f"{source}: kind: expected a string, got {name!r}")
    try:
        kind = get_kind(name)
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None
    variables = table.pop("vars", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise RecipeError(f"{source}: vars: expected a table of strings, got {variables!r}")
    overrides = dict(options or {})
    _check_keys(overrides, kind.schema, "options")
    table.update(overrides)
    for spec in sets:
        key, value = parse_set(spec, kind.schema)
        if key.startswith("vars."):
            if key[5:] not in variables:
                raise RecipeError(f"--set {spec!r}: {source} defines no variable {key[5:]!r} ({variables})")
            variables[key[5:]] = value
        else:
            table[key] = value
        overrides[key] = value
    table = _substitute(table, variables, source)
    return Recipe(name, build(kind.schema, table, source), file, sha, overrides)


def build(schema: type, table: dict, source: str = "recipe") -> Any:
    """A schema instance from a table of keys: unknown, missing, mistyped and bad values raise."""
    _check_keys(table, schema, source)
    hints = typing.get_type_hints(schema)
    required = [
        f.name
        for f in dataclasses.fields(schema)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in table]
    if missing:
        raise RecipeError(f"{source}: missing key(s) {', '.join(missing)}")
    values = {k: _coerce(v, hints[k], f"{source}: {k}") for k, v in table.items()}
    try:
        return schema(**values)
    except ValueError as e:
        raise RecipeError(f"{source}: {e}") from None


def parse_set(spec: str, schema: type) -> tuple[str, Any]:
    """("KEY", value) of a "KEY=VALUE" override, read as the key's type allows (see the module doc)."""
    key, sep, text = spec.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"--set {spec!r}: expected KEY=VALUE")
    if key.startswith("vars."):
        return key, text
    _check_keys({key: None}, schema, "--set")
    tp = typing.get_type_hints(schema)[key]
    args = typing.get_args(tp) if _is_union(tp) else ()
    inner = next((a for a in args if a is not type(None)), tp)
    if type(None) in args and text.strip().lower() == "none":
        return key, None
    if inner is str:
        return key, text
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    if isinstance(value, str) and typing.get_origin(inner) in (list, tuple):
        value = [s.strip() for s in value.split(",") if s.strip()]
    return key, value


def run(recipe: Recipe, **run_options) -> dict:
    """Run a recipe (OUT/recipe.json first, then the kind's runner); the card gets the recipe. Returns it."""
    from maskwatch.train.export import write_card

    out = Path(recipe.values.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=1) + "\n")
    card = get_kind(recipe.kind).runner(recipe.values, **run_options)
    card["training"] = {**card.get("training", {}), **recipe.provenance()}
    write_card(card, out / (Path(card["onnx"]).stem + ".json"))
    return card


# ------------------------------------------------------------------------------------ helpers
def _check_keys(table: dict, schema: type, source: str) -> None:
    names = [f.name for f in dataclasses.fields(schema) if f.init]
    for key in table:
        if key not in names:
            close = difflib.get_close_matches(key, names, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            reserved = " (reserved: only at the top of a file)" if key in RESERVED else ""
            raise RecipeError(f"{source}: unknown key {key!r}{hint}{reserved}")


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (types.UnionType, typing.Union)


def _type_name(tp) -> str:
    return tp.__name__ if typing.get_origin(tp) is None and hasattr(tp, "__name__") else str(tp)


def _coerce(v: Any, tp, where: str) -> Any:
    """`v` as type `tp` (ints pass for floats; lists for tuples), else RecipeError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        if v is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _coerce(v, a, where)
                except RecipeError:
                    pass
    elif tp is float and isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    elif tp in (str, int, bool) and type(v) is tp:
        return v
    elif origin in (list, tuple) and isinstance(v, list | tuple):
        items = [_coerce(x, args[0], f"{where}[{i}]") for i, x in enumerate(v)]
        return items if origin is list else tuple(items)
    elif origin is dict and isinstance(v, dict):
        return {_coerce(k, args[0], where): _coerce(x, args[1], f"{where}.{k}") for k, x in v.items()}
    raise RecipeError(f"{where}: expected {_type_name(tp)}, got {v!r}")


_VAR = re.compile(r"\$\{([^}]*)\}")


def _substitute(v: Any, variables: dict[str, str], source: str) -> Any:
    """`v` with every ${name} in its strings (list items and table keys too) replaced."""
    if isinstance(v, str):

        def one(m: re.Match) -> str:
            if m[1] not in variables:
                raise RecipeError(f"{source}: ${{{m[1]}}} names no variable of [vars] ({variables})")
            return variables[m[1]]

        return _VAR.sub(one, v)
    if isinstance(v, list | tuple):
        return [_substitute(x, variables, source) for x in v]
    if isinstance(v, dict):
        return {_substitute(k, variables, source): _substitute(x, variables, source) for k, x in v.items()}
    return v


def _jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
