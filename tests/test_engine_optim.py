"""Learning-rate schedules, SAM against a hand computation, BatchNorm statistics during SAM."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from longtail.config import LossConfig, OptimConfig, ScheduleConfig
from longtail.engine.optim import SAM, build_scheduler, frozen_batchnorm_stats, lr_factor
from longtail.engine.trainer import StageRun, Trainer
from longtail.errors import LongtailError
from longtail.methods.base import Method, Stage
from tiny import step_of


def test_linear_warmup_then_multistep():
    schedule = ScheduleConfig(name="multistep", epochs=200, warmup_epochs=5, milestones=[160, 180], gamma=0.01)
    assert lr_factor(schedule, 0.1, 0.0) == 0.0
    assert lr_factor(schedule, 0.1, 2.5) == pytest.approx(0.5)
    assert lr_factor(schedule, 0.1, 5.0) == 1.0
    assert lr_factor(schedule, 0.1, 159.99) == 1.0
    assert lr_factor(schedule, 0.1, 160.0) == pytest.approx(0.01)
    assert lr_factor(schedule, 0.1, 185.0) == pytest.approx(1e-4)


def test_warmup_from_a_start_lr_then_cosine_to_min_lr():
    schedule = ScheduleConfig(name="cosine", epochs=180, warmup_epochs=5, warmup_lr=0.025, min_lr=0.0)
    assert lr_factor(schedule, 0.15, 0.0) == pytest.approx(0.025 / 0.15)
    assert lr_factor(schedule, 0.15, 5.0) == pytest.approx(1.0)
    assert lr_factor(schedule, 0.15, 92.5) == pytest.approx(0.5)
    assert lr_factor(schedule, 0.15, 180.0) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_steps_per_iteration_and_keeps_group_ratios():
    weights = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [weights[0]], "lr": 0.1}, {"params": [weights[1]], "lr": 0.01}], lr=0.1)
    schedule = ScheduleConfig(name="constant", epochs=2, warmup_epochs=1)
    scheduler = build_scheduler(optimizer, schedule, base_lr=0.1, steps_per_epoch=4)
    lrs = []
    for _ in range(5):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert [lr[0] for lr in lrs] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert [lr[1] for lr in lrs] == pytest.approx([0.0, 0.0025, 0.005, 0.0075, 0.01])


def _quadratic_loss(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((x @ w - y) ** 2).mean()


def _quadratic_grad(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x.T @ (x @ w - y) / len(y)


class _Regression(Method):
    """A method whose training step is a least-squares loss of a weight vector."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def training_step(self, model, batch, criterion, epoch):
        """``batch``: the rows of (x, y) it holds."""
        return _quadratic_loss(model.weight, self.x[batch], self.y[batch]), None


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_sam_update_of_the_trainer_matches_a_hand_computation(micro_batches):
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    w0 = torch.randn(3, dtype=torch.float64)
    lr, rho = 0.1, 0.05
    model = nn.Module()
    model.weight = nn.Parameter(w0.clone())
    params = [model.weight]
    optimizer = torch.optim.SGD(params, lr=lr)
    stage = Stage("train", 1, OptimConfig(lr=lr, sam_rho=rho), ScheduleConfig(name="constant", epochs=1),
                  LossConfig(), "instance", 8)
    run = StageRun(stage=stage, params=params, optimizer=optimizer,
                   scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                   scaler=torch.amp.GradScaler("cpu", enabled=False), criterion=nn.Identity(), loader=None,
                   step_model=model, steps_per_epoch=1, sam=SAM(params, rho))
    trainer = object.__new__(Trainer)
    trainer.method, trainer.model, trainer.autocast_dtype = _Regression(x, y), model, None

    group = [slice(start, start + 8 // micro_batches) for start in range(0, 8, 8 // micro_batches)]
    values = [trainer._accumulate(run, rows, step_of(0), index == 0, len(group), index + 1 == len(group))
              for index, rows in enumerate(group)]
    trainer._optimisation_step(run, group, step_of(0))

    g = _quadratic_grad(w0, x, y)
    perturbed = w0 + rho * g / g.norm()
    expected = w0 - lr * _quadratic_grad(perturbed, x, y)
    assert values == pytest.approx([_quadratic_loss(w0, x[rows], y[rows]).item() for rows in group])
    assert torch.allclose(model.weight.detach(), expected, atol=1e-12)


def test_sam_perturbation_and_restore_are_exact():
    a, b = nn.Parameter(torch.tensor([3.0, 0.0])), nn.Parameter(torch.tensor([4.0]))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])  # global gradient norm 5
    sam = SAM([a, b], rho=0.5)
    sam.perturb()
    assert torch.allclose(a.detach(), torch.tensor([3.3, 0.0])) and torch.allclose(b.detach(), torch.tensor([4.4]))
    sam.restore()
    assert torch.equal(a.detach(), torch.tensor([3.0, 0.0])) and torch.equal(b.detach(), torch.tensor([4.0]))


def test_sam_needs_positive_rho():
    with pytest.raises(LongtailError, match="rho"):
        SAM([nn.Parameter(torch.zeros(1))], rho=0.0)


def test_frozen_batchnorm_stats_leave_running_statistics_unchanged():
    norm = nn.BatchNorm1d(4).train()
    norm(torch.randn(16, 4))
    before = norm.running_mean.clone(), norm.running_var.clone()
    with frozen_batchnorm_stats(norm):
        norm(torch.randn(16, 4) + 3.0)
    assert torch.equal(norm.running_mean, before[0]) and torch.equal(norm.running_var, before[1])
    assert norm.momentum == 0.1 and not math.isnan(norm.running_mean.sum().item())
