"""DeiT-LT: vision transformers trained from scratch on long-tailed data by distillation from a CNN.

Paper: Harsh Rangwani, Pradipto Mondal, Mayank Mishra, Ashish Ramayee Asokan, R. Venkatesh Babu, "DeiT-LT:
Distillation Strikes Back for Vision Transformer Training on Long-Tailed Datasets", CVPR 2024. Official code:
val-iisc/DeiT-LT (``losses.py``: ``DistillationLoss``; ``engine.py``: the OOD batch and the teacher input;
``main.py``: the DRW switch, the class weights and the Head/Mid/Tail cut points). Built on DeiT (Touvron et
al., ICML 2021).

The method (``deit_lt``):

* Student: a distilled ViT with a CLS and a DIST token and a head on each (``longtail.models.deit``:
  ``deit_lt_base_patch16_224``, the paper's DeiT-B/16 with 32 px CIFAR images upsampled to 224 px, or the
  CPU-sized ``deit_lt_tiny_patch4_32`` / ``deit_lt_small_patch4_32``), trained from scratch. Prediction is
  ``(z_cls + z_dist) / 2``; the CLS and DIST heads are reported as well (``cls`` and ``dist``).
* Teacher: any longtail checkpoint (``method.args.teacher``: a run directory or ``.pt`` file), rebuilt from
  the checkpoint's own config and used frozen: eval mode, no gradient, not part of the student (not in its
  optimiser, EMA or checkpoints). The paper's teachers are ResNet-32 (CIFAR) and ResNet-50 (ImageNet-LT,
  iNat) trained with LDAM-DRW or PaCo under SAM (flat minima make better teachers): see the
  ``deit-lt-teacher-*`` recipes. PaCo + SAM, the paper's strongest teacher, is not in this library.
  ``teacher: labels`` is the ablation without a teacher: the DIST head learns ``argmax_c ỹ`` (the label of the
  larger part of each mixed image) with everything else unchanged (``LabelTeacher``).
* Out-of-distribution distillation: every step builds ONE strongly augmented batch x̃ and feeds it to both
  networks. The loader applies crop + flip + RandAugment (``data.augment`` with ``policy: randaugment``, 2
  operations, magnitude 9); the training step then applies random erasing (probability 0.25, per-pixel
  normal noise, timm ``RandomErasing``) and Mixup (α 0.8) / CutMix (α 1.0), one of the two per batch, by timm
  ``Mixup`` with label smoothing ε = 0.1, giving soft targets ỹ. The teacher sees the same mixed x̃, resized
  (bicubic) to its own input size and re-normalised to its own statistics if they differ, not a clean image.
* Loss (``deit_lt``, below): ``L = ½·CE(z_cls, ỹ) + ½·CE_w(z_dist, argmax_c f_T(x̃))``.
* Deferred re-weighting: from the 0-based epoch ``loss.args.drw_epoch`` the DIST cross-entropy is weighted by
  the class-balanced effective-number weights (β 0.9999, summing to C); the CLS term stays unweighted.
  ``no_mixup_drw`` (the CIFAR setting) also turns Mixup/CutMix off from that epoch: the targets are then the
  hard labels and the CLS term is the plain cross-entropy (no smoothing).
* Reports: besides the usual many/medium/few shot groups, DeiT-LT's Head/Mid/Tail: classes ranked by
  descending training count and cut at fixed ranks (``DEIT_LT_CUT_POINTS``: CIFAR-10-LT 3/7, CIFAR-100-LT
  36/71, ImageNet-LT 390/835, iNat 842/4543; ``rank_groups``). ``DeiTLT.extra_metrics`` adds them to the
  metrics of a head.

The loss. Model output: the student puts its two heads' logits in ``output.aux['cls_logits']`` and
``output.aux['dist_logits']`` (B, C); the method runs the teacher on the student's own augmented (mixed)
batch and puts its logits in ``output.aux['teacher_logits']`` (B, C). The teacher's logits are treated as
constants. Targets are (B,) class indices, or (B, C) soft Mixup/CutMix targets.

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
* The official code upsamples CIFAR to 224 px before augmenting (timm ``create_transform``) and downsamples
  the mixed batch to the teacher's 32 px; here the batch is augmented and mixed at the dataset's resolution,
  the student upsamples its input, and the teacher gets the batch as it is when the sizes agree. The crops
  follow its ``datasets.py``: a 224 px student trains on timm's RandomResizedCrop (area 0.08-1, lines
  597-606; here ``data.augment.resized_crop: [0.08, 1.0]`` at 32 px, then the student's bicubic upsampling)
  and is tested on Resize(256) + CenterCrop(224) (lines 615-622; the student's ``eval_crop_fraction: 0.875``);
  a 32 px student keeps the padded 32 px crop (lines 607-610) and the whole test image.
* RandAugment is torchvision's (2 operations, magnitude 9, batched by the loader), not timm's
  ``rand-m9-mstd0.5-inc1`` (which adds magnitude noise of std 0.5 and uses increasing-severity operations).
* Repeated augmentation and gradient accumulation are the official ones: the recipes sample with
  ``data.sampler: {name: repeated, repeats: 3}`` (``longtail.data.samplers``: DeiT's ``RASampler``, three
  independently augmented copies of each drawn image spread over the ranks, the epoch kept at one dataset's
  length, without its rounding down to a multiple of 256 images) and step the optimiser once per 4 batches
  (``train.accumulate_steps: 4``, the official ``--accum-iter 4``; the lr rule ignores it, as the official
  code's does). The official EMA (decay 0.99996, never evaluated) is off: this library evaluates the EMA
  whenever ``train.ema_decay > 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from torch import Tensor, nn

from longtail.config import RunConfig
from longtail.errors import LongtailError
from longtail.evaluation.metrics import rank_group_accuracies, rank_groups
from longtail.losses.base import LongtailLoss, loss_dtype
from longtail.losses.registry import register_loss
from longtail.methods.base import Method, Stage, register_method
from longtail.methods.batch_mixing import erase_and_mix, pixel_random_erasing
from longtail.methods.context import RunContext, StepInfo
from longtail.methods.runs import load_teacher
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

    epoch_args = ("drw_epoch",)  # budget=E scales these options with the schedule

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


# ---------------------------------------------------------------- the method

# Class-rank cut points of DeiT-LT's Head/Mid/Tail report (``main.py``, ``args.categories``).
DEIT_LT_CUT_POINTS: dict[str, tuple[int, int]] = {
    "cifar10-lt": (3, 7),
    "cifar100-lt": (36, 71),
    "imagenet-lt": (390, 835),
    "inat2018": (842, 4543),
}
class FrozenTeacher:
    """A trained classifier used as a fixed function of the student's images: eval mode, no gradient.

    ``predict(model, images) -> ModelOutput`` is the teacher's own method's prediction. The student's images
    are re-normalised from ``student_stats`` to ``teacher_stats`` ((mean, std) per channel) when those
    differ, and resized (bicubic, antialiased) to ``image_size`` when their size differs.
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        predict: Callable[[nn.Module, Tensor], ModelOutput] | None = None,
        student_stats: tuple[Sequence[float], Sequence[float]] | None = None,
        teacher_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        self.predict = predict or (lambda net, images: net(images))
        self.scale, self.shift = _renormalisation(student_stats, teacher_stats)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device, student_info: Any) -> FrozenTeacher:
        """The model of a longtail run directory or checkpoint, rebuilt from its own config."""
        if not Path(path).exists():
            raise LongtailError(
                f"DeiT-LT teacher not found at '{path}'. Train one first (e.g. `longtail train --recipe "
                f"deit-lt-teacher-cifar10-lt-if100 --run-dir {path}`) or set method.args.teacher to a run "
                "directory or checkpoint file."
            )
        trained = load_teacher(path, device)
        if list(trained.info.class_names) != list(student_info.class_names):
            raise LongtailError(
                f"The teacher at '{path}' was trained on {trained.info.name} ({trained.info.num_classes} classes), "
                f"which does not have the classes of {student_info.name} ({student_info.num_classes}); use a "
                "teacher trained on the same dataset."
            )
        return cls(
            trained.model,
            trained.info.image_size,
            trained.method.predict,
            student_stats=(student_info.mean, student_info.std),
            teacher_stats=(trained.info.mean, trained.info.std),
        )

    @torch.no_grad()
    def __call__(self, images: Tensor, targets: Tensor | None = None) -> Tensor:
        """The teacher's logits (B, C) on ``images`` (the student's normalised batch; ``targets`` unused)."""
        if self.scale is not None:
            images = images * self.scale.to(images) + self.shift.to(images)
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            downsampling = images.shape[-1] > self.image_size
            images = F.interpolate(
                images, size=self.image_size, mode="bicubic", align_corners=False, antialias=downsampling
            )
        return self.predict(self.model, images).logits.detach()


