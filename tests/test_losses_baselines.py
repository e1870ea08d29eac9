"""Baseline losses against hand computation and known identities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longtail.errors import LongtailError
from longtail.losses import (
    LOSSES,
    balanced_softmax_loss,
    create,
    effective_number_weights,
    focal_loss,
    ldam_margins,
    log_class_prior,
    logit_adjusted_loss,
    posthoc_logit_adjust,
)
from longtail.models.output import ModelOutput

BASELINES = ("ce", "focal", "class_balanced", "ldam", "balanced_softmax", "logit_adjustment")
COUNTS = [500, 120, 40, 9, 3]


def _batch(batch_size: int = 16, num_classes: int = 5, dtype=torch.float64):
    logits = torch.randn(batch_size, num_classes, dtype=dtype)
    targets = torch.randint(0, num_classes, (batch_size,))
    return logits, targets


def _loss(name: str, logits, targets, counts=COUNTS, **kwargs) -> torch.Tensor:
    return create(name, class_counts=counts, **kwargs)(ModelOutput(logits=logits), targets)


def test_registry_holds_the_baselines():
    assert set(BASELINES) <= set(LOSSES.names())


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_baseline_gives_a_finite_scalar_and_gradient(name, dtype):
    logits, targets = _batch(dtype=dtype)
    logits.requires_grad_(True)
    loss = create(name, class_counts=COUNTS)
    loss.set_epoch(3)
    value = loss(ModelOutput(logits=logits), targets)
    value.backward()
    assert value.shape == () and value.dtype == dtype and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_cross_entropy_with_label_smoothing_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    log_p = [1.0 - math.log(math.e + math.e**2 + math.e**3) + k for k in (0, 1, 2)]
    expected = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])  # q = 0.7 * onehot(0) + 0.3 / 3
    value = _loss("ce", logits, torch.tensor([0]), counts=[1, 1, 1], label_smoothing=0.3)
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_soft_targets_are_the_mixup_mixture():
    logits, targets = _batch()
    other = targets.roll(1)
    lam = 0.3
    soft = lam * F.one_hot(targets, 5).double() + (1 - lam) * F.one_hot(other, 5).double()
    expected = lam * F.cross_entropy(logits, targets) + (1 - lam) * F.cross_entropy(logits, other)
    torch.testing.assert_close(_loss("ce", logits, soft), expected)


def test_drw_weights_start_at_the_0_based_drw_epoch():
    logits, targets = _batch()
    loss = create("ce", class_counts=COUNTS, drw_epoch=2)
    weights = effective_number_weights(COUNTS, 0.9999, torch.float64)
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    for epoch, expected in [
        (1, per_sample.mean()),
        (2, (weights[targets] * per_sample).sum() / weights[targets].sum()),
    ]:
        loss.set_epoch(epoch)
        torch.testing.assert_close(loss(ModelOutput(logits=logits), targets), expected)


def test_focal_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)  # p = (1/4, 3/4)
    value = focal_loss(logits, torch.tensor([1]), gamma=2.0)
    assert value.item() == pytest.approx(-(0.25**2) * math.log(0.75), rel=1e-12)


def test_focal_with_gamma_0_is_cross_entropy():
    logits, targets = _batch()
    weight = effective_number_weights(COUNTS, 0.999, torch.float64)
    soft = F.softmax(torch.randn(16, 5, dtype=torch.float64), dim=1)
    torch.testing.assert_close(focal_loss(logits, targets, gamma=0.0), F.cross_entropy(logits, targets))
    torch.testing.assert_close(
        focal_loss(logits, targets, gamma=0.0, weight=weight), F.cross_entropy(logits, targets, weight=weight)
    )
    torch.testing.assert_close(
        focal_loss(logits, soft, gamma=0.0, weight=weight), F.cross_entropy(logits, soft, weight=weight)
    )
    torch.testing.assert_close(_loss("focal", logits, targets, gamma=0.0), F.cross_entropy(logits, targets))


def test_focal_down_weights_easy_examples():
    logits, targets = _batch()
    assert focal_loss(logits, targets, gamma=2.0) < focal_loss(logits, targets, gamma=0.0)


def test_focal_gradient_is_finite_for_a_saturated_prediction():
    logits = torch.tensor([[0.0, 200.0]], dtype=torch.float32, requires_grad=True)
    focal_loss(logits, torch.tensor([1]), gamma=0.5).backward()
    assert torch.isfinite(logits.grad).all()


def test_class_balanced_weights_by_hand():
    # beta = 0.5, counts (2, 1): effective numbers (1.5, 1), w proportional to (2/3, 1), scaled to sum 2: (0.8, 1.2).
    torch.testing.assert_close(
        effective_number_weights([2, 1], 0.5, torch.float64), torch.tensor([0.8, 1.2], dtype=torch.float64)
    )
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)  # each CE = log 2
    targets = torch.tensor([0, 1])
    value = _loss("class_balanced", logits, targets, counts=[2, 1], beta=0.5)
    assert value.item() == pytest.approx((0.8 + 1.2) * math.log(2) / 2, rel=1e-12)
    value = _loss("class_balanced", logits, torch.tensor([1, 1]), counts=[2, 1], beta=0.5)
    assert value.item() == pytest.approx(1.2 * math.log(2), rel=1e-12)
    value = _loss("class_balanced", logits, torch.tensor([1, 1]), counts=[2, 1], beta=0.5, reduction="weighted_mean")
    assert value.item() == pytest.approx(math.log(2), rel=1e-12)


def test_class_balanced_focal_is_weighted_focal():
    logits, targets = _batch()
    weight = effective_number_weights(COUNTS, 0.99, torch.float64)
    p_target = F.softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    expected = (weight[targets] * -(1 - p_target) * p_target.log()).mean()
    value = _loss("class_balanced", logits, targets, beta=0.99, base="focal", gamma=1.0)
    torch.testing.assert_close(value, expected)


def test_ldam_margins_by_hand():
    # n^(-1/4) = (1/4, 1/2, 1) for n = (256, 16, 1); the rarest class gets max_m.
    torch.testing.assert_close(
        ldam_margins([256, 16, 1], 0.5, torch.float64), torch.tensor([0.125, 0.25, 0.5], dtype=torch.float64)
    )


def test_ldam_subtracts_the_scaled_margin_from_the_target_logit_only():
    logits = torch.zeros(2, 3, dtype=torch.float64)
    targets = torch.tensor([2, 0])
    loss = create("ldam", class_counts=[256, 16, 1], s=10.0)
    expected = torch.tensor([[0.0, 0.0, -5.0], [-1.25, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(loss.margin_logits(logits, targets), expected)
    unscaled = create("ldam", class_counts=[256, 16, 1], s=10.0, scaled_logits=False)
    torch.testing.assert_close(unscaled.margin_logits(logits, targets), expected)
    torch.testing.assert_close(loss(ModelOutput(logits=logits), targets), F.cross_entropy(expected, targets))


def test_balanced_softmax_by_hand_and_with_uniform_counts():
    value = balanced_softmax_loss(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0]), torch.tensor([1.0, 3.0]))
    assert value.item() == pytest.approx(math.log(4.0), rel=1e-12)  # p_0 = 1 / (1 + 3)
    logits, targets = _batch()
    uniform = _loss("balanced_softmax", logits, targets, counts=[7] * 5)
    torch.testing.assert_close(uniform, F.cross_entropy(logits, targets))


def test_logit_adjustment_identities():
    logits, targets = _batch()
    log_prior = log_class_prior(COUNTS, torch.float64)
    unadjusted = logit_adjusted_loss(logits, targets, log_prior, tau=0.0)
    torch.testing.assert_close(unadjusted, F.cross_entropy(logits, targets))
    torch.testing.assert_close(
        _loss("logit_adjustment", logits, targets, tau=1.0), _loss("balanced_softmax", logits, targets)
    )
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    by_hand = F.cross_entropy(logits + 0.5 * prior.log(), targets)
    torch.testing.assert_close(_loss("logit_adjustment", logits, targets, tau=0.5), by_hand)


def test_posthoc_logit_adjust_by_hand():
    logits = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    adjusted = posthoc_logit_adjust(logits, [3, 1], tau=1.0)  # pi = (3/4, 1/4)
    expected = torch.tensor([[1.0 - math.log(0.75), 0.5 - math.log(0.25)]], dtype=torch.float64)
    torch.testing.assert_close(adjusted, expected)
    assert adjusted.argmax().item() == 1 and logits.argmax().item() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "ldma"}, "Did you mean 'ldam'"),
        ({"name": "ldam", "maxm": 0.5}, "Did you mean 'max_m'"),
        ({"name": "ce", "class_counts": [10, 0, 3]}, "must be positive"),
        ({"name": "ce", "drw_epoch": -1}, "drw_epoch"),
        ({"name": "class_balanced", "base": "dice"}, "Valid bases"),
        ({"name": "ce", "reduction": "sum"}, "Valid reductions"),
    ],
)
def test_bad_options_give_one_clear_error(kwargs, message):
    kwargs = {"class_counts": COUNTS, **kwargs}
    with pytest.raises(LongtailError, match=message):
        create(kwargs.pop("name"), **kwargs)


def test_wrong_number_of_classes_and_soft_targets_for_ldam_are_refused():
    logits, targets = _batch(num_classes=4)
    with pytest.raises(LongtailError, match="built for 5 classes"):
        _loss("ce", logits, targets)
    logits, _ = _batch()
    with pytest.raises(LongtailError, match="class-index targets"):
        _loss("ldam", logits, F.softmax(logits, dim=1))
