"""SE-ResNets with the APA squeeze-excitation gate and AGLU activations, the backbones of the APA paper
(Alexandridis et al., "Adaptive Parametric Activation", ECCV 2024; reference kostas1515/AGLU,
``Se_Block_Gumbel`` / ``SEBottleneckGumbel`` with ``SE_Block(use_gumbel=True)``).

Squeeze-excitation with an APA gate, for a feature map x (B, C, H, W):

    y = LayerNorm(GAP(x)),   y = Dropout_{0.1}(W_2 · ReLU(W_1 · y)),   out = x ⊙ APA(y)

with W_1 (C/r × C) and W_2 (C × C/r) bias-free, r = 4 (CIFAR) or 16 (ImageNet), and one scalar APA
(κ ~ U(−1, 0), λ ~ U(0, 1)) instead of the sigmoid. The ReLU inside the gate is a ``GateReLU``: the
reference keeps it when every other activation is AGLU, and so does ``replace_activations``.

- ``se_resnet32`` (CIFAR): the ResNet-32 of the reference (3x3 stem, 3 stages of 5 basic blocks, 16/32/64
  channels, option-A shortcuts, Kaiming-normal init); block: conv-BN-AGLU-conv-BN-SE, + shortcut, AGLU.
- ``se_resnet50`` / ``se_resnext50_32x4d``: torchvision's ResNet-50 / ResNeXt-50 32x4d with bottleneck
  conv1-BN-AGLU-conv2-BN-AGLU-conv3-BN-SE, + shortcut, AGLU, and an AGLU stem.

Every activation is its own scalar AGLU (the reference's ``UniRect()``); ``create(name, activation='relu')``
gives the ReLU baseline (the gate stays APA). Heads come from ``longtail.models.heads``; the default is the
reference recipe's cosine classifier with a learnable scale.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import resnet as tv

from longtail.errors import LongtailError
from longtail.models.activations import AGLU, APA, GateReLU
from longtail.models.base import SingleHeadNetwork
from longtail.models.cifar_resnet import BLOCKS_PER_STAGE, CIFAR_WIDTHS, ZeroPadShortcut, build_head, init_cifar_weights
from longtail.models.heads import create_head
from longtail.models.registry import register_model

CIFAR_REDUCTION = 4
IMAGENET_REDUCTION = 16
GATE_DROPOUT = 0.1
DEFAULT_HEAD_OPTIONS = {"learnable_scale": True}


class APASqueezeExcitation(nn.Module):
    """x ⊙ APA(Dropout(W_2 ReLU(W_1 LN(GAP(x))))), the reference's ``SE_Block(use_gumbel=True)``."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        if channels // reduction < 1:
            raise LongtailError(f"SE reduction {reduction} leaves no hidden unit for {channels} channels.")
        self.norm = nn.LayerNorm(channels)
        self.excitation = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            GateReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Dropout(GATE_DROPOUT),
        )
        self.gate = APA()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.gate(self.excitation(self.norm(x.mean(dim=(2, 3)))))
        return x * weights.to(x.dtype)[:, :, None, None]


class CifarSEBlock(nn.Module):
    """conv3x3-BN-AGLU-conv3x3-BN-SE, plus the option-A shortcut, then AGLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = AGLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = APASqueezeExcitation(channels, CIFAR_REDUCTION)
        self.act2 = AGLU()
        same_shape = stride == 1 and in_channels == channels
        self.shortcut = nn.Identity() if same_shape else ZeroPadShortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.act2(out + self.shortcut(x))


class SEResNet32(SingleHeadNetwork):
    """SE-ResNet-32 for 32x32 inputs: stem (conv1, bn1, act), layer1..3, pooled features, ``head``."""

    def __init__(self, num_classes: int, head: str = "cosine", head_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, CIFAR_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(CIFAR_WIDTHS[0])
        self.act = AGLU()
        in_channels = CIFAR_WIDTHS[0]
        for index, (channels, stride) in enumerate(zip(CIFAR_WIDTHS, (1, 2, 2)), start=1):
            blocks = [CifarSEBlock(in_channels, channels, stride)]
            blocks += [CifarSEBlock(channels, channels) for _ in range(BLOCKS_PER_STAGE - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            in_channels = channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        init_cifar_weights(self)
        self.num_features = CIFAR_WIDTHS[-1]
        self.head = build_head(head, self.num_features, num_classes, _head_options(head, head_options))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(images)))
        return self.pool(self.layer3(self.layer2(self.layer1(out))))


class SEBottleneck(tv.Bottleneck):
    """torchvision's bottleneck with three AGLUs and the APA squeeze-excitation after bn3."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.relu
        self.act1, self.act2, self.act3 = AGLU(), AGLU(), AGLU()
        self.se = APASqueezeExcitation(self.bn3.num_features, IMAGENET_REDUCTION)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.act3(out + identity)


class SEResNet(SingleHeadNetwork):
    """An SE-ResNet body (torchvision ``ResNet`` of ``SEBottleneck``s, AGLU stem, ``fc`` removed) + ``head``."""

    def __init__(
        self,
        num_classes: int,
        groups: int = 1,
        width_per_group: int = 64,
        head: str = "cosine",
        head_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        body = tv.ResNet(SEBottleneck, [3, 4, 6, 3], groups=groups, width_per_group=width_per_group)
        body.relu = AGLU()
        body.fc = nn.Identity()
        self.body = body
        self.num_features = 512 * SEBottleneck.expansion
        self.head = create_head(head, self.num_features, num_classes, **_head_options(head, head_options))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


def _head_options(head: str, head_options: dict[str, Any] | None) -> dict[str, Any]:
    """The caller's options; for the default cosine head, a learnable scale unless they say otherwise."""
    if head != "cosine":
        return dict(head_options or {})
    return {**DEFAULT_HEAD_OPTIONS, **(head_options or {})}


@register_model("se_resnet32")
def se_resnet32(num_classes: int, head: str = "cosine", head_options: dict[str, Any] | None = None) -> SEResNet32:
    """CIFAR SE-ResNet-32 with APA gates and AGLU activations (the APA paper's CIFAR-LT backbone)."""
    return SEResNet32(num_classes, head=head, head_options=head_options)


@register_model("se_resnet50")
def se_resnet50(num_classes: int, head: str = "cosine", head_options: dict[str, Any] | None = None) -> SEResNet:
    """SE-ResNet-50 with APA gates and AGLU activations (the APA paper's ImageNet-LT / iNat backbone)."""
    return SEResNet(num_classes, head=head, head_options=head_options)


@register_model("se_resnext50_32x4d")
def se_resnext50_32x4d(
    num_classes: int, head: str = "cosine", head_options: dict[str, Any] | None = None
) -> SEResNet:
    """SE-ResNeXt-50 32x4d with APA gates and AGLU activations."""
    return SEResNet(num_classes, groups=32, width_per_group=4, head=head, head_options=head_options)
