"""RIDE: Routing Diverse Distribution-Aware Experts (the losses).

Paper: Xudong Wang, Long Lian, Zhongqi Miao, Ziwei Liu, Stella X. Yu, "Long-tailed Recognition by Routing
Diverse Distribution-Aware Experts", ICLR 2021 (arXiv 2010.01809). Official code:
frank-xwang/RIDE-LongTailRecognition (``model/loss.py``: ``RIDELoss``, ``RIDELossWithDistill``).

Symbols (as in the code below): ``z_k`` = ``expert_logits[k]`` (B, C), already multiplied by the cosine scale
``s``; ``z̄ = mean_k z_k``; ``y`` = targets; ``n_c`` = ``class_counts``; ``m_c`` = LDAM margins
(``m_c ∝ n_c^(-1/4)``, the rarest class gets ``max_m``); ``w`` = class-balanced effective-number weights
(beta 0.9999, summing to C), only from the DRW epoch on; ``λ`` = ``diversity_factor``; ``α`` =
``reweight_factor``.

RIDE loss (``ride``)::

    d_c  = C·π_c·α + 1 − α,  d ← d / max(d)                π_c = n_c / Σ n
    T_c  = T_base · d_c  after DRW,  T_base before;       T̄ = mean_c T_c
    P    = softmax(z̄ / T)                                 (a constant: no gradient flows through P)
    L    = Σ_k [ base_loss_factor · CE_w(z_k − s·m_y·1_y, y) + λ · T̄² · KL(P ‖ softmax(z_k / T)) ]

The KL is averaged over the batch (``batchmean``) and the loss is summed, not averaged, over experts. λ is
negative on CIFAR (−0.45): each expert is pushed away from the ensemble. DRW is active for 0-based epochs
``epoch >= drw_epoch``, which is the official 1-based ``epoch > reweight_epoch``.

Distillation (loss ``ride_distill``, i.e. ``ride`` with ``distill_factor=1``) adds, with the teacher's logits
``z_T`` read from ``output.aux['teacher_logits']`` (the engine fills it)::

    L_distill = L + distill_factor · T_d² · KL(softmax(z_T / T_d) ‖ softmax(z̄ / T_d)),   T_d = 1.5

Where the official code differs from the paper, and what this module does:

* With ``diversity_factor == 0`` the official loss silently feeds ``z̄`` instead of ``z_k`` to each expert's
  LDAM term (a different, "collaborative" loss; RIDE issue #7). This module always uses ``z_k``; the official
  behaviour is the option ``official_zero_diversity=True``.
* The ``T̄²`` factor is not in the paper (RIDE issue #5: folded into λ); it is part of the formula above.
* ``RIDELossWithDistill`` loops over the experts and adds the whole RIDE loss and the distillation term once
  per expert, so its loss is K times the formula above. Option ``official_distill_repeat=True`` reproduces
  that scaling (it matters with SGD weight decay and gradient clipping).

Model output: ``expert_logits`` (K, B, C) is required; ``output.logits`` is not read (``z̄`` is the mean of the
expert logits, built in the graph).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from longtail.errors import LongtailError
from longtail.losses.base import LongtailLoss
from longtail.losses.ldam import ldam_margin_logits
from longtail.losses.registry import register_loss
from longtail.losses.weights import ldam_margins
from longtail.models.output import ModelOutput


@dataclass(frozen=True)
class RideTerms:
    """The RIDE loss and its per-expert parts: ``expert_ce`` (weighted LDAM CE, before ``base_loss_factor``)
    and ``expert_kl`` (KL to the ensemble, before ``λ·T̄²``), both of shape (K,)."""

    loss: Tensor
    expert_ce: Tensor
    expert_kl: Tensor


def diversity_weights(class_counts: Sequence[int] | Tensor, reweight_factor: float) -> Tensor:
    """``d_c = C·π_c·α + 1 − α`` scaled so that ``max d = 1`` (float64)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    prior = counts / counts.sum()
    weights = len(counts) * prior * reweight_factor + 1.0 - reweight_factor
    weights = weights / weights.max()
    if not bool((weights > 0).all()):
        raise LongtailError(
            f"RIDE reweight_factor={reweight_factor} makes some diversity temperatures non-positive; "
            "use a smaller reweight_factor (0.05 on CIFAR, 0.02 on ImageNet-LT)."
        )
    return weights


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


