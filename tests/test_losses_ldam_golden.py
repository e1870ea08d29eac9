"""LDAM / DRW parity with RIDE's official ``LDAMLoss`` (../shared/golden/ldam_*.npz, README §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail.losses import LDAMLoss, effective_number_weights, ldam_loss, ldam_margins
from longtail.models.output import ModelOutput

FIXTURES = ("ldam_C10_B32", "ldam_C100_B64_randcounts")
CASES = ("noDRW", "DRW", "reweight_epoch_minus1")
F64 = {"rtol": 1e-10, "atol": 1e-12}
F32 = {"rtol": 1e-5, "atol": 1e-6}

pytestmark = pytest.mark.shared


def _official_case(manifest, stem: str, case: str) -> tuple[int | None, int]:
    """(drw_epoch, 0-based epoch) for RIDE's 1-based ``epoch > reweight_epoch`` (-1 = never)."""
    params = manifest[stem]["cases"][case]
    reweight_epoch = params["reweight_epoch"]
    return (None if reweight_epoch == -1 else reweight_epoch), params["epoch"] - 1


def _run(loss: LDAMLoss, logits: np.ndarray, targets: np.ndarray, dtype: torch.dtype):
    z = torch.tensor(logits, dtype=dtype, requires_grad=True)
    y = torch.as_tensor(targets)
    value = loss(ModelOutput(logits=z), y)
    value.backward()
    return value.detach(), z.grad, loss.margin_logits(z.detach(), y)


@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("case", CASES)
def test_ldam_module_matches_official_float64(load_golden, golden_manifest, stem, case):
    g = load_golden(stem)
    drw_epoch, epoch = _official_case(golden_manifest, stem, case)
    loss = LDAMLoss(g["cls_num_list"].tolist(), max_m=0.5, s=30, drw_epoch=drw_epoch)
    loss.set_epoch(epoch)
    value, grad, margin_logits = _run(loss, g["logits"], g["targets"], torch.float64)

    np.testing.assert_allclose(value.numpy(), g[f"loss_{case}"], **F64)
    np.testing.assert_allclose(grad.numpy(), g[f"grad_logits_{case}"], **F64)
    np.testing.assert_allclose(margin_logits.numpy(), g[f"final_output_{case}"], **F64)
    np.testing.assert_allclose(loss.margins.numpy(), g["m_list"], **F64)
    expected_weights = g[f"per_cls_weights_{case}"]
    if expected_weights.size == 0:
        assert loss.class_weights() is None
    else:
        np.testing.assert_allclose(loss.class_weights().numpy(), expected_weights, **F64)


@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("case", CASES)
def test_ldam_module_matches_official_float32(load_golden, golden_manifest, stem, case):
    g = load_golden(stem)
    drw_epoch, epoch = _official_case(golden_manifest, stem, case)
    loss = LDAMLoss(g["cls_num_list"].tolist(), drw_epoch=drw_epoch)
    loss.set_epoch(epoch)
    value, grad, _ = _run(loss, g["logits"], g["targets"], torch.float32)

    assert value.dtype == torch.float32
    np.testing.assert_allclose(value.numpy(), g[f"loss_{case}_f32"], **F32)
    np.testing.assert_allclose(grad.numpy(), g[f"grad_logits_{case}_f32"], **F32)


@pytest.mark.parametrize("stem", FIXTURES)
def test_weights_and_margins_match_official(load_golden, stem):
    g = load_golden(stem)
    counts = g["cls_num_list"]
    np.testing.assert_allclose(effective_number_weights(counts, 0.9999, torch.float64).numpy(), g["drw_weights"], **F64)
    np.testing.assert_allclose(ldam_margins(counts, 0.5, torch.float64).numpy(), g["m_list"], **F64)
    np.testing.assert_array_equal(ldam_margins(counts, 0.5, torch.float32).numpy(), g["m_list_f32"])


@pytest.mark.parametrize("stem", FIXTURES)
def test_functional_core_matches_official(load_golden, stem):
    g = load_golden(stem)
    logits = torch.tensor(g["logits"], dtype=torch.float64)
    targets = torch.as_tensor(g["targets"])
    margins = ldam_margins(g["cls_num_list"], 0.5, torch.float64)
    weights = torch.as_tensor(g["per_cls_weights_DRW"])
    np.testing.assert_allclose(ldam_loss(logits, targets, margins, 30.0).numpy(), g["loss_noDRW"], **F64)
    np.testing.assert_allclose(ldam_loss(logits, targets, margins, 30.0, weights).numpy(), g["loss_DRW"], **F64)


@pytest.mark.parametrize("stem", FIXTURES)
def test_unscaled_logits_option_is_the_original_ldam_drw_formula(load_golden, stem):
    """CE(s * (cos - m_y 1_y)) on cosines equals the pre-scaled form on s * cos."""
    g = load_golden(stem)
    cosines = torch.tensor(g["logits"], dtype=torch.float64) / 30.0
    targets = torch.as_tensor(g["targets"])
    margins = ldam_margins(g["cls_num_list"], 0.5, torch.float64)
    unscaled = ldam_loss(cosines, targets, margins, 30.0, scaled_logits=False)
    np.testing.assert_allclose(unscaled.numpy(), g["loss_noDRW"], **F64)
