"""Helpers of the multi-expert losses (RIDE, MDCS, SHIKE): per-expert cross-entropy and checked expert logits."""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor

from longtail.errors import LongtailError
from longtail.losses.base import loss_dtype
from longtail.models.output import ModelOutput


def weighted_mean(values: Tensor, targets: Tensor, class_weights: Tensor | None) -> Tensor:
    """Mean over the last axis, weighted by ``class_weights[targets]`` as ``F.cross_entropy(weight=...)``."""
    if class_weights is None:
        return values.mean(-1)
    sample_weights = class_weights[targets]
    return (values * sample_weights).sum(-1) / sample_weights.sum()


def expert_cross_entropy(logits: Tensor, targets: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Per-expert (weighted) cross-entropy of ``logits`` (K, B, C) against ``targets`` (B,), shape (K,)."""
    num_experts, batch, num_classes = logits.shape
    per_sample = F.cross_entropy(
        logits.reshape(-1, num_classes), targets.repeat(num_experts), reduction="none"
    ).view(num_experts, batch)
    return weighted_mean(per_sample, targets, class_weights)


def require_expert_logits(output: ModelOutput, loss_name: str) -> Tensor:
    if output.expert_logits is None:
        raise LongtailError(
            f"Loss '{loss_name}' needs a multi-expert model (ModelOutput.expert_logits is None); "
            "pick a multi-expert model such as the RIDE ResNet-32."
        )
    return loss_dtype(output.expert_logits)


def in_float32(output: ModelOutput) -> ModelOutput:
    """``output`` with float32 expert logits: under bf16 autocast a logit of 30 has a resolution of 0.125,
    coarser than the logit adjustment and the KL terms need."""
    if output.expert_logits is None:
        return output
    return dataclasses.replace(output, expert_logits=output.expert_logits.float())
