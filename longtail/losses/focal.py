"""Focal loss, Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.

    FL(p_t) = -(1 - p_t)^gamma * log p_t,   p_t = softmax(z)_y

gamma = 0 is cross-entropy. The paper's alpha_t is the per-class ``weight`` (class-balanced weights in
``class_balanced``, DRW weights here). Soft (B, C) targets q use -sum_c q_c (1 - p_c)^gamma log p_c.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from longtail.errors import LongtailError
from longtail.losses.base import LongtailLoss, check_reduction, is_soft, reduce_weighted
from longtail.losses.registry import register_loss

if TYPE_CHECKING:
    from longtail.models.output import ModelOutput


def _focal_terms(log_probs: torch.Tensor, gamma: float) -> torch.Tensor:
    if gamma == 0:
        return -log_probs
    # 1 - p from log p without cancellation; clamped so that (1 - p)^gamma has a finite gradient for gamma < 1.
    one_minus_p = (-torch.expm1(log_probs)).clamp_min(torch.finfo(log_probs.dtype).tiny)
    return -one_minus_p.pow(gamma) * log_probs


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    reduction: str = "weighted_mean",
) -> torch.Tensor:
    """Focal loss of ``logits`` (B, C) for (B,) class indices or (B, C) probabilities.

    ``weight`` (C,) multiplies each sample's loss by its class weight; ``reduction`` as in
    ``longtail.losses.base.reduce_weighted``. With gamma = 0 this equals ``F.cross_entropy`` (same weight).
    """
    check_reduction(reduction)
    log_probs = logits.log_softmax(dim=-1)
    if is_soft(targets):
        terms = _focal_terms(log_probs, gamma) * targets
        if weight is not None:
            terms = terms * weight
        per_sample = terms.sum(dim=-1)
    else:
        per_sample = _focal_terms(log_probs.gather(1, targets[:, None]).squeeze(1), gamma)
        if weight is not None:
            per_sample = per_sample * weight[targets]
    return reduce_weighted(per_sample, targets, weight, reduction)


@register_loss("focal")
class FocalLoss(LongtailLoss):
    """Focal loss on ``output.logits``; ``drw_epoch`` turns on class-balanced re-weighting (DRW)."""

    epoch_args = ("drw_epoch",)  # budget=E scales these options with the schedule

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        gamma: float = 2.0,
        drw_epoch: int | None = None,
        beta: float = 0.9999,
        reduction: str = "weighted_mean",
    ) -> None:
        super().__init__(class_counts, drw_epoch=drw_epoch, beta=beta, reduction=reduction)
        if gamma < 0:
            raise LongtailError(f"focal gamma must be >= 0, got {gamma}.")
        self.gamma = gamma

    def forward(self, output: ModelOutput, targets: torch.Tensor) -> torch.Tensor:
        self.check_inputs(output.logits, targets)
        return focal_loss(output.logits, targets, self.gamma, self.weights_like(output.logits), self.reduction)
