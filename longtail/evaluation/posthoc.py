"""Post-hoc corrections of a trained classifier, and the choice of their strength on a validation split.

- tau-normalisation (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
  ICLR 2020): w_c <- w_c / ||w_c||^tau for every class row of the classifier weight; tau = 0 leaves it as
  is, tau = 1 gives unit-norm rows. (``longtail.models.heads.tau_normalize`` applies it to a model's head,
  ``longtail.models.heads.tau_normalized`` to every head of a copy of a model.)
- logit adjustment (Menon et al., ICLR 2021): z_c - tau * log pi_c (``posthoc_logit_adjust``).
- IIF (inverse image frequency) adjustment, the APA reference's post-processing (kostas1515/AGLU ``IIFLoss``
  with ``infer=True``, its default 'rel' variant): z_c + log((N - n_c) / n_c), N = sum_c n_c
  (``posthoc_iif``).
- ``select_tau``: the tau of a grid with the best mean per-class accuracy on held-out data (never the test set).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from longtail.errors import LongtailError
from longtail.evaluation.metrics import per_class_accuracy
from longtail.losses.logit_adjustment import posthoc_logit_adjust

DEFAULT_TAUS = tuple(np.round(np.linspace(0.0, 2.0, 21), 2).tolist())


def tau_normalized_weight(weight: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``weight`` (C, ...) with each class row divided by its L2 norm to the power ``tau``."""
    norms = weight.flatten(1).norm(dim=1).clamp_min(torch.finfo(weight.dtype).tiny)
    return weight / norms.pow(tau).view(-1, *([1] * (weight.dim() - 1)))


def posthoc_iif(logits: torch.Tensor, class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``logits + log((N - n_c) / n_c)`` with n_c the training count of class c and N their sum."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.dim() != 1 or len(counts) != logits.shape[-1] or (counts <= 0).any():
        raise LongtailError(
            f"IIF needs one positive training count per class ({logits.shape[-1]}), got {len(counts)} counts."
        )
    if len(counts) < 2:
        raise LongtailError("IIF needs at least two classes.")
    return logits + torch.log((counts.sum() - counts) / counts).to(logits)


def select_tau(
    logits_for_tau: Callable[[float], torch.Tensor],
    targets: torch.Tensor,
    taus: Sequence[float] = DEFAULT_TAUS,
) -> tuple[float, dict[float, float]]:
    """The tau maximising mean per-class accuracy of ``logits_for_tau(tau)`` (N, C) against ``targets``.

    Returns (best tau, {tau: mean per-class accuracy}); ties go to the first tau of the grid.
    """
    if len(taus) == 0:
        raise LongtailError("select_tau needs at least one tau to try.")
    scores = {}
    for tau in taus:
        logits = logits_for_tau(tau)
        accuracy = per_class_accuracy(logits.argmax(dim=1), targets.to(logits.device), logits.shape[1])
        scores[float(tau)] = float(np.nanmean(accuracy))
    best = max(scores, key=scores.get)
    return best, scores


__all__ = ["DEFAULT_TAUS", "posthoc_iif", "posthoc_logit_adjust", "select_tau", "tau_normalized_weight"]