def ride_loss_terms(
    expert_logits: Tensor,
    targets: Tensor,
    margins: Tensor,
    scale: float,
    temperature: Tensor,
    diversity_factor: float,
    class_weights: Tensor | None = None,
    base_loss_factor: float = 1.0,
    ce_on_mean_logits: bool = False,
) -> RideTerms:
    """The RIDE loss of ``expert_logits`` (K, B, C) with per-class ``temperature`` (C,) (see module doc).

    ``ce_on_mean_logits`` feeds ``z̄`` to every expert's LDAM term (the official code's λ = 0 behaviour).
    """
    mean_logits = expert_logits.mean(0)
    num_experts, batch, num_classes = expert_logits.shape
    ce_logits = mean_logits.expand_as(expert_logits) if ce_on_mean_logits else expert_logits
    ldam_logits = ldam_margin_logits(ce_logits.reshape(-1, num_classes), targets.repeat(num_experts), margins, scale)
    expert_ce = expert_cross_entropy(ldam_logits.view_as(expert_logits), targets, class_weights)

    with torch.no_grad():
        ensemble = F.softmax(mean_logits / temperature, dim=-1)
    expert_log_probs = F.log_softmax(expert_logits / temperature, dim=-1)
    expert_kl = F.kl_div(expert_log_probs, ensemble.expand_as(expert_log_probs), reduction="none").sum((1, 2)) / batch

    mean_temperature = temperature.mean()
    diversity_scale = diversity_factor * mean_temperature * mean_temperature
    loss = (base_loss_factor * expert_ce + diversity_scale * expert_kl).sum()
    return RideTerms(loss=loss, expert_ce=expert_ce, expert_kl=expert_kl)


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, batch mean; the teacher gets no gradient."""
    teacher_probs = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    return temperature * temperature * F.kl_div(student_log_probs, teacher_probs, reduction="batchmean")


def loss_dtype(tensor: Tensor) -> Tensor:
    """Losses run in float32 at least (bf16/fp16 logits from autocast are upcast), float64 stays float64."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def require_expert_logits(output: ModelOutput, loss_name: str) -> Tensor:
    if output.expert_logits is None:
        raise LongtailError(
            f"Loss '{loss_name}' needs a multi-expert model (ModelOutput.expert_logits is None); "
            "pick a multi-expert model such as the RIDE ResNet-32."
        )
    return loss_dtype(output.expert_logits)


def require_class_targets(targets: Tensor, loss_name: str) -> Tensor:
    if targets.dim() != 1 or targets.is_floating_point():
        raise LongtailError(
            f"Loss '{loss_name}' needs integer class targets of shape (B,), got {tuple(targets.shape)} "
            f"{targets.dtype}; switch Mixup/CutMix off for this method."
        )
    return targets


@register_loss("ride")
class RIDELoss(LongtailLoss):
    """RIDE's per-expert LDAM-DRW loss plus the distribution-aware diversity term, and with
    ``distill_factor > 0`` the distillation term (see module doc)."""

    def __init__(
        self,
        class_counts: Sequence[int],
        max_m: float = 0.5,
        s: float = 30.0,
        drw_epoch: int | None = 160,
        beta: float = 0.9999,
        base_temperature: float = 1.0,
        diversity_factor: float = -0.45,
        reweight_factor: float = 0.05,
        base_loss_factor: float = 1.0,
        official_zero_diversity: bool = False,
        distill_factor: float = 0.0,
        distill_temperature: float = 1.5,
        official_distill_repeat: bool = False,
    ) -> None:
        super().__init__(class_counts, drw_epoch=drw_epoch, beta=beta)
        self.scale = s
        self.base_temperature = base_temperature
        self.diversity_factor = diversity_factor
        self.base_loss_factor = base_loss_factor
        self.ce_on_mean_logits = official_zero_diversity and diversity_factor == 0
        self.distill_factor = distill_factor
        self.distill_temperature = distill_temperature
        self.official_distill_repeat = official_distill_repeat
        margins = ldam_margins(self.class_counts, max_m, dtype=torch.float64)
        self.register_buffer("margins", margins, persistent=False)
        weights = diversity_weights(self.class_counts, reweight_factor)
        self.register_buffer("diversity_weights", weights, persistent=False)

    def temperatures(self) -> Tensor:
        """Per-class diversity temperatures ``T_c`` (C,) for the current epoch (float64): per class from
        ``drw_epoch`` on, ``base_temperature`` before."""
        if self.class_weights() is not None:
            return self.base_temperature * self.diversity_weights
        return torch.full_like(self.diversity_weights, self.base_temperature)

    def ride_terms(self, expert_logits: Tensor, targets: Tensor) -> RideTerms:
        weights = self.class_weights()
        return ride_loss_terms(
            expert_logits,
            targets,
            self.margins.to(expert_logits),
            self.scale,
            self.temperatures().to(expert_logits),
            self.diversity_factor,
            class_weights=None if weights is None else weights.to(expert_logits),
            base_loss_factor=self.base_loss_factor,
            ce_on_mean_logits=self.ce_on_mean_logits,
        )

    def forward(self, output: ModelOutput, targets: Tensor) -> Tensor:
        expert_logits = require_expert_logits(output, "ride")
        terms = self.ride_terms(expert_logits, require_class_targets(targets, "ride"))
        mean_temperature = self.temperatures().mean()
        self.parts = {
            "ldam_ce": (self.base_loss_factor * terms.expert_ce.sum()).detach(),
            "diversity": (self.diversity_factor * mean_temperature**2 * terms.expert_kl.sum()).detach(),
        }
        if self.distill_factor == 0:
            return terms.loss
        distill = self.distill_factor * distillation_kl(
            expert_logits.mean(0), self._teacher_logits(output), self.distill_temperature
        )
        self.parts["distill"] = distill.detach()
        loss = terms.loss + distill
        return loss * expert_logits.shape[0] if self.official_distill_repeat else loss

    @staticmethod
    def _teacher_logits(output: ModelOutput) -> Tensor:
        teacher_logits = output.aux.get("teacher_logits")
        if teacher_logits is None:
            raise LongtailError(
                "RIDE distillation needs the teacher's logits in output.aux['teacher_logits']; give the method "
                "a teacher checkpoint, or use loss 'ride' (distill_factor=0)."
            )
        return loss_dtype(teacher_logits)


# RIDE with distillation from a teacher: the same loss with distill_factor = 1 by default.
register_loss("ride_distill")(functools.partial(RIDELoss, distill_factor=1.0))
