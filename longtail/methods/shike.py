"""SHIKE: Self-Heterogeneous Integration with Knowledge Excavation (the method and the losses of both stages).

Paper: Yan Jin, Mengke Li, Yang Lu, Yiu-ming Cheung, Hanzi Wang, "Long-Tailed Visual Recognition via
Self-Heterogeneous Integration with Knowledge Excavation", CVPR 2023. Official code: jinyan-06/SHIKE
(``cifarTrain.py``: ``mix_outputs``; ``utils.py``: ``soft_entropy``, ``CosineAnnealingLRWarmup``).

The method (``shike``):

* Model: a Depth-wise Knowledge Fusion network (``shike_resnet32``; ``shike_resnet50`` / ``_resnet152`` /
  ``_resnext50_32x4d``): expert k's feature is GAP(deep_k(F) ⊙ shallow_k(F_shallow)), its logits z_k come from a
  cosine head; the model carries a second, untrained head set (``retrain_heads=True``).
* Stage 1 (the run's main stage; the reference: 180 epochs): the whole model except the second head set
  trains with the stage-1 loss ``L_1`` below (loss ``shike``).
* Stage 2 (every later stage of the recipe, ``trainable: head``; the reference: the last 20 epochs):
  ``prepare_stage`` switches the model to the second head set (``select_heads('retrain')``, also replayed on
  resume and when a checkpoint is loaded), everything else is frozen (and in eval mode, so BatchNorm
  statistics stay fixed, and untouched by the optimiser), and the fresh heads train with Balanced Softmax
  ``L_2`` (loss ``shike`` with ``balanced: true``) on the same instance-balanced loader. Two method options
  reproduce the official stage 2 instead (see below): ``stage2_train_mode`` and ``stage2_decay_frozen``.
* Prediction: the mean of the active heads' logits, (1/K) Σ_k z_k (the model's ``logits``): the main heads
  after stage 1, the new heads after stage 2. During stage 2 the report also shows the main heads' mean as
  the head ``stage1`` (the frozen model's stage-1 prediction, from the same pass), so one report gives the
  accuracy before and after the head re-training.

Symbols (as in the code below): ``z_k`` = ``expert_logits[k]`` (B, C) (cosine logits, scale 30); ``Y`` (B, C)
= target distribution (one-hot of the integer targets, or soft targets as given); ``y`` = the target class
(argmax of ``Y``); ``n_c`` = ``class_counts``; ``D`` = the KL divisor (``B`` for ``kl_reduction='batchmean'``,
``B·C`` for ``'official'``); ``KL_D(p ‖ q) = (1/D) Σ_{b,c} p (log p − log q)``.

Stage 1 (Dynamic Knowledge Transfer)::

    z̄ = mean_k z_k,   M = max_k z_k                          (element-wise over experts)
    h = argmax_{c ≠ y} z̄_c                                   (hardest negative of the ensemble)
    r_c = z̄_h at c = h,   M_c at the other non-targets        (the transfer target)
    p̃_k = softmax of z_k over the non-target classes
    CE_k  = mean_b ( −Σ_c Y log softmax(z_k) )
    HNS_k = KL_D( softmax(r) ‖ p̃_k )                          (hardest negative suppression)
    MD_kj = KL_D( softmax(z_j) ‖ softmax(z_k) ),  j ≠ k       (mutual distillation)
    L_1 = Σ_k [ CE_k + hns_weight · HNS_k + mutual_weight · Σ_{j≠k} MD_kj ],   hns_weight = 10, mutual_weight = 1

Nothing is detached: gradients also flow through softmax(r) and through the mutual-distillation targets.

Stage 2 (``balanced=True``, the last 20 epochs: fresh heads on a frozen backbone; the model supplies the new
heads' logits as ``expert_logits``)::

    L_2 = Σ_k mean_b ( −Σ_c Y log softmax(z_k + log n) )      (Balanced Softmax)

Where the official code differs from the paper, and what this module does:

* Its ``F.kl_div`` calls (``cifarTrain.py`` lines 213-220) use the default ``reduction='mean'``, dividing by
  ``B·C`` instead of ``B``, which makes HNS and MD about C times weaker: their effective weights are
  ``hns_weight / C`` and ``mutual_weight / C`` (10/100 and 1/100 in the official CIFAR-100 setting). Default
  ``kl_reduction='batchmean'`` (per-sample KL averaged over the batch); ``kl_reduction='official'`` divides
  by ``B·C``.
* It does not exclude the target class from the transfer target: it builds the non-target distributions
  with a logit of −30 at the target for ``p̃_k`` but 0 for ``r`` (so softmax(r) keeps mass on the target), and
  with soft targets it masks by ``Y`` itself (``z ⊙ (1 − Y) − 30·Y``). Default ``dkt_target='paper'`` uses
  true softmaxes over the non-target classes ``c ≠ y``; ``dkt_target='official'`` is the official formula.

* Its CIFAR data keeps the first n_i images of each class (the shuffle is commented out): the recipes use
  ``data.selection: first``.
* Its stage 2 runs in ``model.train()`` (``cifarTrain.py`` line 237, every epoch; freezing at lines 133-137
  only clears ``requires_grad``): the frozen backbone's BatchNorm normalises with batch statistics and keeps
  updating its running averages, which the evaluation then uses. Here the frozen model runs in eval mode, as
  a frozen feature extractor should; method option ``stage2_train_mode: true`` gives the official behaviour.
* Its stage-2 SGD covers every parameter with weight decay 5e-4 (``optimizer_crt``, lines 103-104), and the
  frozen ones hold zero gradients, not ``None`` (stage 1 gave them ``.grad`` tensors; ``zero_grad()`` at line
  248 zeroes them under torch 1.11's default ``set_to_none=False``), so SGD keeps decaying the frozen
  backbone and the stage-1 heads: each step moves them by ``-lr · wd · p`` through the momentum buffer.
  Here frozen parameters are left alone; ``stage2_decay_frozen: true`` gives the official behaviour (they
  join the stage's optimiser, without an lr scale, with zero gradients).
* Its augmentation applies Cutout before normalisation (lines 29-36: the erased square is black, not the
  mean colour) and its ``CIFAR10Policy`` fills with grey 128 (``autoaugment.py`` lines 49, 91, 112; the
  library's AutoAugment fills with 0). The recipes keep the library's Cutout and policy;
  ``data.augment={policy: autoaugment, cutout: 16, cutout_fill: black, policy_fill: 128}`` gives the official
  ones (``longtail.data.augment``).

``method.args.stage2_train_mode=true method.args.stage2_decay_frozen=true`` with that ``data.augment`` trains
the official stage 2 and augmentation.

The recipes set ``kl_reduction: official`` and ``dkt_target: official``: the published numbers (56.3 on
CIFAR-100-LT IF 100) come from the official code, and with the paper's per-sample KL the weight-10 hardest
negative term dominates the cross-entropy (on a toy problem it keeps the training accuracy near 60% where
the official weighting fits it). ``loss.args.kl_reduction=batchmean loss.args.dkt_target=paper`` trains with
the paper's formulas.

Under the official reduction the effective weights ``10/C`` and ``1/C`` grow as C shrinks: copied to
CIFAR-10 (C = 10) they are 1 and 0.1, ten times the tuned setting's, and the hardest-negative term, which
pushes the largest wrong logits *up*, outweighs the cross-entropy (on a toy problem margins collapse to about
0 and balanced accuracy drops from 85 to 71). So every SHIKE recipe sets ``tuned_num_classes: 100`` (the
official code covers CIFAR-100 only): the weights are multiplied by C / 100 and every dataset trains with the
tuned effective weights 0.1 and 0.01 (the multipliers applied: hns 1 and mutual 0.1 at C = 10, 10 and 1 at
C = 100, 100 and 10 at C = 1000).

Model output: ``expert_logits`` (K, B, C); targets (B,) int64 (one-hot internally) or (B, C) soft targets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.config import RunConfig
from longtail.errors import LongtailError
from longtail.losses.base import LongtailLoss
from longtail.losses.experts import in_float32, require_expert_logits
from longtail.losses.registry import register_loss
from longtail.methods.base import Method, Stage, register_method
from longtail.methods.context import StepInfo
from longtail.models.base import unwrap
from longtail.models.output import ModelOutput

KLReduction = Literal["batchmean", "official"]
DKTTarget = Literal["paper", "official"]

# The official code's stand-in for "no logit": the lowest value of a cosine classifier with scale 30.
OFFICIAL_MASK_LOGIT = -30.0


@dataclass(frozen=True)
class ShikeStage1Terms:
    """The stage-1 loss and its parts: ``expert_ce`` (K,), ``hns_kl`` (K,) before ``hns_weight``, and
    ``mutual_kl`` (K, K) with ``mutual_kl[k, j] = MD_kj`` (zero diagonal) before ``mutual_weight``."""

    loss: Tensor
    expert_ce: Tensor
    hns_kl: Tensor
    mutual_kl: Tensor


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """``mean_b(−Σ_c Y log softmax(z))`` over the batch axis (−2); logits may carry leading expert axes."""
    return -(target_probs * F.log_softmax(logits, dim=-1)).sum(-1).mean(-1)


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LongtailError(f"SHIKE {option} must be one of {', '.join(choices)}; got '{value}'.")


def _kl_divisor(batch: int, num_classes: int, kl_reduction: KLReduction) -> int:
    _check_choice("kl_reduction", kl_reduction, ("batchmean", "official"))
    return batch * num_classes if kl_reduction == "official" else batch


def _official_hns_sums(expert_logits: Tensor, target_probs: Tensor) -> Tensor:
    non_target = 1.0 - target_probs
    mean_logits = expert_logits.mean(0)
    max_logits = expert_logits.amax(0)
    ranked = OFFICIAL_MASK_LOGIT * target_probs + mean_logits * non_target
    hardest = F.one_hot(ranked.argmax(-1), ranked.shape[-1]).to(ranked.dtype)
    transfer_logits = max_logits * (1.0 - hardest) * non_target + ranked * hardest
    transfer_probs = F.softmax(transfer_logits, dim=-1)
    expert_non_target = F.log_softmax(expert_logits * non_target + OFFICIAL_MASK_LOGIT * target_probs, dim=-1)
    return F.kl_div(expert_non_target, transfer_probs.expand_as(expert_non_target), reduction="none").sum((1, 2))


def _non_target_log_softmax(logits: Tensor, target_mask: Tensor) -> Tensor:
    """Log-softmax over the non-target classes; 0 (not −inf) at the target so products stay finite."""
    log_probs = F.log_softmax(logits.masked_fill(target_mask, float("-inf")), dim=-1)
    return log_probs.masked_fill(target_mask, 0.0)


def _paper_hns_sums(expert_logits: Tensor, target_probs: Tensor) -> Tensor:
    target_mask = F.one_hot(target_probs.argmax(-1), target_probs.shape[-1]).bool()
    mean_logits = expert_logits.mean(0)
    hardest = mean_logits.masked_fill(target_mask, float("-inf")).argmax(-1)
    is_hardest = F.one_hot(hardest, mean_logits.shape[-1]).bool()
    transfer_logits = torch.where(is_hardest, mean_logits, expert_logits.amax(0))
    transfer_log_probs = _non_target_log_softmax(transfer_logits, target_mask)
    transfer_probs = transfer_log_probs.exp().masked_fill(target_mask, 0.0)
    expert_log_probs = _non_target_log_softmax(expert_logits, target_mask)
    return (transfer_probs * (transfer_log_probs - expert_log_probs)).sum((1, 2))


def _mutual_kl_sums(expert_logits: Tensor) -> Tensor:
    """``S[k, j] = Σ_{b,c} p_j (log p_j − log p_k)`` for all expert pairs, (K, K), zero diagonal."""
    log_probs = F.log_softmax(expert_logits, dim=-1)
    probs = log_probs.exp()
    neg_entropy = (probs * log_probs).sum((1, 2))
    cross = torch.einsum("jbc,kbc->kj", probs, log_probs)
    sums = neg_entropy.unsqueeze(0) - cross
    off_diagonal = ~torch.eye(len(sums), dtype=torch.bool, device=sums.device)
    return sums * off_diagonal


def class_count_scale(num_classes: int, tuned_num_classes: int | None, kl_reduction: KLReduction) -> float:
    """The factor on the KL weights that keeps their effect at ``num_classes`` what it was at
    ``tuned_num_classes``: C / C_tuned under the official B·C divisor; 1 under ``batchmean`` (no C in it) or
    without a tuned count."""
    if tuned_num_classes is None or kl_reduction != "official":
        return 1.0
    if tuned_num_classes < 1:
        raise LongtailError(f"SHIKE tuned_num_classes must be a positive class count, got {tuned_num_classes}.")
    return num_classes / tuned_num_classes


def shike_stage1_terms(
    expert_logits: Tensor,
    target_probs: Tensor,
    hns_weight: float = 10.0,
    mutual_weight: float = 1.0,
    kl_reduction: KLReduction = "batchmean",
    dkt_target: DKTTarget = "paper",
) -> ShikeStage1Terms:
    """SHIKE stage-1 loss of ``expert_logits`` (K, B, C) against target distributions (B, C)."""
    _, batch, num_classes = expert_logits.shape
    divisor = _kl_divisor(batch, num_classes, kl_reduction)
    _check_choice("dkt_target", dkt_target, ("paper", "official"))
    hns_terms = _paper_hns_sums if dkt_target == "paper" else _official_hns_sums
    hns_sums = hns_terms(expert_logits, target_probs)
    expert_ce = soft_cross_entropy(expert_logits, target_probs)
    hns_kl = hns_sums / divisor
    mutual_kl = _mutual_kl_sums(expert_logits) / divisor
    loss = expert_ce.sum() + hns_weight * hns_kl.sum() + mutual_weight * mutual_kl.sum()
    return ShikeStage1Terms(loss=loss, expert_ce=expert_ce, hns_kl=hns_kl, mutual_kl=mutual_kl)


def shike_stage2_expert_ce(expert_logits: Tensor, target_probs: Tensor, log_counts: Tensor) -> Tensor:
    """Per-expert Balanced-Softmax CE (K,): soft CE of ``z_k + log n``; the stage-2 loss is their sum."""
    return soft_cross_entropy(expert_logits + log_counts, target_probs)


def target_distribution(targets: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(B, C) targets: one-hot of integer (B,) targets, or soft (B, C) targets as given."""
    if targets.dim() == 1 and not targets.is_floating_point():
        return F.one_hot(targets, num_classes).to(dtype)
    if targets.dim() == 2 and targets.shape[1] == num_classes:
        return targets.to(dtype)
    raise LongtailError(
        f"SHIKE targets must be (B,) class indices or (B, {num_classes}) soft targets, got {tuple(targets.shape)}."
    )


