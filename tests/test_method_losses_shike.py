"""SHIKE losses: golden parity with the official mix_outputs (both stages), paper vs official variants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import longtail.losses
from longtail.errors import LongtailError
from longtail.methods.recipes import resolve
from longtail.methods.shike import SHIKELoss, shike_stage1_terms
from longtail.models.output import ModelOutput

FIXTURES = ["shike_K3_B8_C10", "shike_K3_B16_C100"]
OFFICIAL = dict(kl_reduction="official", dkt_target="official")
F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)


def _run(loss: SHIKELoss, expert_logits: np.ndarray, targets, dtype: torch.dtype):
    logits = torch.tensor(expert_logits, dtype=dtype, requires_grad=True)
    value = loss(ModelOutput(logits=logits.mean(0), expert_logits=logits), targets)
    value.backward()
    return value, logits.grad


def _off_diagonal(matrix: torch.Tensor) -> np.ndarray:
    size = len(matrix)
    return matrix[~torch.eye(size, dtype=torch.bool)].view(size, size - 1).numpy()


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("target_kind", ["int", "onehot"])
def test_stage1_matches_official_float64(load_golden, stem, target_kind):
    data = load_golden(stem)
    targets = torch.tensor(data["targets"] if target_kind == "int" else data["labels_onehot"])
    loss = longtail.losses.create("shike", class_counts=data["label_dis"].tolist(), **OFFICIAL)
    value, grad = _run(loss, data["expert_logits"], targets, torch.float64)
    np.testing.assert_allclose(value.item(), data["loss_stage1"], **F64)
    np.testing.assert_allclose(grad.numpy(), data["grad_expert_logits_stage1"], **F64)
    np.testing.assert_allclose(data["expert_logits"].mean(0), data["avg_output_stage1"], **F64)

    terms = shike_stage1_terms(torch.tensor(data["expert_logits"]), torch.tensor(data["labels_onehot"]), **OFFICIAL)
    np.testing.assert_allclose(terms.expert_ce.numpy(), data["soft_ce_per_expert_stage1"], **F64)
    np.testing.assert_allclose(terms.hns_kl.numpy(), data["hns_kl_per_expert_stage1"], **F64)
    np.testing.assert_allclose(_off_diagonal(terms.mutual_kl), data["mutual_kl_stage1"], **F64)
    parts = loss.parts["ce"] + loss.parts["hardest_negative"] + loss.parts["mutual_distillation"]
    np.testing.assert_allclose(parts.item(), data["loss_stage1"], **F64)


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
def test_stage2_matches_official_float64(load_golden, stem):
    data = load_golden(stem)
    loss = longtail.losses.create("shike", class_counts=data["label_dis"].tolist(), balanced_from_epoch=180)
    loss.set_epoch(180)
    value, grad = _run(loss, data["expert_logits"], torch.tensor(data["targets"]), torch.float64)
    np.testing.assert_allclose(value.item(), data["loss_stage2"], **F64)
    np.testing.assert_allclose(grad.numpy(), data["grad_expert_logits_stage2"], **F64)
    np.testing.assert_allclose(data["expert_logits"].mean(0), data["avg_output_stage2"], **F64)
    per_expert = [
        torch.nn.functional.cross_entropy(torch.tensor(z) + loss.log_counts, torch.tensor(data["targets"]))
        for z in data["expert_logits"]
    ]
    np.testing.assert_allclose(per_expert, data["soft_ce_per_expert_stage2"], **F64)


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("stage", [1, 2])
def test_both_stages_match_official_float32(load_golden, stem, stage):
    data = load_golden(stem)
    loss = SHIKELoss(data["label_dis"].tolist(), balanced=stage == 2, **OFFICIAL)
    value, grad = _run(loss, data["expert_logits"], torch.tensor(data["targets"]), torch.float32)
    np.testing.assert_allclose(value.item(), data[f"loss_stage{stage}_f32"], **F32)
    np.testing.assert_allclose(grad.numpy(), data[f"grad_expert_logits_stage{stage}_f32"], **F32)


@pytest.mark.shared
def test_batchmean_reduction_is_num_classes_times_official(load_golden):
    data = load_golden("shike_K3_B8_C10")
    logits, onehot = torch.tensor(data["expert_logits"]), torch.tensor(data["labels_onehot"])
    official = shike_stage1_terms(logits, onehot, **OFFICIAL)
    paper_weighting = shike_stage1_terms(logits, onehot, kl_reduction="batchmean", dkt_target="official")
    torch.testing.assert_close(paper_weighting.hns_kl, 10 * official.hns_kl)
    torch.testing.assert_close(paper_weighting.mutual_kl, 10 * official.mutual_kl)
    torch.testing.assert_close(paper_weighting.expert_ce, official.expert_ce)


def test_paper_transfer_target_excludes_the_target_class():
    one_expert = torch.randn(1, 5, 6, dtype=torch.float64) * 5
    identical_experts = one_expert.expand(3, 5, 6)
    onehot = torch.nn.functional.one_hot(torch.randint(0, 6, (5,)), 6).double()
    paper = shike_stage1_terms(identical_experts, onehot)
    official = shike_stage1_terms(identical_experts, onehot, **OFFICIAL)
    # Identical experts agree on every non-target distribution: nothing to transfer or distil in the paper's
    # formulation; the official target keeps logit 0 at the target class, so its HNS term is not zero.
    torch.testing.assert_close(paper.hns_kl, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(paper.mutual_kl, torch.zeros(3, 3, dtype=torch.float64))
    assert (official.hns_kl > 1e-6).all()


def test_paper_hns_by_hand_and_finite_gradients():
    expert_logits = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, 1])
    onehot = torch.nn.functional.one_hot(targets, 4).double()
    terms = shike_stage1_terms(expert_logits, onehot)

    expected = torch.zeros(2, dtype=torch.float64)
    for b, y in enumerate(targets.tolist()):
        others = [c for c in range(4) if c != y]
        mean, best = expert_logits[:, b].mean(0), expert_logits[:, b].amax(0)
        hardest = max(others, key=lambda c: mean[c])
        transfer = torch.stack([mean[c] if c == hardest else best[c] for c in others])
        p = torch.softmax(transfer, 0)
        for k in range(2):
            q = torch.softmax(expert_logits[k, b, others], 0)
            expected[k] += (p * (p.log() - q.log())).sum() / 3
    torch.testing.assert_close(terms.hns_kl, expected)

    assert torch.autograd.gradcheck(
        lambda z: shike_stage1_terms(z, onehot).loss, (expert_logits,), eps=1e-6, atol=1e-7, fast_mode=True
    )


def test_soft_targets_and_stage_switch():
    expert_logits = torch.randn(3, 4, 5)
    output = ModelOutput(logits=expert_logits.mean(0), expert_logits=expert_logits)
    targets = torch.tensor([0, 1, 2, 4])
    soft = torch.nn.functional.one_hot(targets, 5).float() * 0.9 + 0.02
    loss = SHIKELoss([50, 20, 10, 5, 2], balanced_from_epoch=3)
    loss.set_epoch(2)
    stage1 = loss(output, soft)
    assert torch.isfinite(stage1) and set(loss.parts) == {"ce", "hardest_negative", "mutual_distillation"}
    loss.set_epoch(3)
    stage2 = loss(output, targets)
    assert set(loss.parts) == {"balanced_ce"}
    torch.testing.assert_close(stage2, loss.parts["balanced_ce"])
    with pytest.raises(LongtailError, match="kl_reduction"):
        SHIKELoss([5, 2], kl_reduction="mean")
    with pytest.raises(LongtailError, match="soft targets"):
        loss(output, torch.zeros(4, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("options", [dict(), OFFICIAL, dict(balanced=True)])
def test_shike_loss_on_cuda_matches_cpu(options):
    expert_logits = torch.randn(3, 8, 5, dtype=torch.float64) * 5
    targets = torch.randint(0, 5, (8,))
    loss = SHIKELoss([40, 20, 10, 5, 2], **options)
    values = [
        loss(ModelOutput(logits=expert_logits.mean(0).to(device), expert_logits=expert_logits.to(device)),
             targets.to(device)).cpu()
        for device in ("cpu", "cuda")
    ]
    torch.testing.assert_close(values[0], values[1])


@pytest.mark.parametrize(
    ("recipe", "num_classes", "applied"),
    [("shike-cifar10-lt-if100", 10, (1.0, 0.1)), ("shike-cifar100-lt-if100", 100, (10.0, 1.0)),
     ("digits-shike", 10, (1.0, 0.1)), ("shike-imagenet-lt-resnext50", 1000, (100.0, 10.0))],
)
def test_recipes_keep_the_cifar100_effective_kl_weights_at_every_class_count(recipe, num_classes, applied):
    loss_config = resolve(recipe).loss
    loss = longtail.losses.create(loss_config.name, class_counts=list(range(num_classes, 0, -1)), **loss_config.args)
    assert (loss.hns_weight, loss.mutual_weight) == pytest.approx(applied)
    # per-sample (batchmean) weights under the official B*C divisor: the CIFAR-100 setting's 10/100 and 1/100
    assert (loss.hns_weight / num_classes, loss.mutual_weight / num_classes) == pytest.approx((0.1, 0.01))


def test_tuned_class_count_scales_the_official_kl_terms_only():
    expert_logits = torch.randn(3, 6, 10, dtype=torch.float64) * 4
    targets = torch.randint(0, 10, (6,))
    output = ModelOutput(logits=expert_logits.mean(0), expert_logits=expert_logits)
    counts = list(range(10, 0, -1))
    scaled = SHIKELoss(counts, tuned_num_classes=100, **OFFICIAL)(output, targets)
    by_hand = shike_stage1_terms(
        expert_logits, torch.nn.functional.one_hot(targets, 10).double(), hns_weight=1.0, mutual_weight=0.1,
        **OFFICIAL,
    ).loss
    torch.testing.assert_close(scaled, by_hand)
    unscaled = SHIKELoss(counts, kl_reduction="batchmean", tuned_num_classes=100)
    assert (unscaled.hns_weight, unscaled.mutual_weight) == (10.0, 1.0)
    with pytest.raises(LongtailError, match="tuned_num_classes"):
        SHIKELoss(counts, tuned_num_classes=0, **OFFICIAL)
