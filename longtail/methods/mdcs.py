"""MDCS: More Diverse experts with Consistency Self-distillation (the loss).

Paper: Qihao Zhao, Chen Jiang, Wei Hu, Fan Zhang, Jun Liu, "MDCS: More Diverse Experts with Consistency
Self-distillation for Long-tailed Recognition", ICCV 2023. Official code: fistyee/MDCS (``model/loss.py``:
``MDCSLoss``; ``trainer/trainer.py`` builds the two-view batch).

Two-view batches: the model is run on ``cat([weak, strong])``, so ``output.expert_logits`` is (K, 2B, C) with
rows ``[weak view; strong view]`` (row ``i`` and row ``B + i`` are two views of image ``i``); ``targets`` is
(B,), the labels of the B images, and is used for both views. A single-view batch is an error.

Symbols (as in the code below): ``z_k`` = logits of expert k; ``n_c`` = ``class_counts``; ``λ_k`` =
``expert_exponents[k]`` (default (−0.5, 1, 2.5): head-, balanced- and tail-biased experts); ``τ`` =
``temperature``; ``w`` = ``consistency_weight``::

    ẑ_k     = z_k + a_k,   a_k,c = λ_k · log n_c                           (all 2B rows)
    DL      = Σ_k CE(ẑ_k, [y; y])                                          (mean over the 2B rows)
    S_k     = { i < B : argmax_c ẑ_k[i] = y_i }                            (confident instance sampling)
    KL_k    = (1/|S_k|) Σ_{i∈S_k} KL( softmax(ẑ_k[i]/τ) ‖ softmax(ẑ_k[B+i]/τ) ),  0 when S_k is empty
    CS      = Σ_k KL_k                                                     (the weak-view target is detached)
    ramp    = min((epoch + 1) / ramp_epochs, 1)                            (0-based epoch; ramp_epochs = 20)
    L       = DL + w · ramp · CS,   w = 0.6

Normalising the counts to a prior (``log π`` instead of ``log n``) shifts every row of ``ẑ_k`` by a constant,
which changes neither the softmax nor the argmax, so the two are the same loss.

Where the official code differs from the paper, and what this module does:

* The official adjustment is ``a_k,c = log(n_c^λ_k + 1e-9)``, not ``λ_k · log n_c``; the difference is
  about ``1e-9 / n_c^λ_k`` per logit (7e-8 for λ = −0.5 and n = 5000). Default ``log_prior='exact'``;
  ``log_prior='official'`` is the official formula.
* The configured ``tau`` (2) is stored but never used: the official temperature is 1, the default here.
  With ``temperature != 1`` both softmaxes of the KL are divided by τ (no τ² factor).
* DRW weights are computed but never applied (and are not here); the weight 0.6, the 20-epoch ramp (1-based
  ``epoch / 20`` == 0-based ``(epoch + 1) / 20``) and the exponents are hard-coded there, options here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from longtail.errors import LongtailError
from longtail.losses.base import LongtailLoss
from longtail.losses.registry import register_loss
from longtail.methods.ride import expert_cross_entropy, require_class_targets, require_expert_logits
from longtail.models.output import ModelOutput

LogPrior = Literal["exact", "official"]


@dataclass(frozen=True)
class MDCSTerms:
    """The MDCS loss, its per-expert parts (K,) and the confident-instance mask (K, B)."""

    loss: Tensor
    expert_ce: Tensor
    expert_consistency_kl: Tensor
    confident: Tensor


def logit_adjustment(
    class_counts: Sequence[int] | Tensor, expert_exponents: Sequence[float], log_prior: LogPrior = "exact"
) -> Tensor:
    """Per-expert additive logit adjustment ``a`` (K, C), float64 (see module doc)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    exponents = torch.as_tensor(expert_exponents, dtype=torch.float64).unsqueeze(1)
    if log_prior == "exact":
        return exponents * counts.log()
    if log_prior == "official":
        return torch.log(counts.pow(exponents) + 1e-9)
    raise LongtailError(f"MDCS log_prior must be 'exact' or 'official', got '{log_prior}'.")