@register_loss("shike")
class SHIKELoss(LongtailLoss):
    """SHIKE's stage-1 loss (CE + hardest negative suppression + mutual distillation), or the stage-2
    Balanced-Softmax loss once ``balanced`` is on (set it, or give ``balanced_from_epoch``).

    ``tuned_num_classes``: the class count at which ``hns_weight`` and ``mutual_weight`` were tuned (SHIKE:
    100). Under ``kl_reduction='official'`` both are multiplied by C / ``tuned_num_classes``, so every C gets
    the tuned setting's effective weights; ``self.hns_weight`` and ``self.mutual_weight`` are the multipliers
    applied."""

    epoch_args = ("balanced_from_epoch",)  # budget=E scales these options with the schedule

    def __init__(
        self,
        class_counts: Sequence[int],
        hns_weight: float = 10.0,
        mutual_weight: float = 1.0,
        kl_reduction: KLReduction = "batchmean",
        dkt_target: DKTTarget = "paper",
        balanced: bool = False,
        balanced_from_epoch: int | None = None,
        tuned_num_classes: int | None = None,
    ) -> None:
        super().__init__(class_counts)
        _check_choice("kl_reduction", kl_reduction, ("batchmean", "official"))
        _check_choice("dkt_target", dkt_target, ("paper", "official"))
        scale = class_count_scale(len(self.class_counts), tuned_num_classes, kl_reduction)
        self.hns_weight = hns_weight * scale
        self.mutual_weight = mutual_weight * scale
        self.kl_reduction = kl_reduction
        self.dkt_target = dkt_target
        self.balanced = balanced
        self.balanced_from_epoch = balanced_from_epoch
        self.register_buffer("log_counts", self.class_counts.log(), persistent=False)

    def set_epoch(self, epoch: int) -> None:
        """0-based ``epoch``; switches to the stage-2 loss from ``balanced_from_epoch`` (SHIKE: 180)."""
        super().set_epoch(epoch)
        if self.balanced_from_epoch is not None:
            self.balanced = epoch >= self.balanced_from_epoch

    def forward(self, output: ModelOutput, targets: Tensor) -> Tensor:
        expert_logits = require_expert_logits(output, "shike")
        target_probs = target_distribution(targets, expert_logits.shape[-1], expert_logits.dtype)
        if self.balanced:
            log_counts = self.log_counts.to(expert_logits)
            expert_ce = shike_stage2_expert_ce(expert_logits, target_probs, log_counts)
            self.parts = {"balanced_ce": expert_ce.sum().detach()}
            return expert_ce.sum()
        terms = shike_stage1_terms(
            expert_logits, target_probs, self.hns_weight, self.mutual_weight, self.kl_reduction, self.dkt_target
        )
        self.parts = {
            "ce": terms.expert_ce.sum().detach(),
            "hardest_negative": (self.hns_weight * terms.hns_kl.sum()).detach(),
            "mutual_distillation": (self.mutual_weight * terms.mutual_kl.sum()).detach(),
        }
        return terms.loss


