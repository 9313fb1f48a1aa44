"""Training recipes (train/recipe.py): validation, --set overrides, the shipped stages, the card's record."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from maskwatch.train import recipe as R
from maskwatch.train.recipe import RecipeError


def _file(tmp_path, text, name="r.toml"):
    p = tmp_path / name
    p.write_text('task = "mask"\ndata = ["runs/a"]\nout = "runs/o"\n' + text)
    return p


def test_shipped_recipes_are_the_makefile_stages():
    def stage(name, **kw):
        return {k: R.load(name).to_dict()[k] for k in kw}, kw

    common = dict(
        task="attributes", arch="mnv2-attr", val=["runs/crops/fm12k_val"], mask_labels=["mask", "no_mask"]
    )
    data = ["runs/crops/fm12k_train", "runs/crops/chandrika", "runs/crops/utkface"]
    got, want = stage(
        "base",
        **common,
        data=data,
        epochs=30,
        batch_size=256,
        patience=5,
        out="runs/models/base",
        synthetic_mask=0.4,
        mask_from_gender=True,
        low_res=0.35,
        occlusion=0.0,
        quantize=False,
    )
    assert got == want
    tuned = dict(
        max_steps=200,
        batch_size=64,
        patience=6,
        mask_from_gender=False,
        occlusion=0.25,
        incorrect_mask=0.2,
        low_res=0.5,
    )
    got, want = stage(
        "finetune",
        **common,
        **tuned,
        data=data,
        init="runs/models/base/best.pt",
        epochs=6,
        lr=2e-4,
        out="runs/models/finetune",
        quantize=False,
    )
    assert got == want
    scenes = "runs/crops/scenes"
    oversample = {scenes: 5.0, f"{scenes}/mask_weared_incorrect": 30.0}
    got, want = stage(
        "scene",
        **common,
        **tuned,
        data=[*data, scenes],
        oversample=oversample,
        init="runs/models/finetune/best.pt",
        epochs=5,
        lr=1.5e-4,
        quantize=True,
        out="runs/models/attributes",
    )
    assert got == want
    # cross-validation: one variable moves the scene folder everywhere it is named
    fold = R.load(R.RECIPES_DIR / "scene.toml", ["vars.scenes=runs/crops/scenes_not0", "out=runs/models/cv0"])
    assert fold.values.data[-1] == "runs/crops/scenes_not0" and fold.values.out == "runs/models/cv0"
    assert fold.values.oversample == {
        "runs/crops/scenes_not0": 5.0,
        "runs/crops/scenes_not0/mask_weared_incorrect": 30.0,
    }
    assert fold.overrides == {"vars.scenes": "runs/crops/scenes_not0", "out": "runs/models/cv0"}


def test_defaults_live_in_the_schema_once():
    r = R.load(None, options={"task": "gender", "data": ["d"], "out": "o"})
    defaults = {f.name: f.default for f in dataclasses.fields(R.TrainRecipe)}
    assert r.values.low_res == defaults["low_res"] == 0.35 and r.values.lr == 1e-3
    assert r.values.synthetic_mask == 0.4  # None: 0.4 for mnv2-attr with a gender head, else 0
    assert R.load(None, options={"task": "mask", "data": ["d"], "out": "o"}).values.synthetic_mask == 0.0
    assert r.values.mask_labels == ("mask", "no_mask", "incorrect")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epoch = 3\n", "unknown key 'epoch' (did you mean 'epochs'?)"),
        ('epochs = "3"\n', "epochs: expected int, got '3'"),
        ("lr = true\n", "lr: expected float, got True"),
        ('val = ["a", 3]\n', "val[1]: expected str"),
        ("low_res = 1.5\n", "low_res must be in [0, 1], got 1.5"),
        ("incorrect_mask = -0.1\n", "incorrect_mask must be in [0, 1]"),
        ('keep = "worst"\n', "keep must be best or last"),
        ('mask_labels = ["mask", "incorrect"]\n', "mask_labels must hold mask, no_mask"),
        ('arch = "resnet"\n', "arch must be one of"),
        ('kind = "nope"\n', "unknown kind 'nope'"),
        ('[oversample]\n"runs/b" = 2\n', "oversample must name data folders"),
        ('data = "x"\n', None),  # TOML: a key given twice
        ('out2 = "x"\n', "unknown key 'out2'"),
    ],
)
def test_bad_recipes_name_the_file_and_the_key(tmp_path, text, message):
    p = _file(tmp_path, text)
    with pytest.raises(RecipeError) as e:
        R.load(p)
    assert str(e.value).startswith(str(p)) and (message is None or message in str(e.value))


def test_missing_key_and_unknown_variable(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text('task = "mask"\nout = "o"\n')
    with pytest.raises(RecipeError, match="missing key.*data"):
        R.load(p)
    p.write_text('task = "mask"\nout = "o"\ndata = ["${x}"]\n')
    with pytest.raises(RecipeError, match=r"\$\{x\} names no variable"):
        R.load(p)


def test_set_overrides_read_as_the_key_type(tmp_path):
    p = _file(tmp_path, '[vars]\nroot = "runs"\n')
    sets = [
        "epochs=3",
        "lr=2e-4",
        "quantize=true",
        "data=a,b",
        'val=["v1", "v2"]',
        'oversample={ "a" = 2 }',
        "name=123",
        "size=none",
        "mask_labels=mask,no_mask",
        "init=${root}/best.pt",
        "max_steps=7",
    ]
    v = R.load(p, sets).values
    assert (v.epochs, v.lr, v.quantize, v.data, v.val) == (3, 2e-4, True, ["a", "b"], ["v1", "v2"])
    assert v.oversample == {"a": 2.0} and v.name == "123" and v.size is None and v.init == "runs/best.pt"
    assert v.mask_labels == ("mask", "no_mask") and v.max_steps == 7
    assert R.load(p, ["vars.root=elsewhere", "init=${root}/x.pt"]).values.init == "elsewhere/x.pt"
    # --set wins over the command's options, which win over the file
    assert R.load(p, ["epochs=4"], options={"epochs": 2, "seed": 9}).values.epochs == 4
    for bad, message in [
        ("epochs", "expected KEY=VALUE"),
        ("epochz=1", "unknown key 'epochz'"),
        ("epochs=1.5", "epochs: expected int"),
        ("vars.nope=1", "no variable 'nope'"),
        ("kind=top", "reserved"),
    ]:
        with pytest.raises(RecipeError, match=message):
            R.load(p, [bad])


def test_a_new_kind_registers_and_its_card_records_the_recipe(tmp_path, monkeypatch):
    @dataclasses.dataclass
    class Toy:
        out: str
        steps: int = 2
        labels: tuple[str, ...] = ("a", "b")

        def __post_init__(self):
            if self.steps < 1:
                raise ValueError(f"steps must be >= 1, got {self.steps}")

    def run_toy(r: Toy) -> dict:
        card = {"onnx": "toy.onnx", "training": {"date": "today"}}
        (tmp_path / "out" / "toy.json").write_text(json.dumps(card))
        return card

    monkeypatch.setitem(R.KINDS, "toy", None)
    R.register_kind("toy", Toy, run_toy)
    p = tmp_path / "toy.toml"
    p.write_text(f'kind = "toy"\nout = "{tmp_path / "out"}"\nsteps = 3\n')
    with pytest.raises(RecipeError, match="steps must be >= 1"):
        R.load(p, ["steps=0"])
    recipe = R.load(p, ["labels=x,y,z"])
    card = R.run(recipe)
    saved = json.loads((tmp_path / "out" / "toy.json").read_text())
    assert saved == card and card["training"]["date"] == "today"
    assert card["training"]["recipe"] == {
        "kind": "toy",
        "out": str(tmp_path / "out"),
        "steps": 3,
        "labels": ["x", "y", "z"],
    }
    assert card["training"]["recipe_sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert card["training"]["recipe_overrides"] == {"labels": ["x", "y", "z"]}
    rerun = R.load(tmp_path / "out" / "recipe.json")  # OUT/recipe.json is the effective recipe
    assert rerun.values == recipe.values and rerun.kind == "toy"
    with pytest.raises(TypeError):
        R.register_kind("bad", dict, run_toy)


def test_recipe_file_round_trips_into_the_card_and_legacy_labels_fold_incorrect(tmp_path):
    torch = pytest.importorskip("torch")
    import onnxruntime as ort
    from click.testing import CliRunner

    from maskwatch.train.cli import train
    from maskwatch.train.data import load_folder
    from maskwatch.train.loop import make_split
    from test_train_loop import _write_set

    torch.set_num_threads(2)
    mask = _write_set(tmp_path / "mask", ["with_mask", "without_mask", "mask_weared_incorrect"], 6, 32)
    gender = _write_set(tmp_path / "gender", ["man", "woman"], 6, 32, seed=1)
    out = tmp_path / "out"
    p = tmp_path / "stage.toml"
    p.write_text(
        f'task = "attributes"\ndata = ["{mask}", "{gender}"]\nout = "{out}"\n'
        'mask_labels = ["mask", "no_mask"]\n'
        "size = 32\nepochs = 3\nbatch_size = 8\npretrained = false\nworkers = 1\nincorrect_mask = 0.3\n"
        f'[oversample]\n"{mask}/mask_weared_incorrect" = 2\n'
    )
    res = CliRunner().invoke(
        train, ["--recipe", str(p), "--set", "epochs=1", "--threads", "2", "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    card = json.loads((out / "attributes.json").read_text())
    expected = R.load(p, ["epochs=1"], options={"threads": 2})
    assert card["training"]["recipe"] == expected.to_dict() == json.loads((out / "recipe.json").read_text())
    assert card["training"]["recipe"]["epochs"] == 1 and card["training"]["recipe"]["threads"] == 2
    assert card["training"]["recipe_file"] == str(p) and card["training"]["kind"] == "train"
    assert card["training"]["recipe_sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert card["training"]["recipe_overrides"] == {"threads": 2, "epochs": 1}
    # two labels: incorrect samples are no_mask, the card and the graph have two mask outputs
    assert card["outputs"]["mask"]["labels"] == ["mask", "no_mask"]
    assert np.array(card["metrics"]["validation"]["mask"]["confusion"]).shape == (2, 2)
    x = np.zeros((1, 3, 32, 32), np.float32)
    got = ort.InferenceSession(str(out / "attributes.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )
    assert got[0].shape == (1, 2)
    s = load_folder(mask, 32)
    two = make_split([s], {"mask": ("mask", "no_mask")}, True).labels[:, 0]
    three = make_split([s], {"mask": ("mask", "no_mask", "incorrect")}, True).labels[:, 0]
    incorrect = np.array([lab == "incorrect" for lab in s.labels])
    assert (
        (two[incorrect] == 1).all()
        and (three[incorrect] == 2).all()
        and (two[~incorrect] == three[~incorrect]).all()
    )
