"""Model registry: every architecture is a `UniModel`: Normalize -> body -> pooled features -> head.

All models take inputs in [0, 1] (the threat model lives on that scale) and normalise them in
their first layer, so attacks and similarity analysis never see normalised pixels. `features(x)`
is the pooled penultimate representation (SPEC §2.3 notes the paper hooked different layers per
family; we fix one definition: the vector the linear head reads).

Registered names (stable strings, they end up in MLflow and result tables):

- `mlp`, `cnn`: tiny models for the embedded digits data.
- `resnet18`, `resnet50`: CIFAR-style (3x3 stem, no max-pool), built from torchvision's
  `BasicBlock` / `Bottleneck`; `width` scales every channel count.
- `wrn16_4`: wide ResNet (Zagoruyko & Komodakis 2016), depth 16, widen factor 4, pre-activation.
- `vgg11_bn`, `vgg16_bn`: CIFAR-style VGG (conv stack + global pool + linear head); pools that
  would shrink the map below 1x1 are dropped, so 8x8 digits work.
- `densenet121`: torchvision `DenseNet` with growth rate `32 * width` and a 3x3 CIFAR stem.
- `vit_tiny`: torchvision `VisionTransformer` with DeiT-Tiny proportions (12 layers, 3 heads,
  head dim 64 * width); patch size gives an 8x8 token grid (4x4 below 32 px; 16 px patches
  from 128 px).
- `tv_resnet18`, `tv_resnet50`: ImageNet-style torchvision constructors
  (7x7 stride-2 stem + max-pool), never with pretrained weights; fixed width 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from trainables.errors import ConfigError
from trainables.nets import VGG_CFG, ResNetBody, ViTBody, WideResNetBody, channels, vgg

__all__ = ["MODELS", "ModelEntry", "Normalize", "UniModel", "build_model", "register_model"]

# A builder maps (in_channels, image_size, width) to (body, feature_dim); the body takes
# normalised (B, C, H, W) images and returns pooled features (B, feature_dim).
Builder = Callable[..., tuple[nn.Module, int]]


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    Attributes:
        name: the registry key.
        builder: `builder(*, in_channels, image_size, width) -> (body, feature_dim)`.
        description: one line for listings.
        fixed_width: True when `width` must be 1.0 (torchvision ImageNet constructors).
    """

    name: str
    builder: Builder
    description: str
    fixed_width: bool = False


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, *, description: str, fixed_width: bool = False):
    """Decorator adding a builder to `MODELS` under an explicit, stable name; refuses duplicates."""

    def wrap(builder: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = ModelEntry(name, builder, description, fixed_width)
        return builder

    return wrap


def _per_channel(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)


class Normalize(nn.Module):
    """Per-channel `(x - mean) / std`; mean/std are buffers so they travel with the weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", _per_channel(mean))
        self.register_buffer("std", _per_channel(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class UniModel(nn.Module):
    """Normalize -> body -> (B, D) features -> linear head; `forward(x) == head(features(x))`.

    Attributes:
        arch, width, num_classes, in_channels, image_size: the build arguments (for checkpoints).
        norm_mean, norm_std: the Normalize constants as given (float64 tuples).
        feature_dim: D, the size of the pooled penultimate representation.
        head: `nn.Linear(D, num_classes)`.
    """

    def __init__(self, *, arch: str, width: float, num_classes: int, in_channels: int,
                 image_size: int, body: nn.Module, feature_dim: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.arch, self.width = arch, float(width)
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.feature_dim = int(feature_dim)
        self.norm_mean, self.norm_std = tuple(mean), tuple(std)  # exact values, for meta.json
        self.normalize = Normalize(mean, std)
        self.body = body
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate representation.

        Args:
            x: float32 (B, C, H, W) in [0, 1].

        Returns:
            float32 (B, feature_dim).
        """
        return self.body(self.normalize(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for inputs (B, C, H, W) in [0, 1]."""
        return self.head(self.features(x))


def _check_int(field: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field} must be an integer >= {minimum}, got {field}={value!r}")
    return value


def build_model(arch: str, *, num_classes: int, in_channels: int, image_size: int,
                width: float = 1.0, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> UniModel:
    """Build a registered architecture with a `Normalize(mean, std)` first layer.

    Args:
        arch: a key of `MODELS`.
        num_classes: number of logits.
        in_channels: image channels C.
        image_size: square input side H = W in pixels.
        width: channel multiplier (> 0, <= 16); must be 1.0 for fixed-width `tv_*` models.
        mean, std: per-channel normalisation constants (length C); default 0 and 1.

    Returns:
        An initialised (untrained) `UniModel` on the CPU.

    Raises:
        ConfigError: unknown arch, bad width, or inconsistent sizes.
    """
    if arch not in MODELS:
        raise ConfigError(f"unknown arch {arch!r}; known: {sorted(MODELS)}")
    entry = MODELS[arch]
    num_classes = _check_int("num_classes", num_classes, 1)
    in_channels = _check_int("in_channels", in_channels, 1)
    image_size = _check_int("image_size", image_size, 4)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (
            math.isfinite(width) and 0 < width <= 16):
        raise ConfigError(f"width must be a number in (0, 16], got width={width!r}")
    if entry.fixed_width and float(width) != 1.0:
        raise ConfigError(f"arch {arch!r} has a fixed width; allowed: width=1.0, "
                          f"got width={width!r}")
    mean = [0.0] * in_channels if mean is None else [float(m) for m in mean]
    std = [1.0] * in_channels if std is None else [float(s) for s in std]
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(f"mean/std need {in_channels} values (in_channels), "
                          f"got mean={mean}, std={std}")
    if min(std) <= 0:
        raise ConfigError(f"std must be > 0 per channel, got std={std}")
    body, dim = entry.builder(in_channels=in_channels, image_size=image_size, width=float(width))
    return UniModel(arch=arch, width=float(width), num_classes=num_classes, in_channels=in_channels,
                    image_size=image_size, body=body, feature_dim=dim, mean=mean, std=std)


# ---------------------------------------------------------------------------------------------
# Small models for digits.


@register_model("mlp", description="2 hidden layers of 256*width units")
def _mlp(*, in_channels: int, image_size: int, width: float) -> tuple[nn.Module, int]:
    h = channels(256, width)
    body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, h), nn.ReLU(),
                         nn.Linear(h, h), nn.ReLU())
    return body, h


@register_model("cnn", description="2 conv layers (32, 64 channels * width) + 1 hidden FC layer")
def _cnn(*, in_channels: int, image_size: int, width: float) -> tuple[nn.Module, int]:
    c1, c2, h = channels(32, width), channels(64, width), channels(128, width)
    body = nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(2),  # 8x8 digits: already 2x2; larger images are averaged down
        nn.Flatten(), nn.Linear(4 * c2, h), nn.ReLU(),
    )
    return body, h


# ---------------------------------------------------------------------------------------------
# CIFAR-style ResNets on torchvision blocks.


@register_model("resnet18", description="CIFAR ResNet-18, BasicBlock [2,2,2,2], 512*width features")
def _resnet18(*, in_channels: int, image_size: int, width: float) -> tuple[nn.Module, int]:
    body = ResNetBody(BasicBlock, (2, 2, 2, 2), in_channels=in_channels, width=width)
    return body, body.out_dim


@register_model("resnet50", description="CIFAR ResNet-50, Bottleneck [3,4,6,3], 2048*width feats")
def _resnet50(*, in_channels: int, image_size: int, width: float) -> tuple[nn.Module, int]:
    body = ResNetBody(Bottleneck, (3, 4, 6, 3), in_channels=in_channels, width=width)
    return body, body.out_dim


# ---------------------------------------------------------------------------------------------
# Wide ResNet (pre-activation), Zagoruyko & Komodakis (2016).


@register_model("wrn16_4", description="Wide ResNet 16-4 (pre-activation), 256*width features")
def _wrn16_4(*, in_channels: int, image_size: int, width: float) -> tuple[nn.Module, int]:
    body = WideResNetBody(depth=16, widen=4, in_channels=in_channels, width=width)
    return body, body.out_dim


# ---------------------------------------------------------------------------------------------
# VGG with batch norm, CIFAR style.


@register_model("vgg11_bn", description="CIFAR VGG-11 with BN, global pool, 512*width features")
def _vgg11(*, in_channels: int, image_size: int, width: float) -> tuple[nn.Module, int]:
    return vgg(VGG_CFG["vgg11_bn"], in_channels=in_channels, image_size=image_size, width=width)


@register_model("vgg16_bn", description="CIFAR VGG-16 with BN, global pool, 512*width features")
def _vgg16(*, in_channels: int, image_size: int, width: float) -> tuple[nn.Module, int]:
    return vgg(VGG_CFG["vgg16_bn"], in_channels=in_channels, image_size=image_size, width=width)


# ---------------------------------------------------------------------------------------------
# DenseNet-121 (torchvision) with a CIFAR stem.


@register_model("densenet121", description="DenseNet-121, growth 32*width, 3x3 stem, no max-pool")
def _densenet121(*, in_channels: int, image_size: int, width: float) -> tuple[nn.Module, int]:
    growth = max(2, int(round(32 * width)))
    net = torchvision.models.DenseNet(growth_rate=growth, block_config=(6, 12, 24, 16),
                                      num_init_features=2 * growth, num_classes=1)
    net.features.conv0 = nn.Conv2d(in_channels, 2 * growth, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(net.features.conv0.weight)
    net.features.pool0 = nn.Identity()
    dim = net.classifier.in_features
    net.classifier = nn.Identity()  # DenseNet.forward: relu -> global avg pool -> flatten -> this
    return net, dim


# ---------------------------------------------------------------------------------------------
# Vision transformer (torchvision), DeiT-Tiny proportions.


@register_model("vit_tiny", description="ViT, 12 layers, 3 heads of 64*width dims, 8x8 token grid")
def _vit_tiny(*, in_channels: int, image_size: int, width: float) -> tuple[nn.Module, int]:
    body = ViTBody(in_channels=in_channels, image_size=image_size, width=width)
    return body, body.out_dim


# ---------------------------------------------------------------------------------------------
# ImageNet-style torchvision constructors (never pretrained).


def _tv_resnet(ctor: Callable[..., nn.Module], in_channels: int) -> tuple[nn.Module, int]:
    net = ctor(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    dim = net.fc.in_features
    net.fc = nn.Identity()  # ResNet.forward: ... avgpool -> flatten -> this
    return net, dim


@register_model("tv_resnet18", description="torchvision ImageNet ResNet-18", fixed_width=True)
def _tv_resnet18(*, in_channels: int, image_size: int, width: float) -> tuple[nn.Module, int]:
    return _tv_resnet(torchvision.models.resnet18, in_channels)


@register_model("tv_resnet50", description="torchvision ImageNet ResNet-50", fixed_width=True)
def _tv_resnet50(*, in_channels: int, image_size: int, width: float) -> tuple[nn.Module, int]:
    return _tv_resnet(torchvision.models.resnet50, in_channels)