STAGE1_HEAD = "stage1"


@register_method("shike")
class SHIKE(Method):
    """SHIKE (see the module docstring): stage 1 trains the DKF model with its main heads; every later stage
    re-trains the second head set alone on the frozen model.

    ``stage2_train_mode``: the frozen model runs in training mode in stage 2 (BatchNorm batch statistics, as
    the official code); ``stage2_decay_frozen``: stage 2's weight decay also shrinks the frozen parameters
    (as the official code's zero gradients let it)."""

    def __init__(
        self, config: RunConfig, info: Any, stage2_train_mode: bool = False, stage2_decay_frozen: bool = False
    ) -> None:
        super().__init__(config, info)
        self.stage2_train_mode = stage2_train_mode
        self.stage2_decay_frozen = stage2_decay_frozen
        self.retraining = False
        self.decayed_frozen: list[nn.Parameter] = []

    def stages(self) -> list[Stage]:
        stages = super().stages()
        for stage in stages[1:]:
            if stage.trainable != "head":
                raise LongtailError(
                    f"SHIKE's stage '{stage.name}' re-trains the second head set on the frozen model: set its "
                    f"'trainable: head' (got '{stage.trainable}')."
                )
        return stages

    def prepare_stage(self, stage: Stage, model: nn.Module) -> None:
        network = unwrap(model)
        if not hasattr(network, "select_heads"):
            raise LongtailError(
                f"Method 'shike' needs a multi-expert model with a second head set (shike_resnet32, shike_resnet50, "
                f"shike_resnet152, shike_resnext50_32x4d), got {type(network).__name__}."
            )
        network.select_heads("retrain" if is_retraining(stage) else "main")
        self.retraining = is_retraining(stage)
        super().prepare_stage(stage, model)

    def trainable_parameters(self, stage: Stage, model: nn.Module) -> list[nn.Parameter]:
        """Stage 1: every parameter but the second head set's (unused until stage 2: DDP would wait for
        their gradients). Stage 2: the second head set (the active heads)."""
        if is_retraining(stage):
            return super().trainable_parameters(stage, model)
        second_heads = unwrap(model).retrain_heads
        unused = set() if second_heads is None else {id(p) for p in second_heads.parameters()}
        return [p for p in model.parameters() if id(p) not in unused]

    def param_groups(self, stage: Stage, model: nn.Module, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        """With ``stage2_decay_frozen``, stage 2 adds a group of every frozen parameter (given zero gradients
        by ``training_step``), so weight decay and momentum act on them as in the official code."""
        groups = super().param_groups(stage, model, params)
        self.decayed_frozen = []
        if self.stage2_decay_frozen and is_retraining(stage):
            trainable = {id(p) for p in params}
            self.decayed_frozen = [p for p in model.parameters() if id(p) not in trainable]
            groups.append({"params": self.decayed_frozen})
        return groups

    def training_step(
        self, model: nn.Module, batch: Any, criterion: nn.Module, step: StepInfo
    ) -> tuple[Tensor, ModelOutput]:
        if self.retraining and self.stage2_train_mode:
            unwrap(model).train()
        for param in self.decayed_frozen:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        output = model(batch.images)
        return criterion(in_float32(output), batch.targets), output

    def predict(self, model: nn.Module, images: Tensor) -> ModelOutput:
        """The active heads' mean; with the second head set active, also the main heads' mean as
        ``aux['stage1_logits']`` (reported as the head ``stage1``)."""
        output = model(images)
        network = unwrap(model)
        if network.head_set != "retrain":
            return output
        main_logits = torch.stack([head(f) for head, f in zip(network.heads, output.expert_features, strict=True)])
        aux = {**output.aux, f"{STAGE1_HEAD}_logits": main_logits.mean(dim=0)}
        return dataclasses.replace(output, aux=aux)


def is_retraining(stage: Stage) -> bool:
    """SHIKE's stage 2: any stage that trains the heads only."""
    return stage.trainable == "head"
