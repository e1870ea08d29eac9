"""DeiT-LT: distillation from a CNN teacher for vision transformers on long-tailed data (the loss).

Paper: Harsh Rangwani, Pradipto Mondal, Mayank Mishra, Ashish Ramayee Asokan, R. Venkatesh Babu, "DeiT-LT:
Distillation Strikes Back for Vision Transformer Training on Long-Tailed Datasets", CVPR 2024. Official code:
val-iisc/DeiT-LT (``losses.py``: ``DistillationLoss``; ``main.py``: the DRW switch and the class weights).

Model output: the student (a ViT with a CLS and a DIST token) puts its two heads' logits in
``output.aux['cls_logits']`` and ``output.aux['dist_logits']`` (B, C); the engine runs the teacher on the
student's own augmented (mixed) batch and puts its logits in ``output.aux['teacher_logits']`` (B, C). The
teacher's logits are treated as constants. Targets are (B,) class indices, or (B, C) soft Mixup/CutMix targets.

Symbols (as in the code below): ``z_cls``, ``z_dist``, ``z_T`` the logits above; ``ỹ`` the (soft) targets;
``t = argmax_c z_T`` the teacher's hard label; ``w`` the class-balanced effective-number weights (beta 0.9999,
summing to C), active for 0-based epochs ``epoch >= drw_epoch``; ``α`` = ``alpha`` (0.5)::

    base = CE(z_cls, ỹ)                  soft-target CE  mean_b(−Σ_c ỹ log softmax(z_cls)) for soft targets;
                                         CE_w with ``weighted_base`` during DRW
    dist = CE_w(z_dist, t)               hard distillation; weighted by w during DRW (``weighted_distillation``)
         | τ² · Σ_{b,c} p_T (log p_T − log softmax(z_dist/τ)) / (B·C),  p_T = softmax(z_T/τ)   (soft, DeiT's)
    L    = (1 − α) · base + α · dist

``CE_w`` is the weighted mean ``Σ_i w_{t_i} CE_i / Σ_i w_{t_i}`` (PyTorch ``weight=``; with soft targets PyTorch
weights each class term and divides by B); ``parts['cls']`` and
``parts['dist']`` are the α-weighted terms, which sum to the loss.

Where the official code differs from the paper, and what this module does:

* Without ``--drw``, ``main.py`` wraps the distillation flag in a 1-tuple, which is always truthy, so the
  distillation CE is class-weighted from the first epoch. Option ``official_always_weighted=True`` reproduces
  it; by default the distillation is weighted only during DRW.
* Its (unexercised) weighted soft distillation multiplies the teacher's log-probabilities by the weights;
  this module does not weight soft distillation and says so if asked to.
* Turning Mixup/CutMix off during DRW (``--no-mixup-drw``) is the data loader's job: the loss uses the soft
  targets it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from longtail.errors import LongtailError
from longtail.losses.base import LongtailLoss
from longtail.losses.registry import register_loss
from longtail.methods.ride import loss_dtype
from longtail.models.output import ModelOutput

Distillation = Literal["hard", "soft"]


@dataclass(frozen=True)
class DeiTLTTerms:
    """The loss and its α-weighted parts ``cls_part = (1 − α)·base`` and ``dist_part = α·dist``."""

    loss: Tensor
    cls_part: Tensor
    dist_part: Tensor


def soft_distillation_kl(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """DeiT's soft distillation: ``τ²·KL(softmax(z_T/τ) ‖ softmax(z/τ))`` summed and divided by ``B·C``."""
    teacher_log_probs = F.log_softmax(teacher_logits / tau, dim=-1)
    student_log_probs = F.log_softmax(student_logits / tau, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="sum", log_target=True)
    return kl * tau * tau / student_logits.numel()


