"""The MDCS method: one forward pass over both views, no consistency gradient into the weak view, per-expert
logit adjustment in training only, one source for λ, and a tiny run through the trainer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from longtail.config import apply_overrides, from_dict, parse_overrides
from longtail.data.containers import Batch
from longtail.errors import LongtailError
from longtail.methods.base import create_method
from longtail.methods.mdcs import MDCS, MDCSLoss
from tiny import step_of

COUNTS = [40, 25, 16, 10, 6, 4, 3, 2, 2, 1]
EXPONENTS = [-0.5, 1.0, 2.5]
BASE = {
    "method": {"name": "mdcs"},
    "data": {"two_views": True},
    "model": {"name": "ride_resnet32", "args": {"logit_adjust_exponents": EXPONENTS}},
    "loss": {"name": "mdcs"},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_method(*overrides: str, base: dict | None = None) -> MDCS:
    config = from_dict(apply_overrides(base or BASE, parse_overrides(list(overrides))))
    return create_method(config, SimpleNamespace(num_classes=len(COUNTS), train_counts=COUNTS))


def two_view_batch(size: int = 12, image_size: int = 8) -> Batch:
    generator = torch.Generator().manual_seed(1)
    return Batch(
        images=torch.randn(size, 3, image_size, image_size, generator=generator),
        targets=torch.randint(0, len(COUNTS), (size,), generator=generator),
        indices=torch.arange(size),
        strong=torch.randn(size, 3, image_size, image_size, generator=generator),
    )


def test_one_forward_pass_over_weak_then_strong_rows():
    method = make_method()
    model = method.build_model()
    batch = two_view_batch()
    inputs = []
    model.register_forward_hook(lambda module, args, output: inputs.append(args[0]))

    loss, output = method.training_step(model, batch, method.build_loss(method.config.loss), step_of(0))

    assert len(inputs) == 1
    assert torch.equal(inputs[0], torch.cat([batch.images, batch.strong]))
    assert output.expert_logits.shape == (3, 2 * len(batch), len(COUNTS))
    assert loss.ndim == 0 and torch.isfinite(loss)


def confident_targets(method: MDCS, model: torch.nn.Module, batch: Batch) -> Batch:
    """The batch with half of its labels set to the first expert's adjusted weak-view argmax, so that
    confident instance sampling keeps some rows (the forward pass is deterministic in train mode)."""
    with torch.no_grad():
        expert_logits = model(torch.cat([batch.images, batch.strong])).expert_logits
        adjusted = model.adjusted_expert_logits(expert_logits, COUNTS)[:, : len(batch)]
    targets = batch.targets.clone()
    targets[::2] = adjusted[0].argmax(-1)[::2]
    return Batch(batch.images, targets, batch.indices, batch.strong)


def logit_gradient(method: MDCS, model, batch: Batch, criterion: MDCSLoss) -> torch.Tensor:
    model.zero_grad()
    loss, output = method.training_step(model, batch, criterion, step_of(30))
    output.expert_logits.retain_grad()
    loss.backward()
    return output.expert_logits.grad


def test_weak_view_gets_no_gradient_from_consistency_through_the_step():
    method = make_method()
    model = method.build_model()
    batch = confident_targets(method, model, two_view_batch())
    with_consistency = method.build_loss(method.config.loss)
    without_consistency = MDCSLoss(COUNTS, expert_exponents=EXPONENTS, consistency_weight=0.0)

    grad_with = logit_gradient(method, model, batch, with_consistency)
    assert with_consistency.parts["confident_fraction"] > 0
    assert with_consistency.parts["consistency"] > 0
    grad_without = logit_gradient(method, model, batch, without_consistency)

    weak, strong = slice(0, len(batch)), slice(len(batch), None)
    torch.testing.assert_close(grad_with[:, weak], grad_without[:, weak], rtol=0, atol=1e-7)
    assert (grad_with[:, strong] - grad_without[:, strong]).abs().max() > 1e-4


def test_training_uses_adjusted_logits_and_prediction_the_mean_of_raw_logits():
    method = make_method("loss.args.consistency_weight=0.0")
    model = method.build_model()
    batch = two_view_batch()

    loss, output = method.training_step(model, batch, method.build_loss(method.config.loss), step_of(0))
    adjusted = model.adjusted_expert_logits(output.expert_logits, COUNTS)
    both_targets = torch.cat([batch.targets, batch.targets])
    expected = sum(F.cross_entropy(adjusted[k], both_targets) for k in range(3))
    raw = sum(F.cross_entropy(output.expert_logits[k], both_targets) for k in range(3))
    torch.testing.assert_close(loss, expected)
    assert (loss - raw).abs() > 1e-2

    model.eval()
    with torch.no_grad():
        prediction = method.predict(model, batch.images)
    torch.testing.assert_close(prediction.logits, prediction.expert_logits.mean(0))
    mean_adjusted = model.adjusted_expert_logits(prediction.expert_logits, COUNTS).mean(0)
    assert (prediction.logits - mean_adjusted).abs().max() > 1.0


def test_exponents_are_given_once_and_reach_model_and_loss():
    from_model = make_method()
    assert from_model.build_model().logit_adjust_exponents == tuple(EXPONENTS)

    no_model_exponents = {**BASE, "model": {"name": "ride_resnet32"}}
    from_loss = make_method("loss.args.expert_exponents=[0.0, 1.0, 2.0]", base=no_model_exponents)
    assert from_loss.build_model().logit_adjust_exponents == (0.0, 1.0, 2.0)
    loss = from_loss.build_loss(from_loss.config.loss)
    torch.testing.assert_close(loss.adjustment[0], torch.zeros(len(COUNTS), dtype=torch.float64))

    default = make_method(base=no_model_exponents)
    assert default.build_model().logit_adjust_exponents == (-0.5, 1.0, 2.5)

    with pytest.raises(LongtailError, match="two different per-expert exponents"):
        make_method("loss.args.expert_exponents=[0.0, 1.0, 2.0]")


def test_single_view_configs_and_batches_are_rejected():
    with pytest.raises(LongtailError, match="two_views=true"):
        make_method("data.two_views=false")
    method = make_method()
    batch = two_view_batch()
    single = Batch(batch.images, batch.targets, batch.indices)
    with pytest.raises(LongtailError, match="two-view"):
        method.training_step(method.build_model(), single, method.build_loss(method.config.loss), step_of(0))


@pytest.mark.slow
def test_mdcs_trains_through_the_trainer(tmp_path, tiny_digits_run):
    from longtail.methods.recipes import resolve
    from longtail.engine.trainer import train
    from longtail.methods.runs import load_trained_model

    config = resolve("digits-mdcs", tiny_digits_run)
    summary = train(config, tmp_path / "run")

    record = (tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1]
    assert '"loss_consistency"' in record and '"loss_diversity"' in record
    assert {"main", "expert_0", "expert_1", "expert_2"} <= set(summary["last_test"])
    trained = load_trained_model(tmp_path / "run")
    assert trained.model.logit_adjust_exponents == tuple(EXPONENTS)
