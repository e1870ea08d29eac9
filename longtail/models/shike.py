"""SHIKE backbones with Depth-wise Knowledge Fusion (Jin et al., "Long-Tailed Visual Recognition via
Self-Heterogeneous Integration with Knowledge Excavation", CVPR 2023).

CIFAR (``shike_resnet32``): ResNet-32 with option-B (1x1 conv) shortcuts at full width. Shared:
conv1 + layer1 (F1, 16x32x32) + layer2 (F2, 32x16x16). Expert k owns layer3_k (64 channels) and a shallow
expert S_k that maps a shallower map to the layer3 shape with ``d_k`` strided 3x3 conv + BN blocks (each
doubling the channels): F1 through 2 blocks (d_k = 2) or F2 through 1 block (d_k = 1). DKF:

    f_k = GAP( layer3_k(F2) ⊙ S_k(F_{3 − d_k}) ),   z_k = 30 · cos(f_k, w_{k,c})

with depths ``expert_depths`` (reference: [2, 1, 2]). As in the reference, a ReLU follows every shallow
block except the second (so the one block of a depth-1 expert ends with a ReLU, the 2-block expert does not),
and the shallow experts keep PyTorch's default conv init while the rest is Kaiming-normal.
``retrain_heads=True`` adds a second set of cosine heads (the reference ``rt_classifiers``) for SHIKE's
stage-2 balanced re-training (``model.select_heads('retrain')``). Parameter count with the defaults equals the
official ``resnet32(use_norm=True, num_exps=3)``: 1,277,008 (CIFAR-100) / 1,242,448 (CIFAR-10).

ImageNet-size (``shike_resnet50/152``, ``shike_resnext50_32x4d``): the same idea one stage deeper: torchvision
stem + layer1..layer3 shared, expert k owns layer4_k, and S_k maps the layer2 output (2 blocks) or the layer3
output (1 block) to the layer4 shape.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from longtail.errors import LongtailError
from longtail.models.base import load_matching
from longtail.models.cifar_resnet import CIFAR_WIDTHS, build_head, cifar_stem, init_cifar_weights, make_cifar_stage
from longtail.models.heads import create_head
from longtail.models.multi_expert import MultiExpertNetwork
from longtail.models.registry import register_model, register_variant
from longtail.models.torchvision_resnet import (
    STAGE_PLANES,
    build_torchvision_resnet,
    make_torchvision_stage,
    stage_channels,
    torchvision_trunk,
)

DEPTHS = (1, 2)


class ShallowExpert(nn.Sequential):
    """``depth`` blocks of strided 3x3 conv + BN doubling the channels; ReLU after every block but the second."""

    def __init__(self, in_channels: int, depth: int) -> None:
        blocks = []
        for index in range(depth):
            channels = in_channels * 2**index
            layers = [
                nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(2 * channels),
            ]
            if index != 1:
                layers.append(nn.ReLU(inplace=True))
            blocks.append(nn.Sequential(*layers))
        super().__init__(*blocks)


class TwoLevelTrunk(nn.Module):
    """Returns (lower(x), upper(lower(x))): the two shared maps a shallow expert may read."""

    def __init__(self, lower: nn.Module, upper: nn.Module) -> None:
        super().__init__()
        self.lower = lower
        self.upper = upper

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.lower(images)
        return low, self.upper(low)


class DKFBranch(nn.Module):
    """deep(upper) ⊙ shallow(lower if depth == 2 else upper)."""

    def __init__(self, deep: nn.Module, shallow: ShallowExpert, depth: int) -> None:
        super().__init__()
        self.deep = deep
        self.shallow = shallow
        self.depth = depth

    def forward(self, shared: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        low, high = shared
        return self.deep(high) * self.shallow(low if self.depth == 2 else high)


def default_depths(num_experts: int) -> list[int]:
    """The reference assignment: 2, 1, 2, 1, ..."""
    return [2 if index % 2 == 0 else 1 for index in range(num_experts)]


def _check_depths(expert_depths: Sequence[int] | None, num_experts: int) -> list[int]:
    if num_experts < 1:
        raise LongtailError(f"num_experts must be at least 1, got {num_experts}.")
    depths = default_depths(num_experts) if expert_depths is None else [int(d) for d in expert_depths]
    if len(depths) != num_experts or any(d not in DEPTHS for d in depths):
        raise LongtailError(
            f"expert_depths needs one depth in {DEPTHS} per expert ({num_experts}), got {list(expert_depths or [])}."
        )
    return depths


@register_model("shike_resnet32")
def shike_resnet32(
    num_classes: int,
    num_experts: int = 3,
    expert_depths: Sequence[int] | None = None,
    head: str = "cosine",
    head_options: dict[str, Any] | None = None,
    retrain_heads: bool = True,
    logit_adjust_exponents: Sequence[float] | None = None,
) -> MultiExpertNetwork:
    """SHIKE ResNet-32 with DKF; ``expert_depths`` one of 1/2 per expert (default 2, 1, 2, ...)."""
    depths = _check_depths(expert_depths, num_experts)
    width1, width2, width3 = CIFAR_WIDTHS
    lower = nn.Sequential(OrderedDict(**cifar_stem(width1), layer1=make_cifar_stage(width1, width1, 1, "B")))
    trunk = TwoLevelTrunk(lower, make_cifar_stage(width1, width2, 2, "B"))
    deep_stages = [make_cifar_stage(width2, width3, 2, "B") for _ in depths]
    for module in (trunk, *deep_stages):
        init_cifar_weights(module)
    input_widths = {1: width2, 2: width1}
    branches = [DKFBranch(deep, ShallowExpert(input_widths[d], d), d) for deep, d in zip(deep_stages, depths)]
    heads = [build_head(head, width3, num_classes, head_options) for _ in depths]
    second_heads = [build_head(head, width3, num_classes, head_options) for _ in depths] if retrain_heads else None
    return MultiExpertNetwork(trunk, branches, heads, second_heads, logit_adjust_exponents)


def shike_torchvision_resnet(
    arch: str,
    num_classes: int,
    num_experts: int = 3,
    expert_depths: Sequence[int] | None = None,
    head: str = "cosine",
    head_options: dict[str, Any] | None = None,
    retrain_heads: bool = True,
    pretrained_path: str | None = None,
    logit_adjust_exponents: Sequence[float] | None = None,
) -> MultiExpertNetwork:
    """torchvision stem + layer1..3 shared; expert k: layer4_k ⊙ shallow_k(layer2 or layer3 output)."""
    depths = _check_depths(expert_depths, num_experts)
    base = build_torchvision_resnet(arch, pretrained_path)
    trunk = TwoLevelTrunk(torchvision_trunk(base, "layer2"), base.layer3)
    input_channels = {1: stage_channels(base, "layer3"), 2: stage_channels(base, "layer2")}
    branches = []
    for depth in depths:
        deep = make_torchvision_stage(base, input_channels[1], STAGE_PLANES[3], len(base.layer4), 2)
        if pretrained_path is not None:
            load_matching(deep, base.layer4.state_dict(), f"{pretrained_path} (layer4)")
        branches.append(DKFBranch(deep, ShallowExpert(input_channels[depth], depth), depth))
    feature_dim = stage_channels(base, "layer4")
    options = head_options or {}
    heads = [create_head(head, feature_dim, num_classes, **options) for _ in depths]
    second_heads = [create_head(head, feature_dim, num_classes, **options) for _ in depths] if retrain_heads else None
    return MultiExpertNetwork(trunk, branches, heads, second_heads, logit_adjust_exponents)


for _arch in ("resnet50", "resnet152", "resnext50_32x4d"):
    register_variant(
        f"shike_{_arch}",
        shike_torchvision_resnet,
        f"SHIKE (DKF) multi-expert torchvision {_arch} (see ``shike_torchvision_resnet``).",
        arch=_arch,
    )