def deit_lt_loss_terms(
    cls_logits: Tensor,
    dist_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    alpha: float = 0.5,
    distillation: Distillation = "hard",
    tau: float = 1.0,
    base_weights: Tensor | None = None,
    distillation_weights: Tensor | None = None,
) -> DeiTLTTerms:
    """DeiT-LT loss (see module doc); ``targets`` are class indices (B,) or soft targets (B, C)."""
    teacher_logits = teacher_logits.detach()
    base = F.cross_entropy(cls_logits, targets, weight=base_weights)
    if distillation == "hard":
        dist = F.cross_entropy(dist_logits, teacher_logits.argmax(-1), weight=distillation_weights)
    elif distillation == "soft":
        if distillation_weights is not None:
            raise LongtailError(
                "DeiT-LT soft distillation is not class-weighted; use distillation='hard' or "
                "weighted_distillation=False (and official_always_weighted=False)."
            )
        dist = soft_distillation_kl(dist_logits, teacher_logits, tau)
    else:
        raise LongtailError(f"DeiT-LT distillation must be 'hard' or 'soft', got '{distillation}'.")
    cls_part = (1.0 - alpha) * base
    dist_part = alpha * dist
    return DeiTLTTerms(loss=cls_part + dist_part, cls_part=cls_part, dist_part=dist_part)


def _require_aux(output: ModelOutput, key: str, producer: str) -> Tensor:
    value = output.aux.get(key)
    if value is None:
        raise LongtailError(
            f"Loss 'deit_lt' needs output.aux['{key}'] ({producer}); use a distilled ViT student "
            "and give the method a teacher checkpoint."
        )
    return loss_dtype(value)


@register_loss("deit_lt")
class DeiTLTLoss(LongtailLoss):
    """DeiT-LT: CE on the CLS head plus (DRW-weighted) distillation from a CNN teacher on the DIST head."""

    def __init__(
        self,
        class_counts: Sequence[int],
        alpha: float = 0.5,
        distillation: Distillation = "hard",
        tau: float = 1.0,
        drw_epoch: int | None = None,
        beta: float = 0.9999,
        weighted_distillation: bool = True,
        weighted_base: bool = False,
        official_always_weighted: bool = False,
    ) -> None:
        super().__init__(class_counts, drw_epoch=drw_epoch, beta=beta)
        if distillation not in ("hard", "soft"):
            raise LongtailError(f"DeiT-LT distillation must be 'hard' or 'soft', got '{distillation}'.")
        weighted_soft = distillation == "soft" and (
            official_always_weighted or (drw_epoch is not None and weighted_distillation)
        )
        if weighted_soft:
            raise LongtailError(
                "DeiT-LT soft distillation is not class-weighted; set weighted_distillation=False "
                "(and official_always_weighted=False), or use distillation='hard'."
            )
        self.alpha = alpha
        self.distillation = distillation
        self.tau = tau
        self.weighted_distillation = weighted_distillation
        self.weighted_base = weighted_base
        self.official_always_weighted = official_always_weighted

    def weights_for(self, logits: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """The class weights of the (base, distillation) cross-entropies for the current epoch, in the dtype
        and on the device of ``logits``."""
        weights = self.balanced_weights.to(logits)
        drw_active = self.class_weights() is not None
        weight_distillation = self.official_always_weighted or (drw_active and self.weighted_distillation)
        weight_base = drw_active and self.weighted_base
        return (weights if weight_base else None), (weights if weight_distillation else None)

    def forward(self, output: ModelOutput, targets: Tensor) -> Tensor:
        cls_logits = _require_aux(output, "cls_logits", "the student's CLS-token head")
        dist_logits = _require_aux(output, "dist_logits", "the student's DIST-token head")
        teacher_logits = _require_aux(output, "teacher_logits", "the engine fills it from the teacher")
        base_weights, distillation_weights = self.weights_for(cls_logits)
        terms = deit_lt_loss_terms(
            cls_logits,
            dist_logits,
            teacher_logits,
            targets.to(cls_logits) if targets.is_floating_point() else targets,
            self.alpha,
            self.distillation,
            self.tau,
            base_weights,
            distillation_weights,
        )
        self.parts = {"cls": terms.cls_part.detach(), "dist": terms.dist_part.detach()}
        return terms.loss
