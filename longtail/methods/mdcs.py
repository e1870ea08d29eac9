"""MDCS: More Diverse experts with Consistency Self-distillation (the method and its loss).

Paper: Qihao Zhao, Chen Jiang, Wei Hu, Fan Zhang, Jun Liu, "MDCS: More Diverse Experts with Consistency
Self-distillation for Long-tailed Recognition", ICCV 2023. Official code: fistyee/MDCS (``model/loss.py``:
``MDCSLoss``; ``trainer/trainer.py`` builds the two-view batch).

The method (``mdcs``):

* Model: RIDE's multi-expert network (``ride_resnet32``: shared conv1 + layer1, per-expert layer2 / layer3
  with 24 / 48 channels and a cosine head; ``ride_resnext50_32x4d`` / ``ride_resnet50`` / ``ride_resnet152``
  for the large datasets), built with ``logit_adjust_exponents`` = λ (one per expert).
* Data: two views of every image (``data.two_views``): a weak one (crop + flip + rotation 15°) and a strong
  one (crop + flip + AutoAugment + Cutout 16 on CIFAR; see the recipes for the large datasets).
* Training step: ONE forward pass over ``cat([weak; strong])`` (2B rows, so BatchNorm sees both views, as in
  the official trainer), then the loss below on ``expert_logits`` (K, 2B, C) and the B labels.
* Prediction: the mean of the raw expert logits, (1/K) Σ_k z_k (no logit adjustment at test time), which is
  the model's ``logits``. Trained on ẑ_k, expert k ends up head-biased (λ = −0.5), balanced (1) or
  tail-biased (2.5), and their mean is close to balanced.

λ is written once: ``model.args.logit_adjust_exponents`` (or ``loss.args.expert_exponents``; giving both with
different values is an error; default (−0.5, 1, 2.5)); the method passes the same λ to the model and to the
loss.

The loss (``mdcs``). Two-view batches: ``output.expert_logits`` is (K, 2B, C) with rows ``[weak view; strong
view]`` (row ``i`` and row ``B + i`` are two views of image ``i``); ``targets`` is (B,), the labels of the B
images, and is used for both views. A single-view batch is an error.

Symbols (as in the code below): ``z_k`` = logits of expert k; ``n_c`` = ``class_counts``; ``λ_k`` =
``expert_exponents[k]``; ``τ`` = ``temperature``; ``w`` = ``consistency_weight``::

    ẑ_k     = z_k + a_k,   a_k,c = λ_k · log n_c                           (all 2B rows)
    DL      = Σ_k CE(ẑ_k, [y; y])                                          (mean over the 2B rows)
    S_k     = { i < B : argmax_c ẑ_k[i] = y_i }                            (confident instance sampling)
    KL_k    = (1/|S_k|) Σ_{i∈S_k} KL( softmax(ẑ_k[i]/τ) ‖ softmax(ẑ_k[B+i]/τ) ),  0 when S_k is empty
    CS      = Σ_k KL_k                                                     (the weak-view target is detached)
    ramp    = min((epoch + 1) / ramp_epochs, 1)                            (0-based epoch; ramp_epochs = 20)
    L       = DL + w · ramp · CS,   w = 0.6

The weak view's rows therefore get gradient from DL only, never from CS. Normalising the counts to a prior
(``log π`` instead of ``log n``) shifts every row of ``ẑ_k`` by a constant, which changes neither the
softmax nor the argmax, so the two are the same loss.

Where the official code differs from the paper, and what this module does:

* The configured ``tau`` (2 in the CIFAR and ImageNet-LT configs) is stored but never used: the official
  temperature is 1. This library uses τ = 1 (the code's behaviour, which is what produced the published
  numbers); ``temperature`` is an option, and with ``temperature != 1`` both softmaxes of the KL are divided
  by τ (no τ² factor).
* DRW class weights are computed (``reweight_epoch`` 200) but never applied: the CE calls pass no weight.
  This library computes no DRW weights for MDCS; DL is the unweighted cross-entropy above.
* The official adjustment is ``a_k,c = log(n_c^λ_k + 1e-9)``, not ``λ_k · log n_c``; the difference is
  about ``1e-9 / n_c^λ_k`` per logit (7e-8 for λ = −0.5 and n = 5000). Default ``log_prior='exact'``;
  ``log_prior='official'`` is the official formula (the golden tests use it).
* The weight 0.6, the 20-epoch ramp (1-based ``epoch / 20`` == 0-based ``(epoch + 1) / 20``), the exponents,
  3 experts and 100 classes are hard-coded there; here they are options (any K and C).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.config import RunConfig
from longtail.errors import LongtailError
from longtail.losses.base import LongtailLoss, require_class_targets
from longtail.losses.experts import expert_cross_entropy, in_float32, require_expert_logits
from longtail.losses.registry import register_loss
from longtail.methods.base import Method, both_views, register_method
from longtail.methods.context import StepInfo
from longtail.models.output import ModelOutput

LogPrior = Literal["exact", "official"]

DEFAULT_EXPERT_EXPONENTS = (-0.5, 1.0, 2.5)


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

    epoch_args = ("ramp_epochs",)  # budget=E scales these options with the schedule

    def __init__(
        self,
        class_counts: Sequence[int],
        expert_exponents: Sequence[float] = DEFAULT_EXPERT_EXPONENTS,
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


def resolve_expert_exponents(config: RunConfig) -> tuple[float, ...]:
    """λ from ``model.args.logit_adjust_exponents`` or ``loss.args.expert_exponents`` (default (−0.5, 1, 2.5))."""
    from_model = config.model.args.get("logit_adjust_exponents")
    from_loss = config.loss.args.get("expert_exponents") if config.loss.name == "mdcs" else None
    if from_model is not None and from_loss is not None and list(map(float, from_model)) != list(map(float, from_loss)):
        raise LongtailError(
            f"MDCS got two different per-expert exponents, model.args.logit_adjust_exponents={list(from_model)} "
            f"and loss.args.expert_exponents={list(from_loss)}; set only model.args.logit_adjust_exponents."
        )
    chosen = from_model if from_model is not None else from_loss
    return tuple(float(value) for value in (DEFAULT_EXPERT_EXPONENTS if chosen is None else chosen))


def with_expert_exponents(config: RunConfig, exponents: Sequence[float]) -> RunConfig:
    """A copy of ``config`` whose model and ``mdcs`` losses (the run's and any stage's) carry the same
    per-expert exponents."""
    config = copy.deepcopy(config)
    config.model.args["logit_adjust_exponents"] = list(exponents)
    for loss in [config.loss, *(stage.loss for stage in config.stages if stage.loss is not None)]:
        if loss.name == "mdcs":
            loss.args["expert_exponents"] = list(exponents)
    return config


@register_method("mdcs")
class MDCS(Method):
    """MDCS (see the module docstring): one forward pass over both views, the ``mdcs`` loss on the 2B rows,
    prediction = mean of the raw expert logits (the model's ``logits``, ``Method.predict``)."""

    def __init__(self, config: RunConfig, info: Any) -> None:
        if not config.data.two_views:
            raise LongtailError(
                "Method 'mdcs' trains on a weak and a strong view of every image; set data.two_views=true "
                "(and data.strong_augment), as the mdcs-* recipes do."
            )
        self.expert_exponents = resolve_expert_exponents(config)
        super().__init__(with_expert_exponents(config, self.expert_exponents), info)

    def training_step(
        self, model: nn.Module, batch: Any, criterion: nn.Module, step: StepInfo
    ) -> tuple[Tensor, ModelOutput]:
        output = model(both_views(batch, self.config.method.name))
        return criterion(in_float32(output), batch.targets), output
