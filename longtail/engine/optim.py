"""Optimisers, the per-iteration learning-rate schedule and sharpness-aware minimisation (SAM)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from longtail.config import OptimConfig, ScheduleConfig
from longtail.errors import LongtailError, unknown_name_error

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "constant")


def build_optimizer(param_groups: list[dict], config: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over ``param_groups`` (each may carry an ``lr_scale``).

    Both use PyTorch's fused kernels (one pass over all parameters): on this project's CPU an AdamW step of
    MetaFG-0 takes 50 ms fused against 470 ms with the default per-tensor loop, an SGD step of ResNet-32
    0.4 ms against 2.6 ms; the updates are the same.
    """
    groups = [{**group, "lr": config.lr * group.pop("lr_scale", 1.0)} for group in param_groups]
    try:
        if config.name == "sgd":
            return torch.optim.SGD(
                groups,
                lr=config.lr,
                momentum=config.momentum,
                nesterov=config.nesterov,
                weight_decay=config.weight_decay,
                fused=True,
            )
        if config.name == "adamw":
            return torch.optim.AdamW(
                groups, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay, fused=True
            )
    except ValueError as error:  # settings that are valid one by one but not together, e.g. Nesterov without momentum
        raise LongtailError(f"The optimiser settings do not work together: {error}. Change the optim.* keys.") from None
    raise unknown_name_error("optimiser", config.name, OPTIMIZERS)


def lr_factor(schedule: ScheduleConfig, base_lr: float, progress: float) -> float:
    """The lr multiplier at ``progress`` epochs into the stage (fractional: updated every iteration).

    Linear warm-up from ``warmup_lr`` to ``base_lr`` over ``warmup_epochs``, then: ``multistep`` multiplies by
    ``gamma`` at each milestone (an epoch index: the lr changes when that epoch starts); ``cosine`` decays from
    ``base_lr`` to ``min_lr`` at the end of the stage; ``constant`` keeps ``base_lr``.
    """
    if progress < schedule.warmup_epochs:
        start = schedule.warmup_lr / base_lr
        return start + (1.0 - start) * progress / schedule.warmup_epochs
    if schedule.name == "multistep":
        passed = sum(progress >= milestone for milestone in schedule.milestones)
        return schedule.gamma**passed
    if schedule.name == "cosine":
        span = max(schedule.epochs - schedule.warmup_epochs, 1e-12)
        done = min((progress - schedule.warmup_epochs) / span, 1.0)
        floor = schedule.min_lr / base_lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done))
    if schedule.name == "constant":
        return 1.0
    raise unknown_name_error("schedule", schedule.name, SCHEDULES)


def check_schedule(schedule: ScheduleConfig, where: str) -> None:
    """Reject schedules that cannot run, before any training starts."""
    if schedule.name not in SCHEDULES:
        raise unknown_name_error("schedule", schedule.name, SCHEDULES)
    if schedule.epochs < 1:
        raise LongtailError(f"{where}: epochs must be at least 1, got {schedule.epochs}.")
    if not 0 <= schedule.warmup_epochs <= schedule.epochs:
        raise LongtailError(f"{where}: warmup_epochs must be between 0 and epochs, got {schedule.warmup_epochs}.")
    if list(schedule.milestones) != sorted(schedule.milestones):
        raise LongtailError(f"{where}: milestones must be increasing, got {schedule.milestones}.")


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, base_lr: float, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimiser step (``steps_per_epoch`` of them an epoch, fewer than the loader's
    batches under gradient accumulation); group lrs keep their ratio to ``base_lr``."""
    check_schedule(schedule, "schedule")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, base_lr, step / steps_per_epoch)
    )


class SAM:
    """Sharpness-aware minimisation (Foret et al., ICLR 2021) around any base optimiser.

    With g = ∇L(w): perturb to w + e, e = rho · g / ‖g‖₂ (the norm over all parameters together), compute
    the gradient there, restore w and let the base optimiser step with that gradient. The trainer calls
    ``perturb()`` after the first backward pass and ``restore()`` after the second.
    """

    def __init__(self, params: Iterable[nn.Parameter], rho: float) -> None:
        if rho <= 0:
            raise LongtailError(f"SAM needs rho > 0, got {rho}.")
        self.params = [p for p in params if p.requires_grad]
        self.rho = rho
        self._offsets: list[torch.Tensor | None] = []

    @torch.no_grad()
    def perturb(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = self.rho / (norm + 1e-12)
        self._offsets = []
        for p in self.params:
            offset = None if p.grad is None else p.grad * scale
            if offset is not None:
                p.add_(offset)
            self._offsets.append(offset)

    @torch.no_grad()
    def restore(self) -> None:
        for p, offset in zip(self.params, self._offsets):
            if offset is not None:
                p.sub_(offset)
        self._offsets = []


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics unchanged (SAM's second forward pass must not count twice)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
