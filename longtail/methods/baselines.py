"""The classic long-tailed baselines: empirical risk minimisation with any loss, and decoupling.

``erm`` trains ``loss(model(x), y)`` with the recipe's loss: cross-entropy (``ce``, label smoothing), focal,
class-balanced (effective number), LDAM with deferred re-weighting (``ldam`` + ``drw_epoch``), Balanced
Softmax and logit adjustment (``longtail.losses``). Options (``method.args``): ``mixup_alpha`` /
``cutmix_alpha`` mix each training batch with timm's ``Mixup`` (batch mode, switching between the two with
probability ``switch_prob`` when both are on) into soft targets for a loss that accepts them (``ce``, whose
``label_smoothing`` then smooths the mixed targets); ``random_erasing`` is the probability of timm's
``RandomErasing`` (pixel mode, one box) on the normalised batch, before mixing. The meta-information of the
batch (MetaFormer) is passed unmixed, as the MetaFormer reference does.

Decoupling (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition", ICLR 2020)
is a recipe of ``erm``, not a method of its own:

- cRT: an extra stage with ``trainable: head``, ``reinit_head: true`` and ``sampler: class_balanced`` re-trains
  a freshly initialised classifier on the frozen backbone (frozen modules run in eval mode, so BatchNorm
  statistics stay fixed too).
- tau-normalisation: ``eval.tau_norm: tau`` reports, next to the plain model, the model whose linear
  classifier rows are divided by ``‖w_c‖^tau`` (``longtail.models.heads.tau_normalized``); post-hoc logit
  adjustment (Menon et al., ICLR 2021) likewise with ``eval.logit_adjust_tau``.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from torch import nn

from longtail.config import RunConfig
from longtail.errors import LongtailError
from longtail.methods.base import Method, register_method
from longtail.methods.context import RunContext, StepInfo
from longtail.methods.batch_mixing import erase_and_mix, pixel_random_erasing
from longtail.models.output import ModelOutput


@register_method("erm")
class ERM(Method):
    """Empirical risk minimisation with the recipe's model and loss, optionally with Mixup / CutMix and
    random erasing of the batch (see the module docstring)."""

    def __init__(
        self,
        config: RunConfig,
        info: Any,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        switch_prob: float = 0.5,
        random_erasing: float = 0.0,
    ) -> None:
        super().__init__(config, info)
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise LongtailError(
                f"method.args.mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha} and {cutmix_alpha}."
            )
        for name, value in (("switch_prob", switch_prob), ("random_erasing", random_erasing)):
            if not 0.0 <= value <= 1.0:
                raise LongtailError(f"method.args.{name} must be a probability in [0, 1], got {value}.")
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                switch_prob=switch_prob,
                mode="batch",
                label_smoothing=0.0,
                num_classes=info.num_classes,
            )
        self.random_erasing_prob = random_erasing
        self.random_erasing: RandomErasing | None = None

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        self.random_erasing = pixel_random_erasing(self.random_erasing_prob, context.device)

    def augment(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Random erasing, then Mixup / CutMix into (B, C) soft targets; the batch itself is left untouched."""
        if self.random_erasing is None and self.mixup is None:
            return images, targets
        return erase_and_mix(images, targets, self.random_erasing, self.mixup)

    def training_step(
        self, model: nn.Module, batch: Any, criterion: nn.Module, step: StepInfo
    ) -> tuple[torch.Tensor, ModelOutput]:
        images, targets = self.augment(batch.images, batch.targets)
        output = self.forward(model, images, batch.meta)
        return criterion(output, targets), output