class LabelTeacher:
    """The ground truth in the teacher's place (``method.args.teacher: labels``): its "logits" are the batch's
    own targets (the Mixup/CutMix soft targets, or one-hot labels), so hard distillation teaches the DIST head
    ``argmax_c ỹ``, the label of the larger part of each mixed image. Training with it is DeiT-LT's
    no-distillation ablation: the same two heads, losses, augmentation and DRW, only no teacher."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def __call__(self, images: Tensor, targets: Tensor | None = None) -> Tensor:
        if targets is None:
            raise LongtailError("The label teacher needs the batch's targets.")
        if targets.is_floating_point():
            return targets.detach()
        return F.one_hot(targets, self.num_classes).to(images.dtype)


LABEL_TEACHER = "labels"


def _renormalisation(
    student: tuple[Sequence[float], Sequence[float]] | None, teacher: tuple[Sequence[float], Sequence[float]] | None
) -> tuple[Tensor | None, Tensor | None]:
    """(scale, shift) with ``x_T = x · scale + shift`` = (x · σ_S + μ_S − μ_T) / σ_T, or (None, None)."""
    if student is None or teacher is None:
        return None, None
    (mean_s, std_s), (mean_t, std_t) = [
        (torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))
        for mean, std in (student, teacher)
    ]
    if torch.equal(mean_s, mean_t) and torch.equal(std_s, std_t):
        return None, None
    scale, shift = std_s / std_t, (mean_s - mean_t) / std_t
    return scale.float().view(1, -1, 1, 1), shift.float().view(1, -1, 1, 1)


@register_method("deit_lt")
class DeiTLT(Method):
    """DeiT-LT (see the module docstring): the student trains on one strongly augmented, mixed batch per step,
    which the frozen teacher labels for the DIST head.

    ``teacher``: a longtail run directory or checkpoint; ``labels`` puts the ground truth in the teacher's
    place (``LabelTeacher``, the no-distillation ablation with the ``deit_lt`` loss; write ``./labels`` for a
    run directory of that name); None trains the same student and augmentation without distillation (the
    recipe's loss must then not be ``deit_lt``); ``mixup_alpha``, ``cutmix_alpha``,
    ``mix_prob``, ``switch_prob``, ``label_smoothing``: timm ``Mixup`` (mixing is off when both alphas are
    0); ``random_erasing``: probability of timm ``RandomErasing`` (pixel mode, one box); ``no_mixup_drw``: no
    Mixup/CutMix from the loss's ``drw_epoch`` on; ``cut_points``: the Head/Mid/Tail class ranks (default
    ``DEIT_LT_CUT_POINTS`` of the dataset, none for other datasets).
    """

    def __init__(
        self,
        config: RunConfig,
        info: Any,
        teacher: str | None = None,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        random_erasing: float = 0.25,
        no_mixup_drw: bool = False,
        cut_points: list[int] | None = None,
    ) -> None:
        super().__init__(config, info)
        for name, value in (("mix_prob", mix_prob), ("switch_prob", switch_prob), ("random_erasing", random_erasing)):
            if not 0.0 <= value <= 1.0:
                raise LongtailError(f"method.args.{name} must be a probability in [0, 1], got {value}.")
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0.0 <= label_smoothing < 1.0:
            raise LongtailError(
                "method.args.mixup_alpha and cutmix_alpha must be >= 0 and label_smoothing in [0, 1), got "
                f"{mixup_alpha}, {cutmix_alpha} and {label_smoothing}."
            )
        self.teacher_path = teacher
        self.no_mixup_drw = no_mixup_drw
        self.random_erasing_prob = random_erasing
        self.mixup = None
        if (mixup_alpha > 0 or cutmix_alpha > 0) and mix_prob > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=mix_prob,
                switch_prob=switch_prob,
                mode="batch",
                label_smoothing=label_smoothing,
                num_classes=info.num_classes,
            )
        cut_points = cut_points if cut_points is not None else DEIT_LT_CUT_POINTS.get(info.name)
        self.rank_groups = None if cut_points is None else rank_groups(info.train_counts, cut_points)
        self.teacher: FrozenTeacher | LabelTeacher | None = None
        self.random_erasing: RandomErasing | None = None
        self.drw_epoch: int | None = config.loss.args.get("drw_epoch")  # the current stage's, from prepare_stage

    def setup(self, context: RunContext) -> None:
        """Load the teacher from ``teacher`` (unless one was attached to ``self.teacher`` already) and build
        random erasing on the run's device."""
        super().setup(context)
        device = context.device
        if self.teacher is None and self.teacher_path == LABEL_TEACHER:
            self.teacher = LabelTeacher(self.info.num_classes)
        elif self.teacher is None and self.teacher_path is not None:
            self.teacher = FrozenTeacher.from_checkpoint(self.teacher_path, device, self.info)
        self._check_stage_losses()
        self.random_erasing = pixel_random_erasing(self.random_erasing_prob, device)

    def _check_stage_losses(self) -> None:
        for stage in self.stages():
            if stage.loss.name == "deit_lt" and self.teacher is None:
                raise LongtailError(
                    f"Loss 'deit_lt' (stage '{stage.name}') distils from a teacher: set method.args.teacher to "
                    "a trained run directory or checkpoint, or use another loss to train without one."
                )
            if self.no_mixup_drw and stage.loss.args.get("drw_epoch") is None:
                raise LongtailError(
                    f"method.args.no_mixup_drw switches Mixup off at the DRW epoch, but stage '{stage.name}' has "
                    "no loss.args.drw_epoch; set one or set no_mixup_drw=false."
                )

    def prepare_stage(self, stage: Stage, model: nn.Module) -> None:
        super().prepare_stage(stage, model)
        self.drw_epoch = stage.loss.args.get("drw_epoch")

    def mixing(self, epoch: int) -> bool:
        """Whether this (0-based) epoch of the stage mixes: Mixup is configured and, with ``no_mixup_drw``, the
        stage's DRW (its ``loss.args.drw_epoch``) has not begun."""
        if self.mixup is None:
            return False
        return not (self.no_mixup_drw and self.drw_epoch is not None and epoch >= self.drw_epoch)

    def augment(self, images: Tensor, targets: Tensor, mix: bool) -> tuple[Tensor, Tensor]:
        """Random erasing, then (if ``mix``) Mixup/CutMix of the batch with smoothed soft targets; returns
        new tensors (the batch is left untouched)."""
        return erase_and_mix(images, targets, self.random_erasing, self.mixup if mix else None)

    def training_step(
        self, model: nn.Module, batch: Any, criterion: nn.Module, step: StepInfo
    ) -> tuple[Tensor, ModelOutput]:
        images, targets = self.augment(batch.images, batch.targets, self.mixing(step.epoch))
        output = model(images)
        if self.teacher is not None:
            output.aux["teacher_logits"] = self.teacher(images, targets)
        return criterion(output, targets), output

    def extra_predictions(self, output: ModelOutput) -> dict[str, Tensor]:
        return {"cls": output.aux["cls_logits"], "dist": output.aux["dist_logits"]}

    def extra_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """DeiT-LT's Head / Mid / Tail accuracies of one head's ``evaluate`` result (its ``per_class``), and the
        size of each group; empty when the dataset has no cut points."""
        if self.rank_groups is None:
            return {}
        per_class = np.asarray(metrics["per_class"], dtype=np.float64)
        accuracies = rank_group_accuracies(per_class, self.rank_groups)
        return {**accuracies, "rank_group_sizes": {name: int(c.size) for name, c in self.rank_groups.items()}}
