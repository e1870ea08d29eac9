"""Losses by name: ``longtail.losses.create(name, class_counts=..., **kw)``.

Baseline losses live in this package; each paper's loss lives in its method module
(``longtail.methods.<paper>``) and registers into the same ``LOSSES`` registry when that module is imported
(``import longtail.methods`` registers them all; a method's run always has). Every loss is a ``Loss``
(``longtail.losses.base``): ``forward(output: ModelOutput, targets) -> Tensor``, ``set_epoch(epoch)`` (0-based)
and the ``parts`` it logs; ``LongtailLoss`` adds the class counts and deferred re-weighting.

A loss's options (``loss.args``) are its keyword parameters less ``class_counts``; a recipe's are checked
against them when it resolves. An option that counts epochs is declared in the loss class's ``epoch_args``
(``epoch_args = ("drw_epoch",)``), so that ``budget=E`` scales it with the schedule; an undeclared option keeps
its value under a budget, whatever its name.

Baseline names: ``ce``, ``focal``, ``class_balanced``, ``ldam``, ``balanced_softmax``, ``logit_adjustment``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from longtail.losses.balanced_softmax import BalancedSoftmaxLoss, balanced_softmax_loss
from longtail.losses.base import LongtailLoss, Loss, weighted_cross_entropy
from longtail.losses.class_balanced import ClassBalancedLoss
from longtail.losses.cross_entropy import CrossEntropyLoss
from longtail.losses.focal import FocalLoss, focal_loss
from longtail.losses.ldam import LDAMLoss, ldam_loss, ldam_margin_logits
from longtail.losses.logit_adjustment import LogitAdjustmentLoss, logit_adjusted_loss, posthoc_logit_adjust
from longtail.losses.registry import LOSSES, register_loss
from longtail.losses.weights import effective_number_weights, ldam_margins, log_class_prior


def create(name: str, class_counts: Sequence[int], **kwargs: Any) -> nn.Module:
    """Build loss ``name`` for a training set with ``class_counts`` images per class."""
    factory = LOSSES.get(name)
    LOSSES.check_options(name, kwargs)
    return factory(class_counts=class_counts, **kwargs)


__all__ = [
    "LOSSES",
    "BalancedSoftmaxLoss",
    "ClassBalancedLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustmentLoss",
    "LongtailLoss",
    "Loss",
    "balanced_softmax_loss",
    "create",
    "effective_number_weights",
    "focal_loss",
    "ldam_loss",
    "ldam_margin_logits",
    "ldam_margins",
    "log_class_prior",
    "logit_adjusted_loss",
    "posthoc_logit_adjust",
    "register_loss",
    "weighted_cross_entropy",
]
