"""Network bodies the model registry builds on (no registry here: `trainables.models` registers).

Each body takes normalised (B, C, H, W) images and returns pooled features (B, out_dim):

- `ResNetBody`: CIFAR-style ResNet (3x3 stem, no max-pool) on torchvision's BasicBlock/Bottleneck;
- `WideResNetBody`: pre-activation wide ResNet (Zagoruyko & Komodakis 2016);
- `vgg`: CIFAR-style VGG with batch norm and a global pool (pools below 1x1 are dropped);
- `ViTBody`: torchvision's VisionTransformer with DeiT-Tiny proportions.

`width` scales every channel count through `channels(base, width)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.vision_transformer import VisionTransformer

__all__ = ["VGG_CFG", "ResNetBody", "ViTBody", "WideResNetBody", "channels", "vgg"]


def channels(base: int, width: float) -> int:
    """``base`` channels scaled by ``width`` (at least 1)."""
    return max(1, int(round(base * width)))


class ResNetBody(nn.Module):
    """3x3 stem (no max-pool), four stages of torchvision blocks, global average pool."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 *, in_channels: int, width: float) -> None:
        super().__init__()
        planes = [channels(p, width) for p in (64, 128, 256, 512)]
        self.inplanes = planes[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, planes[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(*[self._stage(block, p, n, stride=1 if i == 0 else 2)
                                      for i, (p, n) in enumerate(zip(planes, layers))])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = planes[-1] * block.expansion

    def _stage(self, block, planes: int, blocks: int, *, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        mods = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)


class _WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        return self.conv2(torch.relu(self.bn2(self.conv1(o)))) + skip


class WideResNetBody(nn.Module):
    def __init__(self, *, depth: int, widen: int, in_channels: int, width: float) -> None:
        super().__init__()
        n = (depth - 4) // 6  # blocks per group
        widths = [channels(16, width)] + [channels(c * widen, width) for c in (16, 32, 64)]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks, cin = [], widths[0]
        for g, cout in enumerate(widths[1:]):
            for b in range(n):
                blocks.append(_WideBlock(cin, cout, stride=2 if (g > 0 and b == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.blocks(self.stem(x))))
        return x.mean(dim=(2, 3))


VGG_CFG = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                 512, 512, 512, "M"],
}


def vgg(cfg: list, *, in_channels: int, image_size: int, width: float) -> tuple[nn.Module, int]:
    max_pools = max(0, int(math.floor(math.log2(image_size))))  # never pool below 1x1
    layers: list[nn.Module] = []
    cin, pools = in_channels, 0
    for v in cfg:
        if v == "M":
            if pools < max_pools:
                layers.append(nn.MaxPool2d(2))
                pools += 1
            continue
        cout = channels(v, width)
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


class ViTBody(nn.Module):
    def __init__(self, *, in_channels: int, image_size: int, width: float) -> None:
        super().__init__()
        # Token grid: 8x8 from 32-127 px (CIFAR ViTs use 4x4 patches), 4x4 below, 16 px patches
        # from 128 px (ImageNet-style).
        target = 16 if image_size >= 128 else (image_size // 8 if image_size >= 32
                                               else max(1, image_size // 4))
        patch = max(p for p in range(1, target + 1) if image_size % p == 0)
        heads, head_dim = 3, max(8, int(round(64 * width)))
        hidden = heads * head_dim
        self.vit = VisionTransformer(image_size=image_size, patch_size=patch, num_layers=12,
                                     num_heads=heads, hidden_dim=hidden, mlp_dim=4 * hidden,
                                     num_classes=1)
        # torchvision's patch embedding assumes RGB; rebuild it for any channel count.
        proj = nn.Conv2d(in_channels, hidden, kernel_size=patch, stride=patch)
        nn.init.trunc_normal_(proj.weight, std=math.sqrt(1 / (in_channels * patch * patch)))
        nn.init.zeros_(proj.bias)
        self.vit.conv_proj = proj
        self.vit.heads = nn.Identity()  # forward then returns the class token (B, hidden)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)
