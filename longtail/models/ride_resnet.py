"""RIDE multi-expert ResNets (Wang et al., "Long-tailed Recognition by Routing Diverse Distribution-Aware
Experts", ICLR 2021), also the backbones of MDCS (Zhao et al., ICCV 2023).

CIFAR (``ride_resnet32``): shared conv1 + layer1 (16 channels); each expert owns layer2 + layer3 and a
cosine head (z_k = 30 · cos(f_k, w_{k,c})). With ``reduce_dimension`` the expert stages have 24 and 48
channels instead of 32 and 64. Option-A shortcuts, Kaiming-normal init, as the LDAM-DRW ResNet-32.
Parameter counts equal the official ``ResNet32Model``: 783,856 (CIFAR-100) / 770,896 (CIFAR-10) with 3
reduced experts, 469,904 with one full-width expert (the LDAM-DRW model). MDCS builds the same network; its
official count (793,760 / 772,160) also holds ``linear_head``, ``linear_few`` and ``mlp`` modules that its
forward never uses, which this library leaves out, so MDCS = ``ride_resnet32`` with
``logit_adjust_exponents=[-0.5, 1, 2.5]``.

ImageNet-size (``ride_resnet10/50/152``, ``ride_resnext50_32x4d``): torchvision stem + layer1 + layer2
shared; each expert owns layer3 + layer4 (192 / 384 planes with ``reduce_dimension``, else 256 / 512) built
from torchvision's blocks, and a cosine head. A local ``pretrained_path`` (a torchvision state dict) loads
the trunk and, at full width, copies layer3 / layer4 into every expert (MDCS Places-LT: ResNet-152,
``reduce_dimension=False``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import nn

from longtail.errors import LongtailError
from longtail.models.base import load_matching
from longtail.models.cifar_resnet import (
    CIFAR_WIDTHS,
    build_head,
    check_shortcut,
    cifar_stem,
    init_cifar_weights,
    make_cifar_stage,
)
from longtail.models.heads import create_head
from longtail.models.multi_expert import MultiExpertNetwork
from longtail.models.registry import register_model, register_variant
from longtail.models.torchvision_resnet import (
    STAGE_PLANES,
    block_type,
    build_torchvision_resnet,
    make_torchvision_stage,
    stage_channels,
    torchvision_trunk,
)

CIFAR_EXPERT_WIDTHS = {False: CIFAR_WIDTHS[1:], True: (24, 48)}
IMAGENET_EXPERT_PLANES = {False: STAGE_PLANES[2:], True: (192, 384)}


@register_model("ride_resnet32")
def ride_resnet32(
    num_classes: int,
    num_experts: int = 3,
    reduce_dimension: bool = True,
    expert_widths: Sequence[int] | None = None,
    head: str = "cosine",
    head_options: dict[str, Any] | None = None,
    shortcut: str = "A",
    logit_adjust_exponents: Sequence[float] | None = None,
) -> MultiExpertNetwork:
    """RIDE / MDCS ResNet-32 with ``num_experts`` experts. ``expert_widths`` (layer2, layer3 channels)
    overrides ``reduce_dimension``; ``head_options`` e.g. ``{'scale': 30}``; ``logit_adjust_exponents`` one
    λ_k per expert (MDCS)."""
    check_shortcut(shortcut)
    width2, width3 = _pair(expert_widths, CIFAR_EXPERT_WIDTHS[reduce_dimension], "expert_widths")
    stem_width = CIFAR_WIDTHS[0]
    layer1 = make_cifar_stage(stem_width, stem_width, 1, shortcut)
    trunk = nn.Sequential(OrderedDict(**cifar_stem(stem_width), layer1=layer1))
    branches = [
        nn.Sequential(
            OrderedDict(
                layer2=make_cifar_stage(stem_width, width2, 2, shortcut),
                layer3=make_cifar_stage(width2, width3, 2, shortcut),
            )
        )
        for _ in range(_positive(num_experts))
    ]
    for module in (trunk, *branches):
        init_cifar_weights(module)
    heads = [build_head(head, width3, num_classes, head_options) for _ in range(num_experts)]
    return MultiExpertNetwork(trunk, branches, heads, logit_adjust_exponents=logit_adjust_exponents)


def ride_torchvision_resnet(
    arch: str,
    num_classes: int,
    num_experts: int = 3,
    reduce_dimension: bool = True,
    expert_planes: Sequence[int] | None = None,
    head: str = "cosine",
    head_options: dict[str, Any] | None = None,
    pretrained_path: str | None = None,
    logit_adjust_exponents: Sequence[float] | None = None,
) -> MultiExpertNetwork:
    """Shared torchvision stem + layer1 + layer2; expert k: layer3 + layer4 (``expert_planes``) + head."""
    planes3, planes4 = _pair(expert_planes, IMAGENET_EXPERT_PLANES[reduce_dimension], "expert_planes")
    if pretrained_path is not None and (planes3, planes4) != STAGE_PLANES[2:]:
        raise LongtailError(
            f"pretrained_path needs full-width experts (layer3/layer4 planes {STAGE_PLANES[2:]}), got "
            f"{(planes3, planes4)}; pass reduce_dimension=False."
        )
    base = build_torchvision_resnet(arch, pretrained_path)
    expansion = block_type(base).expansion
    branches = []
    for _ in range(_positive(num_experts)):
        layer3 = make_torchvision_stage(base, stage_channels(base, "layer2"), planes3, len(base.layer3), 2)
        layer4 = make_torchvision_stage(base, planes3 * expansion, planes4, len(base.layer4), 2)
        if pretrained_path is not None:
            load_matching(layer3, base.layer3.state_dict(), f"{pretrained_path} (layer3)")
            load_matching(layer4, base.layer4.state_dict(), f"{pretrained_path} (layer4)")
        branches.append(nn.Sequential(OrderedDict(layer3=layer3, layer4=layer4)))
    heads = [create_head(head, planes4 * expansion, num_classes, **(head_options or {})) for _ in range(num_experts)]
    trunk = torchvision_trunk(base, "layer2")
    return MultiExpertNetwork(trunk, branches, heads, logit_adjust_exponents=logit_adjust_exponents)


for _arch in ("resnet10", "resnet50", "resnet152", "resnext50_32x4d"):
    register_variant(
        f"ride_{_arch}",
        ride_torchvision_resnet,
        f"RIDE / MDCS multi-expert torchvision {_arch} (see ``ride_torchvision_resnet``).",
        arch=_arch,
    )


def _pair(values: Sequence[int] | None, default: Sequence[int], name: str) -> tuple[int, int]:
    if values is None:
        return int(default[0]), int(default[1])
    if len(values) != 2:
        raise LongtailError(f"{name} needs two widths (one per expert stage), got {list(values)}.")
    return int(values[0]), int(values[1])


def _positive(num_experts: int) -> int:
    if num_experts < 1:
        raise LongtailError(f"num_experts must be at least 1, got {num_experts}.")
    return num_experts
