"""RIDE multi-expert ResNets (Wang et al., "Long-tailed Recognition by Routing Diverse Distribution-Aware
Experts", ICLR 2021), also the backbones of MDCS (Zhao et al., ICCV 2023).

CIFAR (``ride_resnet32``): shared conv1 + layer1 (16 channels); each expert owns layer2 + layer3 and a
cosine head (z_k = 30 · cos(f_k, w_{k,c})). With ``reduce_dimension`` the expert stages have 24 and 48
channels instead of 32 and 64. Option-A shortcuts, Kaiming-normal init, as the LDAM-DRW ResNet-32.
The K experts run side by side in one pass (``CifarExpertStages``): expert k owns channels k·C … (k+1)·C − 1
of every expert layer, its convolutions are one group of a grouped convolution (the first one reads the
shared map once for all experts), BatchNorm is per channel, so each expert computes exactly what it would
alone, with K times fewer, larger operations (faster on CPU). Checkpoints of the per-expert layout
(``experts.{k}.layer2…``) load unchanged: their tensors are concatenated on loading.
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

import torch
import torch.nn.functional as F
from torch import nn

from longtail.errors import LongtailError
from longtail.models.base import load_matching
from longtail.models.cifar_resnet import (
    BLOCKS_PER_STAGE,
    CIFAR_WIDTHS,
    build_head,
    check_shortcut,
    cifar_stem,
    init_cifar_weights,
    make_cifar_stage,
)
from longtail.models.heads import create_head
from longtail.models.multi_expert import ExpertSet, MultiExpertNetwork
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
    experts = CifarExpertStages(_positive(num_experts), (stem_width, width2, width3), shortcut)
    for module in (trunk, experts):
        init_cifar_weights(module)
    heads = [build_head(head, width3, num_classes, head_options) for _ in range(num_experts)]
    return MultiExpertNetwork(trunk, experts, heads, logit_adjust_exponents=logit_adjust_exponents)


class ExpertConv(nn.Conv2d):
    """The convolutions of K experts as one: expert k's filters are output channels k·C_out … (k+1)·C_out − 1;
    each reads its own input group, or with ``shared_input`` every expert reads the whole (shared) input."""

    def __init__(
        self, num_experts: int, in_channels: int, out_channels: int, kernel_size: int, stride: int, shared_input: bool
    ) -> None:
        groups = 1 if shared_input else num_experts
        super().__init__(
            in_channels * groups, out_channels * num_experts, kernel_size, stride, kernel_size // 2, groups=groups,
            bias=False,
        )
        self.num_experts = num_experts
        self.shared_input = shared_input

    def forward(self, x: torch.Tensor, experts: slice | None = None) -> torch.Tensor:
        count = self.num_experts if experts is None else experts.stop - experts.start
        weight = self.weight if count == self.num_experts else self.weight[_channels(self, experts)]
        groups = 1 if self.shared_input else count
        return F.conv2d(x, weight, None, self.stride, self.padding, groups=groups)


class ExpertBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the channels of K experts (per channel, so it equals K separate BatchNorms). A subset of
    the experts normalises with, and in training updates, its own channels' statistics."""

    def __init__(self, num_experts: int, channels: int) -> None:
        super().__init__(channels * num_experts)
        self.num_experts = num_experts

    def forward(self, x: torch.Tensor, experts: slice | None = None) -> torch.Tensor:
        if experts is None or experts.stop - experts.start == self.num_experts:
            return super().forward(x)
        channels = _channels(self, experts)
        return F.batch_norm(
            x,
            None if self.running_mean is None else self.running_mean[channels],
            None if self.running_var is None else self.running_var[channels],
            self.weight[channels],
            self.bias[channels],
            self.training or self.running_mean is None,
            self.momentum or 0.0,
            self.eps,
        )


def _channels(layer: ExpertConv | ExpertBatchNorm, experts: slice) -> slice:
    width = layer.weight.shape[0] // layer.num_experts
    return slice(experts.start * width, experts.stop * width)


