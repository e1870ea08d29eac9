"""Logit adjustment, Menon et al., "Long-Tail Learning via Logit Adjustment", ICLR 2021.

    loss:      CE(z + tau * log pi, y)               (eq. 10, the logit-adjusted loss)
    post hoc:  argmax_c  z_c - tau * log pi_c        (eq. 9, applied to a model trained with plain CE)

pi_c = n_c / sum_k n_k is the training label distribution; the paper uses tau = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from longtail.losses.base import LongtailLoss
from longtail.losses.registry import register_loss
from longtail.losses.weights import check_class_counts, log_class_prior

if TYPE_CHECKING:
    from longtail.models.output import ModelOutput


def logit_adjusted_loss(
    logits: torch.Tensor, targets: torch.Tensor, log_prior: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """CE(logits + tau * log_prior) for (B,) class indices or (B, C) probabilities."""
    return F.cross_entropy(logits + tau * log_prior.to(logits), targets)


def posthoc_logit_adjust(
    logits: torch.Tensor, class_counts: Sequence[int] | torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """Post-hoc logit adjustment: ``logits - tau * log pi`` with pi the training class distribution."""
    return logits - tau * log_class_prior(check_class_counts(class_counts), torch.float64).to(logits)


@register_loss("logit_adjustment")
class LogitAdjustmentLoss(LongtailLoss):
    """Logit-adjusted cross-entropy on ``output.logits``."""

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, tau: float = 1.0) -> None:
        super().__init__(class_counts)
        self.tau = tau
        self.register_buffer("log_prior", log_class_prior(self.class_counts, torch.float64), persistent=False)

    def forward(self, output: ModelOutput, targets: torch.Tensor) -> torch.Tensor:
        self.check_inputs(output.logits, targets)
        return logit_adjusted_loss(output.logits, targets, self.log_prior, self.tau)
