"""The classic long-tailed baselines: empirical risk minimisation with any loss, and decoupling.

``erm`` trains ``loss(model(x), y)`` with the recipe's loss: cross-entropy (``ce``, label smoothing), focal,
class-balanced (effective number), LDAM with deferred re-weighting (``ldam`` + ``drw_epoch``), Balanced
Softmax and logit adjustment (``longtail.losses``).

Decoupling (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition", ICLR 2020)
is a recipe of ``erm``, not a method of its own:

- cRT: an extra stage with ``trainable: head``, ``reinit_head: true`` and ``sampler: class_balanced`` re-trains
  a freshly initialised classifier on the frozen backbone (frozen modules run in eval mode, so BatchNorm
  statistics stay fixed too).
- tau-normalisation: ``eval.tau_norm: tau`` reports, next to the plain model, the model whose linear
  classifier rows are divided by ``‖w_c‖^tau`` (``tau_normalized``); post-hoc logit adjustment (Menon et
  al., ICLR 2021) likewise with ``eval.logit_adjust_tau``.
"""

from __future__ import annotations

import copy

from torch import nn

from longtail.methods.base import Method, register_method, unwrap
from longtail.models.heads import tau_normalize


@register_method("erm")
class ERM(Method):
    """Empirical risk minimisation with the recipe's model and loss (the behaviour of ``Method``)."""


def tau_normalized(model: nn.Module, tau: float) -> nn.Module:
    """A copy of ``model`` whose linear head(s) are tau-normalised; ``model`` itself is unchanged."""
    normalized = copy.deepcopy(unwrap(model))
    normalized.replace_heads(lambda head: tau_normalize(head, tau))
    return normalized