def consistency_ramp(epoch: int, ramp_epochs: int) -> float:
    """Linear warm-up of the consistency weight over the first ``ramp_epochs`` (0-based) epochs."""
    return min((epoch + 1) / ramp_epochs, 1.0)


def mdcs_loss_terms(
    weak_logits: Tensor,
    strong_logits: Tensor,
    targets: Tensor,
    adjustment: Tensor,
    consistency_scale: float,
    temperature: float = 1.0,
) -> MDCSTerms:
    """MDCS loss of raw expert logits for both views, (K, B, C) each; ``consistency_scale`` = w · ramp."""
    adjusted_weak = weak_logits + adjustment.unsqueeze(1)
    adjusted_strong = strong_logits + adjustment.unsqueeze(1)
    both_views = torch.cat([adjusted_weak, adjusted_strong], dim=1)
    expert_ce = expert_cross_entropy(both_views, torch.cat([targets, targets]))

    confident = adjusted_weak.argmax(-1) == targets
    teacher = F.softmax(adjusted_weak.detach() / temperature, dim=-1)
    student_log_probs = F.log_softmax(adjusted_strong / temperature, dim=-1)
    per_sample_kl = F.kl_div(student_log_probs, teacher, reduction="none").sum(-1)
    mask = confident.to(per_sample_kl.dtype)
    expert_kl = (per_sample_kl * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)

    loss = expert_ce.sum() + consistency_scale * expert_kl.sum()
    return MDCSTerms(loss=loss, expert_ce=expert_ce, expert_consistency_kl=expert_kl, confident=confident)


@register_loss("mdcs")
class MDCSLoss(LongtailLoss):
    """MDCS diversity loss plus consistency self-distillation with confident instance sampling."""

    def __init__(
        self,
        class_counts: Sequence[int],
        expert_exponents: Sequence[float] = (-0.5, 1.0, 2.5),
        consistency_weight: float = 0.6,
        ramp_epochs: int = 20,
        temperature: float = 1.0,
        log_prior: LogPrior = "exact",
    ) -> None:
        super().__init__(class_counts)
        if ramp_epochs < 1:
            raise LongtailError(f"MDCS ramp_epochs must be at least 1, got {ramp_epochs}.")
        self.consistency_weight = consistency_weight
        self.ramp_epochs = ramp_epochs
        self.temperature = temperature
        adjustment = logit_adjustment(self.class_counts, expert_exponents, log_prior)
        self.register_buffer("adjustment", adjustment, persistent=False)

    def consistency_scale(self) -> float:
        """``w · ramp`` for the current (0-based) epoch."""
        return self.consistency_weight * consistency_ramp(self.epoch, self.ramp_epochs)

    def forward(self, output: ModelOutput, targets: Tensor) -> Tensor:
        expert_logits = require_expert_logits(output, "mdcs")
        targets = require_class_targets(targets, "mdcs")
        weak_logits, strong_logits = self._split_views(expert_logits, targets)
        terms = mdcs_loss_terms(
            weak_logits,
            strong_logits,
            targets,
            self.adjustment.to(expert_logits),
            self.consistency_scale(),
            self.temperature,
        )
        self.parts = {
            "diversity": terms.expert_ce.sum().detach(),
            "consistency": (self.consistency_scale() * terms.expert_consistency_kl.sum()).detach(),
            "confident_fraction": terms.confident.float().mean(),
        }
        return terms.loss

    def _split_views(self, expert_logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        num_experts, rows, _ = expert_logits.shape
        if num_experts != self.adjustment.shape[0]:
            raise LongtailError(
                f"MDCS has {self.adjustment.shape[0]} expert_exponents but the model has {num_experts} experts; "
                "give one exponent per expert."
            )
        if rows != 2 * targets.shape[0]:
            raise LongtailError(
                f"MDCS needs two views per image: expected {2 * targets.shape[0]} logit rows [weak; strong] for "
                f"{targets.shape[0]} targets, got {rows}; create the loader with two_views=True."
            )
        return expert_logits.chunk(2, dim=1)
