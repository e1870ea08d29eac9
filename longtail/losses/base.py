"""What the losses share: training class counts, the epoch, deferred re-weighting, input checks, and the float32
that every loss computes in (baseline losses and the papers' losses alike)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.errors import LongtailError
from longtail.losses.weights import check_class_counts, effective_number_weights

REDUCTIONS = ("weighted_mean", "mean")


def is_soft(targets: torch.Tensor) -> bool:
    """True for (B, C) float target distributions (Mixup/CutMix), False for (B,) class indices."""
    return targets.dim() == 2


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise LongtailError(f"Unknown reduction '{reduction}'. Valid reductions: {', '.join(REDUCTIONS)}.")
    return reduction


def reduce_weighted(
    per_sample: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None, reduction: str
) -> torch.Tensor:
    """Average per-sample losses that already carry their class weight.

    ``weighted_mean`` divides by sum_i w_{y_i} (PyTorch's weighted cross-entropy, LDAM-DRW's code);
    ``mean`` divides by the batch size (Cui et al.). Soft targets always divide by the batch size, as
    ``F.cross_entropy`` does for class probabilities.
    """
    if weight is None or reduction == "mean" or is_soft(targets):
        return per_sample.mean()
    return per_sample.sum() / weight[targets].sum()


def weighted_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    reduction: str = "weighted_mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy with optional per-class ``weight``, averaged as described in ``reduce_weighted``."""
    if reduction == "weighted_mean":
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)
    per_sample = F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing, reduction="none")
    return per_sample.mean()


class Loss(nn.Module):
    """What the trainer requires of every loss: ``forward(output, targets)``; ``set_epoch(epoch)``, called
    before each epoch (0-based within the stage) and kept as ``self.epoch``; ``parts``, the named, detached
    terms of the last call, which the trainer logs as ``loss_<name>``.

    ``epoch_args`` names the options of a loss class that count epochs (``("drw_epoch",)`` where a subclass
    takes ``drw_epoch``): ``budget=E`` scales those with the schedule (``longtail.losses`` docstring).
    """

    epoch_args: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0
        self.parts: dict[str, torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class LongtailLoss(Loss):
    """Base of the losses that weigh classes by their training counts, which it holds as ``class_counts``.

    Deferred re-weighting (DRW, Cao et al., NeurIPS 2019): from 0-based epoch ``drw_epoch`` on, the loss of a
    sample of class c is multiplied by the class-balanced weight w_c = (1 - beta) / (1 - beta^n_c) (scaled to
    sum to C); ``drw_epoch=None`` never re-weights, ``drw_epoch=0`` re-weights from the start. RIDE/LDAM code
    counts epochs from 1 and re-weights when ``epoch > reweight_epoch``: that is ``drw_epoch = reweight_epoch``.
    """

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        drw_epoch: int | None = None,
        beta: float = 0.9999,
        reduction: str = "weighted_mean",
    ) -> None:
        super().__init__()
        counts = check_class_counts(class_counts)
        if drw_epoch is not None and drw_epoch < 0:
            raise LongtailError(f"drw_epoch must be a 0-based epoch >= 0 or None (never), got {drw_epoch}.")
        if not 0.0 <= beta < 1.0:
            raise LongtailError(f"beta of the class-balanced weights must be in [0, 1), got {beta}.")
        self.register_buffer("class_counts", counts, persistent=False)
        balanced_weights = effective_number_weights(counts, beta, torch.float64)
        self.register_buffer("balanced_weights", balanced_weights, persistent=False)
        self.drw_epoch = drw_epoch
        self.beta = beta
        self.reduction = check_reduction(reduction)

    @property
    def num_classes(self) -> int:
        return self.class_counts.numel()

    def class_weights(self) -> torch.Tensor | None:
        """The per-class weights in use at the current epoch (float64), or None."""
        if self.drw_epoch is None or self.epoch < self.drw_epoch:
            return None
        return self.balanced_weights

    def weights_like(self, logits: torch.Tensor) -> torch.Tensor | None:
        weights = self.class_weights()
        return None if weights is None else weights.to(device=logits.device, dtype=logits.dtype)

    def check_inputs(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise LongtailError(
                f"{type(self).__name__} was built for {self.num_classes} classes but got logits of shape "
                f"{tuple(logits.shape)}; build the loss with the training set's class_counts."
            )
        if targets.shape[0] != logits.shape[0] or (is_soft(targets) and targets.shape != logits.shape):
            raise LongtailError(
                f"targets of shape {tuple(targets.shape)} do not match logits of shape {tuple(logits.shape)}; "
                "give (B,) class indices or (B, C) class probabilities."
            )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, drw_epoch={self.drw_epoch}, beta={self.beta}, epoch={self.epoch}"


def loss_dtype(tensor: Tensor) -> Tensor:
    """Losses run in float32 at least (bf16/fp16 logits from autocast are upcast), float64 stays float64."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def require_class_targets(targets: Tensor, loss_name: str) -> Tensor:
    if targets.dim() != 1 or targets.is_floating_point():
        raise LongtailError(
            f"Loss '{loss_name}' needs integer class targets of shape (B,), got {tuple(targets.shape)} "
            f"{targets.dtype}; switch Mixup/CutMix off for this method."
        )
    return targets
