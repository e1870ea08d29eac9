"""LDAM loss with deferred re-weighting, Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware
Margin Loss", NeurIPS 2019.

    m_c = C' / n_c^(1/4),  C' chosen so that max_c m_c = max_m
    L_LDAM(z, y) = CE(s * (z - m_y * onehot(y)), y)              (z: cosine logits, ``scaled_logits=False``)

Cosine heads in this library (as in RIDE's ``NormedLinear`` times s) already return s * cos, so by default the
loss receives z = s * cos and computes the same quantity as CE(z - s * m_y * onehot(y), y)
(``scaled_logits=True``, RIDE's ``LDAMLoss``). With a linear head, as in the LDAM-DRW paper's code,
``scaled_logits=False`` multiplies the margin logits by s.

DRW: from 0-based epoch ``drw_epoch`` on, the cross-entropy is weighted by the class-balanced weights
(effective number, beta = 0.9999) and averaged as ``F.cross_entropy(weight=w)`` does, sum_i w_{y_i} l_i /
sum_i w_{y_i}, as in the official code. The paper's recipe re-weights from epoch 160 of 200 (``drw_epoch=160``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from longtail.errors import LongtailError
from longtail.losses.base import LongtailLoss, is_soft, weighted_cross_entropy
from longtail.losses.registry import register_loss
from longtail.losses.weights import ldam_margins

if TYPE_CHECKING:
    from longtail.models.output import ModelOutput


def ldam_margin_logits(
    logits: torch.Tensor, targets: torch.Tensor, margins: torch.Tensor, s: float = 30.0, scaled_logits: bool = True
) -> torch.Tensor:
    """The logits that enter the cross-entropy: the target logit lowered by its class margin.

    ``scaled_logits=True``: z - s * m_y * onehot(y) (z already multiplied by s);
    ``scaled_logits=False``: s * (z - m_y * onehot(y)).
    """
    margin = margins.to(logits)[targets]
    if scaled_logits:
        return logits.scatter_add(1, targets[:, None], (-s * margin)[:, None])
    return s * logits.scatter_add(1, targets[:, None], (-margin)[:, None])


def ldam_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    margins: torch.Tensor,
    s: float = 30.0,
    weight: torch.Tensor | None = None,
    scaled_logits: bool = True,
) -> torch.Tensor:
    """LDAM loss of ``logits`` (B, C) for class indices ``targets`` (B,), with per-class ``margins`` (C,).

    ``weight`` (C,) gives the DRW weighted cross-entropy (PyTorch's weighted mean).
    """
    return weighted_cross_entropy(ldam_margin_logits(logits, targets, margins, s, scaled_logits), targets, weight)


@register_loss("ldam")
class LDAMLoss(LongtailLoss):
    """LDAM(-DRW) on ``output.logits``. ``drw_epoch=None`` is plain LDAM; LDAM-DRW sets e.g. ``drw_epoch=160``."""

    epoch_args = ("drw_epoch",)  # budget=E scales these options with the schedule

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        max_m: float = 0.5,
        s: float = 30.0,
        drw_epoch: int | None = None,
        beta: float = 0.9999,
        scaled_logits: bool = True,
    ) -> None:
        super().__init__(class_counts, drw_epoch=drw_epoch, beta=beta)
        if max_m <= 0 or s <= 0:
            raise LongtailError(f"ldam needs max_m > 0 and s > 0, got max_m={max_m}, s={s}.")
        self.register_buffer("margins", ldam_margins(self.class_counts, max_m, torch.float64), persistent=False)
        self.max_m = max_m
        self.s = s
        self.scaled_logits = scaled_logits

    def margin_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ldam_margin_logits(logits, targets, self.margins, self.s, self.scaled_logits)

    def forward(self, output: ModelOutput, targets: torch.Tensor) -> torch.Tensor:
        self.check_inputs(output.logits, targets)
        if is_soft(targets):
            raise LongtailError(
                "ldam needs (B,) class-index targets because its margin belongs to one class; "
                "turn off Mixup/CutMix or use a loss that accepts soft targets (ce, focal, balanced_softmax)."
            )
        margin_logits = self.margin_logits(output.logits, targets)
        return weighted_cross_entropy(margin_logits, targets, self.weights_like(output.logits))
