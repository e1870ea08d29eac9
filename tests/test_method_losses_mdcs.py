"""MDCS loss: golden parity with the official MDCSLoss, confident instance sampling, gradient routing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import longtail.losses
from longtail.errors import LongtailError
from longtail.methods.mdcs import MDCSLoss, logit_adjustment, mdcs_loss_terms
from longtail.models.output import ModelOutput

FIXTURES = ["mdcs_B8_C10", "mdcs_B16_C100", "mdcs_B8_C10_expert3_nomatch"]
EPOCHS = {5: 4, 50: 49}  # official 1-based epoch -> 0-based epoch of this library
F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)


def _official_loss(data: dict) -> MDCSLoss:
    return longtail.losses.create("mdcs", class_counts=data["cls_num_list"].tolist(), log_prior="official")


def _run(loss: MDCSLoss, weak: np.ndarray, strong: np.ndarray, targets: np.ndarray, dtype: torch.dtype):
    weak_logits = torch.tensor(weak, dtype=dtype, requires_grad=True)
    strong_logits = torch.tensor(strong, dtype=dtype, requires_grad=True)
    expert_logits = torch.cat([weak_logits, strong_logits], dim=1)
    value = loss(ModelOutput(logits=expert_logits.mean(0), expert_logits=expert_logits), torch.tensor(targets))
    value.backward()
    return value, weak_logits.grad, strong_logits.grad


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("official_epoch", sorted(EPOCHS))
def test_mdcs_loss_matches_official_float64(load_golden, stem, official_epoch):
    data = load_golden(stem)
    loss = _official_loss(data)
    loss.set_epoch(EPOCHS[official_epoch])
    value, grad_weak, grad_strong = _run(
        loss, data["logits_weak"], data["logits_strong"], data["targets"], torch.float64
    )
    tag = f"epoch{official_epoch}"
    np.testing.assert_allclose(value.item(), data[f"loss_{tag}"], **F64)
    np.testing.assert_allclose(grad_weak.numpy(), data[f"grad_logits_weak_{tag}"], **F64)
    np.testing.assert_allclose(grad_strong.numpy(), data[f"grad_logits_strong_{tag}"], **F64)
    expected_scale = {5: 0.15, 50: 0.6}[official_epoch]
    assert loss.consistency_scale() == pytest.approx(expected_scale, rel=1e-12)

    terms = mdcs_loss_terms(
        torch.tensor(data["logits_weak"]), torch.tensor(data["logits_strong"]), torch.tensor(data["targets"]),
        loss.adjustment, loss.consistency_scale(),
    )
    np.testing.assert_array_equal(terms.confident.numpy(), data["consistency_mask"])
    np.testing.assert_allclose(terms.expert_ce.numpy(), data[f"expert_ce_{tag}"], **F64)
    np.testing.assert_allclose(terms.expert_consistency_kl.numpy(), data[f"expert_consistency_kl_{tag}"], **F64)
    np.testing.assert_allclose((loss.parts["diversity"] + loss.parts["consistency"]).item(), value.item(), **F64)


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("official_epoch", sorted(EPOCHS))
def test_mdcs_loss_matches_official_float32(load_golden, stem, official_epoch):
    data = load_golden(stem)
    loss = _official_loss(data)
    loss.set_epoch(EPOCHS[official_epoch])
    value, _, _ = _run(loss, data["logits_weak"], data["logits_strong"], data["targets"], torch.float32)
    np.testing.assert_allclose(value.item(), data[f"loss_epoch{official_epoch}_f32"], **F32)


@pytest.mark.shared
def test_exact_log_prior_is_the_paper_formula_and_close_to_official(load_golden):
    data = load_golden("mdcs_B8_C10")
    counts = data["cls_num_list"]
    exact = logit_adjustment(counts, (-0.5, 1.0, 2.5))
    np.testing.assert_allclose(exact.numpy(), np.outer([-0.5, 1.0, 2.5], np.log(counts)), **F64)
    official = logit_adjustment(counts, (-0.5, 1.0, 2.5), log_prior="official")
    assert 0 < (exact - official).abs().max() < 1e-7  # 1e-9 / n^λ with n^λ >= 5000^-0.5

    paper = longtail.losses.create("mdcs", class_counts=counts.tolist())
    paper.set_epoch(49)
    value, _, _ = _run(paper, data["logits_weak"], data["logits_strong"], data["targets"], torch.float64)
    np.testing.assert_allclose(value.item(), data["loss_epoch50"], rtol=1e-6)


def _random_two_view_batch(batch=12, classes=5, experts=3):
    weak = torch.randn(experts, batch, classes, dtype=torch.float64) * 3
    strong = torch.randn(experts, batch, classes, dtype=torch.float64) * 3
    targets = torch.randint(0, classes, (batch,))
    return weak, strong, targets


def test_confident_sampling_excludes_exactly_the_misclassified_per_expert():
    counts = [40, 20, 10, 5, 2]
    weak, strong, targets = _random_two_view_batch()
    loss = MDCSLoss(counts)
    loss.set_epoch(100)
    adjusted_weak = weak + loss.adjustment.unsqueeze(1)
    confident = adjusted_weak.argmax(-1) == targets
    assert confident.any() and not confident.all()

    strong_leaf = strong.clone().requires_grad_(True)
    loss(ModelOutput(logits=weak.mean(0), expert_logits=torch.cat([weak, strong_leaf], 1)), targets).backward()
    # CE gives every strong row a gradient; the KL adds to it only on confident rows. Compare with CE alone.
    ce_only = MDCSLoss(counts, consistency_weight=0.0)
    strong_ce = strong.clone().requires_grad_(True)
    ce_only(ModelOutput(logits=weak.mean(0), expert_logits=torch.cat([weak, strong_ce], 1)), targets).backward()
    touched_by_kl = (strong_leaf.grad - strong_ce.grad).abs().amax(-1) > 1e-12
    torch.testing.assert_close(touched_by_kl, confident)


def test_weak_view_gets_no_gradient_from_consistency():
    counts = [40, 20, 10, 5, 2]
    weak, strong, targets = _random_two_view_batch()

    def weak_gradient(consistency_weight: float) -> torch.Tensor:
        weak_leaf = weak.clone().requires_grad_(True)
        loss = MDCSLoss(counts, consistency_weight=consistency_weight)
        loss.set_epoch(100)
        loss(ModelOutput(logits=weak.mean(0), expert_logits=torch.cat([weak_leaf, strong], 1)), targets).backward()
        return weak_leaf.grad

    torch.testing.assert_close(weak_gradient(0.6), weak_gradient(0.0), rtol=0, atol=0)


def test_empty_confident_set_contributes_nothing_and_ramp_is_linear():
    counts = [40, 20, 10]
    weak = torch.zeros(3, 4, 3, dtype=torch.float64)
    weak[:, :, 0] = 50.0  # every expert predicts class 0, no target is class 0
    strong = torch.randn(3, 4, 3, dtype=torch.float64)
    targets = torch.tensor([1, 2, 1, 2])
    loss = MDCSLoss(counts, expert_exponents=(0.0, 0.0, 0.0))
    value = loss(ModelOutput(logits=weak.mean(0), expert_logits=torch.cat([weak, strong], 1)), targets)
    assert torch.isfinite(value) and loss.parts["consistency"] == 0
    assert loss.parts["confident_fraction"] == 0

    assert MDCSLoss(counts, ramp_epochs=4).consistency_scale() == pytest.approx(0.6 * 0.25)
    ramped = MDCSLoss(counts, ramp_epochs=4)
    ramped.set_epoch(10)
    assert ramped.consistency_scale() == pytest.approx(0.6)


def test_mdcs_rejects_single_view_and_wrong_expert_count():
    loss = MDCSLoss([10, 5, 1])
    single_view = ModelOutput(logits=torch.randn(4, 3), expert_logits=torch.randn(3, 4, 3))
    with pytest.raises(LongtailError, match="two_views=True"):
        loss(single_view, torch.zeros(4, dtype=torch.long))
    two_experts = ModelOutput(logits=torch.randn(8, 3), expert_logits=torch.randn(2, 8, 3))
    with pytest.raises(LongtailError, match="one exponent per expert"):
        loss(two_experts, torch.zeros(4, dtype=torch.long))
    with pytest.raises(LongtailError, match="log_prior"):
        MDCSLoss([10, 5, 1], log_prior="paper")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mdcs_loss_on_cuda_matches_cpu():
    weak, strong, targets = _random_two_view_batch()
    loss = MDCSLoss([40, 20, 10, 5, 2])
    values = [
        loss(ModelOutput(logits=weak.mean(0).to(device), expert_logits=torch.cat([weak, strong], 1).to(device)),
             targets.to(device)).cpu()
        for device in ("cpu", "cuda")
    ]
    torch.testing.assert_close(values[0], values[1])