class ExpertZeroPad(nn.Module):
    """Option-A shortcut per expert: x[:, :, ::stride, ::stride] with (out − in) zero channels split over both
    sides of each expert's channels; a shared input is subsampled once and copied to every expert."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shared_input: bool) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.stride = stride
        self.shared_input = shared_input
        extra = out_channels - in_channels
        self.pad_front, self.pad_back = extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor, experts: slice) -> torch.Tensor:
        count = experts.stop - experts.start
        x = x[:, :, :: self.stride, :: self.stride]
        per_expert = x.unsqueeze(1).expand(-1, count, -1, -1, -1) if self.shared_input else x.unflatten(1, (count, -1))
        return F.pad(per_expert, (0, 0, 0, 0, self.pad_front, self.pad_back)).flatten(1, 2)


class ExpertProjection(nn.Sequential):
    """Option-B shortcut per expert: 1x1 convolution + BatchNorm."""

    def __init__(self, num_experts: int, in_channels: int, out_channels: int, stride: int, shared_input: bool) -> None:
        super().__init__(
            ExpertConv(num_experts, in_channels, out_channels, 1, stride, shared_input),
            ExpertBatchNorm(num_experts, out_channels),
        )

    def forward(self, x: torch.Tensor, experts: slice) -> torch.Tensor:
        return self[1](self[0](x, experts), experts)


class ExpertBlock(nn.Module):
    """The same CIFAR BasicBlock of K experts side by side (conv-BN-ReLU-conv-BN, + shortcut, ReLU)."""

    # relu1 follows bn1 and relu2 follows bn2, each called once: what replace_activations needs to know,
    # and cannot trace here because the forward branches on which experts run.
    activations_called_once = True

    def __init__(
        self, num_experts: int, in_channels: int, channels: int, stride: int, shortcut: str, shared_input: bool
    ) -> None:
        super().__init__()
        self.conv1 = ExpertConv(num_experts, in_channels, channels, 3, stride, shared_input)
        self.bn1 = ExpertBatchNorm(num_experts, channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = ExpertConv(num_experts, channels, channels, 3, 1, shared_input=False)
        self.bn2 = ExpertBatchNorm(num_experts, channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.num_experts = num_experts
        if stride == 1 and in_channels == channels and not shared_input:
            self.shortcut = None
        elif shortcut == "A":
            self.shortcut = ExpertZeroPad(in_channels, channels, stride, shared_input)
        else:
            self.shortcut = ExpertProjection(num_experts, in_channels, channels, stride, shared_input)

    def forward(self, x: torch.Tensor, experts: slice) -> torch.Tensor:
        out = expert_activation(self.relu1, self.bn1(self.conv1(x, experts), experts), experts, self.num_experts)
        out = self.bn2(self.conv2(out, experts), experts)
        residual = x if self.shortcut is None else self.shortcut(x, experts)
        return expert_activation(self.relu2, out + residual, experts, self.num_experts)


def expert_activation(activation: nn.Module, x: torch.Tensor, experts: slice, num_experts: int) -> torch.Tensor:
    """``activation(x)`` for the channels of ``experts``: an activation with per-channel parameters (e.g.
    per-channel AGLU over all K experts' channels) is applied with the slice of its parameters that belongs
    to the experts that run."""
    count = experts.stop - experts.start
    if count == num_experts or not any(True for _ in activation.parameters()):
        return activation(x)
    sliced = {}
    for name, value in activation.named_parameters():
        width = value.shape[0] // num_experts if value.dim() and value.shape[0] > 1 else 0
        sliced[name] = value[experts.start * width:experts.stop * width] if width else value
    return torch.func.functional_call(activation, sliced, (x,))


class CifarExpertStages(ExpertSet):
    """layer2 + layer3 of K CIFAR experts side by side, reading the shared layer1 output; parameters named as
    the per-expert layout without the expert index (``layer2.0.conv1.weight`` holds every expert's filters)."""

    def __init__(self, num_experts: int, widths: tuple[int, int, int], shortcut: str) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.width = widths[-1]
        self.layer2 = _expert_stage(num_experts, widths[0], widths[1], shortcut, shared_input=True)
        self.layer3 = _expert_stage(num_experts, widths[1], widths[2], shortcut, shared_input=False)
        self.register_load_state_dict_pre_hook(_merge_per_expert_entries)

    def forward(self, shared: torch.Tensor, experts: slice) -> torch.Tensor:
        out = shared
        for block in (*self.layer2, *self.layer3):
            out = block(out, experts)
        pooled = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return pooled.unflatten(1, (-1, self.width)).transpose(0, 1)


def _expert_stage(
    num_experts: int, in_channels: int, channels: int, shortcut: str, shared_input: bool
) -> nn.ModuleList:
    blocks = [ExpertBlock(num_experts, in_channels, channels, 2, shortcut, shared_input)]
    blocks += [ExpertBlock(num_experts, channels, channels, 1, shortcut, False) for _ in range(BLOCKS_PER_STAGE - 1)]
    return nn.ModuleList(blocks)


def _merge_per_expert_entries(module: CifarExpertStages, state_dict: dict, prefix: str, *_: Any) -> None:
    """Load a per-expert checkpoint (``{prefix}{k}.layer2.0.conv1.weight``, k < K): expert k's tensor becomes
    rows k·C … (k+1)·C − 1 of the batched one; the BatchNorm batch counters are equal, the first is kept."""
    for name in (*dict(module.named_parameters()), *dict(module.named_buffers())):
        keys = [f"{prefix}{expert}.{name}" for expert in range(module.num_experts)]
        if prefix + name in state_dict or not all(key in state_dict for key in keys):
            continue
        parts = [state_dict.pop(key) for key in keys]
        state_dict[prefix + name] = parts[0] if name.endswith("num_batches_tracked") else torch.cat(parts)


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
