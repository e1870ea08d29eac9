"""Balanced Softmax, Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020.

    p_c = n_c exp(z_c) / sum_k n_k exp(z_k),   loss = CE(z + log n, y)

Adding log n_c or log pi_c = log(n_c / N) gives the same softmax; this equals the logit-adjusted loss with
tau = 1. At test time the plain logits z are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from longtail.losses.base import LongtailLoss
from longtail.losses.registry import register_loss

if TYPE_CHECKING:
    from longtail.models.output import ModelOutput


def balanced_softmax_loss(logits: torch.Tensor, targets: torch.Tensor, class_counts: torch.Tensor) -> torch.Tensor:
    """CE(logits + log n_c) for (B,) class indices or (B, C) probabilities."""
    return F.cross_entropy(logits + class_counts.to(logits).log(), targets)


@register_loss("balanced_softmax")
class BalancedSoftmaxLoss(LongtailLoss):
    """Balanced Softmax cross-entropy on ``output.logits``."""

    def __init__(self, class_counts: Sequence[int] | torch.Tensor) -> None:
        super().__init__(class_counts)

    def forward(self, output: ModelOutput, targets: torch.Tensor) -> torch.Tensor:
        self.check_inputs(output.logits, targets)
        return balanced_softmax_loss(output.logits, targets, self.class_counts)
