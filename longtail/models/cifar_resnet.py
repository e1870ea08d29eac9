"""CIFAR ResNet-32 (He et al. 2016, §4.2) in the LDAM-DRW variant used by LDAM, RIDE, MDCS and DeiT-LT.

3x3 conv (16) -> 3 stages of 5 BasicBlocks (16, 32, 64 channels; stride 1, 2, 2) -> global average pool ->
head. Shortcuts where the shape changes are option A (parameter-free: subsample by the stride, zero-pad the
new channels equally on both sides) or, with ``shortcut='B'``, a 1x1 conv + BN (SHIKE). Convolutions and
linear heads are initialised with Kaiming-normal (fan-in), as in the reference code. Every activation is its
own ``nn.ReLU`` so that ``replace_activations`` can swap them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from longtail.errors import LongtailError
from longtail.models.base import SingleHeadNetwork
from longtail.models.heads import CosineHead, create_head
from longtail.models.registry import register_model

BLOCKS_PER_STAGE = 5
CIFAR_WIDTHS = (16, 32, 64)
SHORTCUTS = ("A", "B")


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: x[:, :, ::stride, ::stride] with (out - in) zero channels split over both sides."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad_front, self.pad_back = extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class CifarBasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut = _make_shortcut(in_channels, channels, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def _make_shortcut(in_channels: int, channels: int, stride: int, shortcut: str) -> nn.Module:
    if stride == 1 and in_channels == channels:
        return nn.Identity()
    if shortcut == "A":
        return ZeroPadShortcut(in_channels, channels, stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(channels),
    )


def check_shortcut(shortcut: str) -> None:
    if shortcut not in SHORTCUTS:
        raise LongtailError(f"shortcut must be 'A' (zero-pad) or 'B' (1x1 conv), got {shortcut!r}.")


def make_cifar_stage(
    in_channels: int, channels: int, stride: int, shortcut: str = "A", blocks: int = BLOCKS_PER_STAGE
) -> nn.Sequential:
    """``blocks`` BasicBlocks, the first with ``stride``."""
    layers = [CifarBasicBlock(in_channels, channels, stride, shortcut)]
    layers += [CifarBasicBlock(channels, channels, 1, shortcut) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def cifar_stem(channels: int = CIFAR_WIDTHS[0]) -> OrderedDict[str, nn.Module]:
    """conv1 (3x3, 3 -> 16) - bn1 - relu at full resolution, named as in the reference."""
    return OrderedDict(
        conv1=nn.Conv2d(3, channels, 3, stride=1, padding=1, bias=False),
        bn1=nn.BatchNorm2d(channels),
        relu=nn.ReLU(inplace=True),
    )


def init_cifar_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-in) for every conv and nn.Linear weight, as the LDAM-DRW reference."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight)


def build_head(kind: str, in_features: int, num_classes: int, options: dict[str, Any] | None) -> nn.Module:
    """A head; linear heads get the reference's Kaiming-normal weights, cosine heads their own init."""
    head = create_head(kind, in_features, num_classes, **(options or {}))
    if not isinstance(head, CosineHead):
        init_cifar_weights(head)
    return head


class CifarResNet(SingleHeadNetwork):
    """ResNet-32 for 32x32 inputs; parameters named as in the reference (conv1, bn1, layer1..3), head ``head``."""

    def __init__(
        self,
        num_classes: int,
        head: str = "linear",
        head_options: dict[str, Any] | None = None,
        shortcut: str = "A",
    ) -> None:
        super().__init__()
        check_shortcut(shortcut)
        widths = CIFAR_WIDTHS
        for name, layer in cifar_stem(widths[0]).items():
            self.add_module(name, layer)
        self.layer1 = make_cifar_stage(widths[0], widths[0], 1, shortcut)
        self.layer2 = make_cifar_stage(widths[0], widths[1], 2, shortcut)
        self.layer3 = make_cifar_stage(widths[1], widths[2], 2, shortcut)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        init_cifar_weights(self)
        self.head = build_head(head, widths[2], num_classes, head_options)
        self.num_features = widths[2]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(images)))
        return self.pool(self.layer3(self.layer2(self.layer1(out))))


@register_model("resnet32")
def resnet32(
    num_classes: int,
    head: str = "linear",
    head_options: dict[str, Any] | None = None,
    shortcut: str = "A",
) -> CifarResNet:
    """CIFAR ResNet-32 (0.46 M parameters). ``head``: 'linear' (CE baselines, DeiT-LT teacher with
    use_norm=False) or 'cosine' (LDAM, use_norm=True; ``head_options={'scale': 30}``); ``shortcut``: 'A'
    zero-pad (reference) or 'B' 1x1 conv."""
    return CifarResNet(num_classes, head=head, head_options=head_options, shortcut=shortcut)
