"""ImageNet-size ResNets built through torchvision: ResNet-10, ResNet-50, ResNet-152, ResNeXt-50 32x4d.

torchvision's ``ResNet`` (and its ``resnet50`` / ``resnet152`` / ``resnext50_32x4d`` builders, no weights)
supplies the network; its ``fc`` is replaced by a longtail head. ``pretrained_path`` loads a local state
dict of the same torchvision architecture (never downloaded; ``fc`` is ignored, the head starts fresh).
The helpers here also give the multi-expert models (RIDE, SHIKE) torchvision stages and trunks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet as tv

from longtail.errors import unknown_name_error
from longtail.models.base import SingleHeadNetwork, load_matching, load_state_dict_file
from longtail.models.heads import create_head
from longtail.models.registry import register_model

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")
STAGE_PLANES = (64, 128, 256, 512)


def _resnet10() -> tv.ResNet:
    return tv.ResNet(tv.BasicBlock, [1, 1, 1, 1])


TORCHVISION_BUILDERS: dict[str, Callable[[], tv.ResNet]] = {
    "resnet10": _resnet10,
    "resnet50": lambda: tv.resnet50(weights=None),
    "resnet152": lambda: tv.resnet152(weights=None),
    "resnext50_32x4d": lambda: tv.resnext50_32x4d(weights=None),
}


def build_torchvision_resnet(arch: str, pretrained_path: str | Path | None = None) -> tv.ResNet:
    """torchvision ResNet ``arch`` with random weights, or the local state dict at ``pretrained_path``
    (every parameter but ``fc`` must be present)."""
    if arch not in TORCHVISION_BUILDERS:
        raise unknown_name_error("torchvision architecture", arch, TORCHVISION_BUILDERS)
    net = TORCHVISION_BUILDERS[arch]()
    if pretrained_path is not None:
        state = load_state_dict_file(pretrained_path)
        net.fc = nn.Identity()
        load_matching(net, state, str(pretrained_path))
    return net


def block_type(net: tv.ResNet) -> type[tv.BasicBlock] | type[tv.Bottleneck]:
    return type(net.layer1[0])


def stage_channels(net: tv.ResNet, stage: str) -> int:
    """Output channels of ``stage`` ('layer1'..'layer4')."""
    return STAGE_PLANES[STAGE_NAMES.index(stage)] * block_type(net).expansion


def make_torchvision_stage(net: tv.ResNet, in_channels: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """A fresh stage of ``net``'s torchvision block type, groups and width (like ``ResNet._make_layer``), at
    any width ``planes``; convolutions Kaiming-normal (fan-out) as torchvision initialises them."""
    block = block_type(net)
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(tv.conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    options = {"groups": net.groups, "base_width": net.base_width}
    layers = [block(in_channels, planes, stride, downsample, **options)]
    layers += [block(out_channels, planes, **options) for _ in range(blocks - 1)]
    stage = nn.Sequential(*layers)
    for module in stage.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return stage


def torchvision_trunk(net: tv.ResNet, last_stage: str) -> nn.Sequential:
    """Stem (conv1, bn1, relu, maxpool) and the stages up to and including ``last_stage``, sharing ``net``'s
    modules (and so its weights)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool)
    for name in STAGE_NAMES[: STAGE_NAMES.index(last_stage) + 1]:
        layers[name] = getattr(net, name)
    return nn.Sequential(layers)


class TorchvisionResNet(SingleHeadNetwork):
    """A torchvision ResNet (``self.body``, its ``fc`` removed) followed by ``self.head``."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        head: str = "linear",
        head_options: dict[str, Any] | None = None,
        pretrained_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        body = build_torchvision_resnet(arch, pretrained_path)
        self.num_features = stage_channels(body, "layer4")
        body.fc = nn.Identity()
        self.body = body
        self.head = create_head(head, self.num_features, num_classes, **(head_options or {}))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


def _register(arch: str, description: str) -> None:
    def factory(
        num_classes: int,
        head: str = "linear",
        head_options: dict[str, Any] | None = None,
        pretrained_path: str | None = None,
    ) -> TorchvisionResNet:
        return TorchvisionResNet(arch, num_classes, head, head_options, pretrained_path)

    factory.__name__ = arch
    factory.__doc__ = (
        f"torchvision {description} with a longtail head ('linear', 'cosine', ...; ``head_options`` are the "
        "head's options) and optional local ``pretrained_path``."
    )
    register_model(arch)(factory)


_register("resnet10", "ResNet-10 (BasicBlock [1, 1, 1, 1])")
_register("resnet50", "ResNet-50")
_register("resnet152", "ResNet-152")
_register("resnext50_32x4d", "ResNeXt-50 32x4d")
