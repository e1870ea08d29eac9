"""RIDE losses: golden parity with the official RIDELoss (float64 and float32), DRW switching, distillation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import longtail.losses
from longtail.errors import LongtailError
from longtail.methods.ride import RIDELoss, distillation_kl
from longtail.models.output import ModelOutput

FIXTURES = ["ride_K3_B16_C10", "ride_K3_B16_C100"]
# 1-based official epoch -> 0-based epoch of this library (reweight_epoch 160 == drw_epoch 160)
EPOCHS = {10: 9, 170: 169}
F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)


def _loss(data: dict) -> RIDELoss:
    return longtail.losses.create(
        "ride", class_counts=data["cls_num_list"].tolist(), max_m=0.5, s=30, drw_epoch=160,
        base_temperature=1.0, diversity_factor=-0.45, reweight_factor=0.05, base_loss_factor=1.0,
    )


def _run(loss: RIDELoss, data: dict, dtype: torch.dtype):
    expert_logits = torch.tensor(data["expert_logits"], dtype=dtype, requires_grad=True)
    targets = torch.tensor(data["targets"])
    value = loss(ModelOutput(logits=expert_logits.mean(0), expert_logits=expert_logits), targets)
    value.backward()
    return value, expert_logits.grad


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("official_epoch", sorted(EPOCHS))
def test_ride_loss_matches_official_float64(load_golden, stem, official_epoch):
    data = load_golden(stem)
    loss = _loss(data)
    loss.set_epoch(EPOCHS[official_epoch])
    value, grad = _run(loss, data, torch.float64)
    tag = f"epoch{official_epoch}"

    np.testing.assert_allclose(value.item(), data[f"loss_{tag}"], **F64)
    np.testing.assert_allclose(grad.numpy(), data[f"grad_expert_logits_{tag}"], **F64)
    np.testing.assert_allclose(loss.temperatures().numpy(), data[f"diversity_temperature_{tag}"], **F64)
    weights = loss.class_weights()
    expected_weights = data[f"base_ce_weights_{tag}"]
    if expected_weights.size == 0:
        assert weights is None
    else:
        np.testing.assert_allclose(weights.numpy(), expected_weights, **F64)

    terms = loss.ride_terms(torch.tensor(data["expert_logits"]), torch.tensor(data["targets"]))
    np.testing.assert_allclose(terms.expert_ce.numpy(), data[f"expert_ldam_ce_{tag}"], **F64)
    np.testing.assert_allclose(terms.expert_kl.numpy(), data[f"expert_kl_{tag}"], **F64)
    parts_total = loss.parts["ldam_ce"] + loss.parts["diversity"]
    np.testing.assert_allclose(parts_total.item(), data[f"loss_{tag}"], **F64)


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
def test_ride_constants_match_official(load_golden, stem):
    data = load_golden(stem)
    loss = _loss(data)
    np.testing.assert_allclose(loss.margins.numpy(), data["m_list"], **F64)
    np.testing.assert_array_equal(loss.margins.float().numpy(), data["m_list_f32"])
    np.testing.assert_allclose(loss.balanced_weights.numpy(), data["drw_weights"], **F64)
    np.testing.assert_allclose(loss.diversity_weights.numpy(), data["diversity_weights"], **F64)


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("official_epoch", sorted(EPOCHS))
def test_ride_loss_matches_official_float32(load_golden, stem, official_epoch):
    data = load_golden(stem)
    loss = _loss(data)
    loss.set_epoch(EPOCHS[official_epoch])
    value, grad = _run(loss, data, torch.float32)
    tag = f"epoch{official_epoch}"
    assert value.dtype == torch.float32
    np.testing.assert_allclose(value.item(), data[f"loss_{tag}_f32"], **F32)
    np.testing.assert_allclose(grad.numpy(), data[f"grad_expert_logits_{tag}_f32"], **F32)


def test_drw_switches_at_drw_epoch():
    loss = RIDELoss([100, 10, 1], drw_epoch=5)
    loss.set_epoch(4)
    assert loss.class_weights() is None and torch.all(loss.temperatures() == 1.0)
    loss.set_epoch(5)
    assert loss.class_weights() is not None and loss.temperatures().min() < 1.0
    never = RIDELoss([100, 10, 1], drw_epoch=None)
    never.set_epoch(10_000)
    assert never.class_weights() is None


def _ldam_ce_by_hand(logits, targets, counts):
    margins = torch.tensor(counts, dtype=torch.float64).pow(-0.25)
    margins = margins * 0.5 / margins.max()
    shifted = logits - 30 * margins[targets].unsqueeze(1) * torch.nn.functional.one_hot(targets, len(counts))
    return torch.nn.functional.cross_entropy(shifted, targets)


def test_zero_diversity_keeps_expert_logits_unless_official():
    counts = [50, 20, 5, 2]
    expert_logits = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 4, (6,))
    output = ModelOutput(logits=expert_logits.mean(0), expert_logits=expert_logits)

    paper = RIDELoss(counts, diversity_factor=0.0)(output, targets)
    official = RIDELoss(counts, diversity_factor=0.0, official_zero_diversity=True)(output, targets)
    torch.testing.assert_close(paper, sum(_ldam_ce_by_hand(z, targets, counts) for z in expert_logits))
    torch.testing.assert_close(official, 3 * _ldam_ce_by_hand(expert_logits.mean(0), targets, counts))

    (grad_official,) = torch.autograd.grad(official, expert_logits)
    torch.testing.assert_close(grad_official[0], grad_official[1])  # every expert gets the mean's gradient


def test_ride_distill_adds_tempered_kl_and_official_repeat():
    counts = [50, 20, 5, 2]
    expert_logits = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 4, (5,))
    output = ModelOutput(logits=expert_logits.mean(0), expert_logits=expert_logits, aux={"teacher_logits": teacher})

    ride = RIDELoss(counts)(output, targets)
    distilled_loss = longtail.losses.create("ride_distill", class_counts=counts)
    distilled = distilled_loss(output, targets)
    student_log_probs = torch.log_softmax(expert_logits.mean(0) / 1.5, dim=1)
    teacher_probs = torch.softmax(teacher / 1.5, dim=1)
    by_hand = 1.5**2 * (teacher_probs * (teacher_probs.log() - student_log_probs)).sum(1).mean()
    torch.testing.assert_close(distilled, ride + by_hand)
    torch.testing.assert_close(distilled_loss.parts["distill"], by_hand.detach())

    repeated = longtail.losses.create("ride_distill", class_counts=counts, official_distill_repeat=True)
    torch.testing.assert_close(repeated(output, targets), 2 * distilled)

    distilled.backward()
    assert teacher.grad is None
    assert distillation_kl(teacher, teacher, 1.5).abs() < 1e-12


def test_ride_rejects_single_head_output_and_missing_teacher():
    output = ModelOutput(logits=torch.randn(4, 3))
    with pytest.raises(LongtailError, match="multi-expert"):
        RIDELoss([10, 5, 1])(output, torch.zeros(4, dtype=torch.long))
    experts = ModelOutput(logits=torch.randn(4, 3), expert_logits=torch.randn(2, 4, 3))
    with pytest.raises(LongtailError, match="teacher_logits"):
        longtail.losses.create("ride_distill", class_counts=[10, 5, 1])(experts, torch.zeros(4, dtype=torch.long))
    with pytest.raises(LongtailError, match="Did you mean 'distill_factor'"):
        longtail.losses.create("ride_distill", class_counts=[10, 5, 1], distil_factor=2.0)
    with pytest.raises(LongtailError, match="reweight_factor"):
        RIDELoss([1000, 1], reweight_factor=2.0)


def test_half_precision_logits_are_computed_in_float32():
    expert_logits = torch.randn(3, 8, 5).bfloat16().requires_grad_(True)
    loss = RIDELoss([100, 50, 20, 5, 1])
    loss.set_epoch(200)
    value = loss(ModelOutput(logits=expert_logits.mean(0), expert_logits=expert_logits), torch.randint(0, 5, (8,)))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert expert_logits.grad.dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ride_losses_on_cuda_match_cpu():
    counts = [100, 50, 20, 5, 1]
    expert_logits = torch.randn(3, 8, 5, dtype=torch.float64)
    teacher = torch.randn(8, 5, dtype=torch.float64)
    targets = torch.randint(0, 5, (8,))
    for name in ("ride", "ride_distill"):
        loss = longtail.losses.create(name, class_counts=counts)
        loss.set_epoch(200)
        values = [
            loss(ModelOutput(logits=expert_logits.mean(0).to(device), expert_logits=expert_logits.to(device),
                             aux={"teacher_logits": teacher.to(device)}), targets.to(device)).cpu()
            for device in ("cpu", "cuda")
        ]
        torch.testing.assert_close(values[0], values[1])
