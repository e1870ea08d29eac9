"""DeiT-LT loss: golden parity with the official DistillationLoss in all six cases, DRW and teacher handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import longtail.losses
from longtail.errors import LongtailError
from longtail.methods.deit_lt import DeiTLTLoss
from longtail.models.output import ModelOutput

FIXTURES = ["deitlt_B16_C10", "deitlt_B32_C100"]
DRW_EPOCH = 1100
# case -> (loss options, 0-based epoch, soft (mixup) targets?)
CASES = {
    "mixup_hard_unweighted": (dict(drw_epoch=DRW_EPOCH), DRW_EPOCH - 1, True),
    "mixup_hard_tupleflag": (dict(official_always_weighted=True), 0, True),
    "drw_hard_weighted_distill": (dict(drw_epoch=DRW_EPOCH), DRW_EPOCH, False),
    "drw_hard_weighted_both": (dict(drw_epoch=DRW_EPOCH, weighted_base=True), DRW_EPOCH, False),
    "hard_labels_unweighted": (dict(), 0, False),
    "soft_distill_tau1_unweighted": (dict(distillation="soft", tau=1.0), 0, False),
}
F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)


def _run(data: dict, case: str, dtype: torch.dtype):
    options, epoch, soft = CASES[case]
    loss = longtail.losses.create("deit_lt", class_counts=data["cls_num_list"].tolist(), alpha=0.5, **options)
    loss.set_epoch(epoch)
    cls_logits = torch.tensor(data["cls_logits"], dtype=dtype, requires_grad=True)
    dist_logits = torch.tensor(data["dist_logits"], dtype=dtype, requires_grad=True)
    teacher_logits = torch.tensor(data["teacher_logits"], dtype=dtype, requires_grad=True)
    targets = torch.tensor(data["soft_targets"], dtype=dtype) if soft else torch.tensor(data["targets"])
    aux = {"cls_logits": cls_logits, "dist_logits": dist_logits, "teacher_logits": teacher_logits}
    value = loss(ModelOutput(logits=(cls_logits + dist_logits) / 2, aux=aux), targets)
    value.backward()
    assert teacher_logits.grad is None
    return loss, value, cls_logits.grad, dist_logits.grad


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_deit_lt_loss_matches_official_float64(load_golden, stem, case):
    data = load_golden(stem)
    loss, value, grad_cls, grad_dist = _run(data, case, torch.float64)
    np.testing.assert_allclose(value.item(), data[f"{case}__loss"], **F64)
    np.testing.assert_allclose(loss.parts["cls"].item(), data[f"{case}__cls_part"], **F64)
    np.testing.assert_allclose(loss.parts["dist"].item(), data[f"{case}__dist_part"], **F64)
    np.testing.assert_allclose(grad_cls.numpy(), data[f"{case}__grad_cls_logits"], **F64)
    np.testing.assert_allclose(grad_dist.numpy(), data[f"{case}__grad_dist_logits"], **F64)


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_deit_lt_loss_matches_official_float32(load_golden, stem, case):
    data = load_golden(stem)
    _, value, _, _ = _run(data, case, torch.float32)
    np.testing.assert_allclose(value.item(), data[f"{case}__loss_f32"], **F32)


@pytest.mark.shared
def test_drw_weights_and_teacher_argmax_match_official(load_golden):
    data = load_golden("deitlt_B16_C10")
    loss = DeiTLTLoss(data["cls_num_list"].tolist())
    np.testing.assert_allclose(loss.balanced_weights.numpy(), data["drw_weights"], **F64)
    np.testing.assert_array_equal(loss.balanced_weights.float().numpy(), data["drw_weights_f32"])
    np.testing.assert_array_equal(data["teacher_logits"].argmax(1), data["teacher_argmax"])


def test_drw_reweights_only_the_distillation_head():
    loss = DeiTLTLoss([100, 30, 10, 3], drw_epoch=5)
    loss.set_epoch(4)
    assert loss.weights_for(torch.zeros(1)) == (None, None)
    loss.set_epoch(5)
    base_weights, distillation_weights = loss.weights_for(torch.zeros(1))
    assert base_weights is None and distillation_weights is not None

    aux = {name: torch.randn(6, 4) for name in ("cls_logits", "dist_logits", "teacher_logits")}
    targets = torch.randint(0, 4, (6,))
    loss(ModelOutput(logits=aux["cls_logits"], aux=aux), targets)
    before = DeiTLTLoss([100, 30, 10, 3], drw_epoch=5)
    before(ModelOutput(logits=aux["cls_logits"], aux=aux), targets)
    torch.testing.assert_close(loss.parts["cls"], before.parts["cls"])
    teacher_labels = aux["teacher_logits"].argmax(1)
    weighted = torch.nn.functional.cross_entropy(aux["dist_logits"], teacher_labels, weight=distillation_weights)
    torch.testing.assert_close(loss.parts["dist"], 0.5 * weighted)


def test_deit_lt_input_errors():
    with pytest.raises(LongtailError, match="not class-weighted"):
        DeiTLTLoss([10, 5], distillation="soft", drw_epoch=3)
    with pytest.raises(LongtailError, match="'hard' or 'soft'"):
        DeiTLTLoss([10, 5], distillation="kl")
    aux = {"cls_logits": torch.randn(2, 2), "dist_logits": torch.randn(2, 2)}
    with pytest.raises(LongtailError, match="teacher_logits"):
        DeiTLTLoss([10, 5])(ModelOutput(logits=aux["cls_logits"], aux=aux), torch.tensor([0, 1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_deit_lt_loss_on_cuda_matches_cpu():
    aux = {name: torch.randn(6, 4, dtype=torch.float64) for name in ("cls_logits", "dist_logits", "teacher_logits")}
    targets = torch.randint(0, 4, (6,))
    loss = DeiTLTLoss([100, 30, 10, 3], drw_epoch=0, weighted_base=True)
    values = [
        loss(ModelOutput(logits=aux["cls_logits"].to(device), aux={k: v.to(device) for k, v in aux.items()}),
             targets.to(device)).cpu()
        for device in ("cpu", "cuda")
    ]
    torch.testing.assert_close(values[0], values[1])
