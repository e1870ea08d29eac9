"""The SHIKE method: stage 1 trains all but the second head set, stage 2 changes only the new heads (every
other parameter and BatchNorm buffer unchanged), the head switch is replayed on load, DKF output shapes,
and stage 1 + 2 through the trainer with the accuracy before and after the re-training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from longtail.config import apply_overrides, from_dict, parse_overrides
from longtail.data.containers import Batch
from longtail.engine.trainer import frozen_modules
from longtail.errors import LongtailError
from longtail.methods.base import create_method
from longtail.methods.shike import SHIKE
from tiny import step_of

COUNTS = [40, 25, 16, 10, 6, 4, 3, 2, 2, 1]
BASE = {
    "method": {"name": "shike"},
    "model": {"name": "shike_resnet32", "args": {"num_experts": 3, "expert_depths": [2, 1, 2]}},
    "loss": {"name": "shike"},
    "schedule": {"name": "cosine", "epochs": 2},
    "stages": [
        {
            "name": "balanced_retrain",
            "epochs": 1,
            "trainable": "head",
            "loss": {"name": "shike", "args": {"balanced": True}},
        }
    ],
}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_method(*overrides: str, base: dict = BASE) -> SHIKE:
    config = from_dict(apply_overrides(base, parse_overrides(list(overrides))))
    return create_method(config, SimpleNamespace(num_classes=len(COUNTS), train_counts=COUNTS))


def batch(size: int = 16, seed: int = 1) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    return Batch(
        images=torch.randn(size, 3, 8, 8, generator=generator),
        targets=torch.randint(0, len(COUNTS), (size,), generator=generator),
        indices=torch.arange(size),
    )


def set_up_stage(method: SHIKE, model: torch.nn.Module, stage) -> list[torch.nn.Parameter]:
    """The trainer's set-up of a stage: prepare, freeze all but its parameters, frozen modules in eval."""
    method.prepare_stage(stage, model)
    params = method.trainable_parameters(stage, model)
    trainable = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    model.train()
    for module in frozen_modules(model):
        module.eval()
    return params


def run_stage(method: SHIKE, model: torch.nn.Module, stage_index: int, steps: int = 3) -> None:
    """A few SGD steps of one stage, set up as the trainer does: prepare, freeze, frozen modules in eval."""
    stage = method.stages()[stage_index]
    params = set_up_stage(method, model, stage)
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    criterion = method.build_loss(stage.loss)
    for step in range(steps):
        optimizer.zero_grad()
        loss, _ = method.training_step(model, batch(seed=step), criterion, step_of(0))
        loss.backward()
        optimizer.step()


@torch.no_grad()
def settle_batchnorm(model: torch.nn.Module) -> None:
    """Running statistics = the average over a few batches, as after a long stage 1: with the initial ones
    (mean 0, variance 1) the frozen, almost untrained model's activations overflow in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    for seed in range(4):
        model(batch(seed=100 + seed).images)
    for norm in norms:
        norm.momentum = 0.1


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def test_stage1_trains_everything_but_the_second_head_set():
    method = make_method()
    model = method.build_model()
    before = snapshot(model)
    run_stage(method, model, 0)
    after = model.state_dict()

    assert model.head_set == "main"
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert not any(name.startswith("retrain_heads.") for name in changed)
    assert any(name.startswith("heads.") for name in changed)
    assert any(name.startswith("experts.") and "shallow" in name for name in changed)
    assert any(name.endswith("running_mean") for name in changed)


def test_stage2_changes_only_the_new_heads():
    method = make_method()
    model = method.build_model()
    run_stage(method, model, 0)
    settle_batchnorm(model)
    before = snapshot(model)
    run_stage(method, model, 1)
    after = model.state_dict()

    assert all(torch.isfinite(p).all() for p in model.retrain_heads.parameters())

    assert model.head_set == "retrain"
    assert model.head_modules() == list(model.retrain_heads)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    retrain_names = {name for name in before if name.startswith("retrain_heads.")}
    assert changed == retrain_names  # every new head changed; no other parameter or BatchNorm buffer did


def test_predictions_before_and_after_the_head_switch_and_replay_on_load():
    method = make_method()
    model = method.build_model()
    run_stage(method, model, 0, steps=1)
    settle_batchnorm(model)
    run_stage(method, model, 1, steps=1)
    images = batch().images
    model.eval()
    with torch.no_grad():
        output = method.predict(model, images)
        main_heads = torch.stack([head(f) for head, f in zip(model.heads, output.expert_features)])
        new_heads = torch.stack([head(f) for head, f in zip(model.retrain_heads, output.expert_features)])
    torch.testing.assert_close(output.logits, new_heads.mean(0))
    torch.testing.assert_close(output.aux["stage1_logits"], main_heads.mean(0))

    reloaded = method.build_model()
    for stage in method.stages():
        method.prepare_stage(stage, reloaded)
    reloaded.load_state_dict(model.state_dict())
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(method.predict(reloaded, images).logits, output.logits)

    method.prepare_stage(method.stages()[0], model)
    with torch.no_grad():
        stage1_output = method.predict(model, images)
    assert "stage1_logits" not in stage1_output.aux
    torch.testing.assert_close(stage1_output.logits, main_heads.mean(0))


def test_dkf_output_shapes_in_the_training_step():
    method = make_method()
    model = method.build_model()
    stage = method.stages()[0]
    method.prepare_stage(stage, model)
    loss, output = method.training_step(model, batch(size=6), method.build_loss(stage.loss), step_of(0))
    assert output.expert_logits.shape == (3, 6, len(COUNTS))
    assert output.expert_features.shape == (3, 6, 64)
    assert output.logits.shape == (6, len(COUNTS))
    assert [branch.depth for branch in model.experts] == [2, 1, 2]
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_later_stages_must_train_the_heads_only_and_the_model_must_have_two_head_sets():
    with pytest.raises(LongtailError, match="trainable: head"):
        make_method("stages.0.trainable=all").stages()
    method = make_method(base={**BASE, "model": {"name": "resnet32"}})
    with pytest.raises(LongtailError, match="second head set"):
        method.prepare_stage(method.stages()[0], method.build_model())


@pytest.mark.slow
def test_stage2_through_the_trainer_reports_accuracy_before_and_after(tmp_path, tiny_digits_run):
    from longtail.methods.recipes import resolve
    from longtail.engine.trainer import train
    from longtail.methods.runs import CHECKPOINT, load_checkpoint

    tiny = [*tiny_digits_run, "train.deterministic=true"]
    stage1_only = train(resolve("digits-shike", [*tiny, "stages=[]"]), tmp_path / "stage1")
    both = train(resolve("digits-shike", [*tiny, "stages.0.epochs=1"]), tmp_path / "both")

    assert both["last_test"]["stage1"]["top1"] == stage1_only["last_test"]["main"]["top1"]
    weights_stage1 = load_checkpoint(tmp_path / "stage1" / CHECKPOINT)["model"]
    weights_both = load_checkpoint(tmp_path / "both" / CHECKPOINT)["model"]
    for name, value in weights_stage1.items():
        same = torch.equal(value, weights_both[name])
        assert same != name.startswith("retrain_heads."), name


def stage2_step(method: SHIKE, model: torch.nn.Module, lr: float, weight_decay: float) -> None:
    """One stage-2 step as the trainer runs it: freeze, frozen modules in eval, the method's optimiser groups."""
    stage = method.stages()[1]
    params = set_up_stage(method, model, stage)
    groups = method.param_groups(stage, model, params)
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    optimizer.zero_grad(set_to_none=True)
    loss, _ = method.training_step(model, batch(), method.build_loss(stage.loss), step_of(0))
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("official", [False, True])
def test_stage2_train_mode_lets_the_frozen_batchnorm_use_and_update_batch_statistics(official):
    # cifarTrain.py line 237: model.train() in every epoch, stage 2 included
    method = make_method(f"method.args.stage2_train_mode={official}")
    model = method.build_model()
    settle_batchnorm(model)
    norm = model.trunk.lower.bn1  # the stem's, frozen in stage 2
    running_mean = norm.running_mean.clone()
    stage2_step(method, model, lr=0.1, weight_decay=0.0)
    assert norm.training == official
    assert torch.equal(norm.running_mean, running_mean) != official


@pytest.mark.parametrize("official", [False, True])
def test_stage2_decay_frozen_shrinks_the_frozen_backbone_by_lr_times_weight_decay(official):
    # cifarTrain.py lines 103-104 and 248: every parameter in the stage-2 SGD, frozen ones with zero gradients
    method = make_method(f"method.args.stage2_decay_frozen={official}")
    model = method.build_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    stage2_step(method, model, lr=0.1, weight_decay=0.01)
    for name, p in model.named_parameters():
        if name.startswith("retrain_heads."):
            continue
        expected = before[name] * (1 - 0.1 * 0.01) if official else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0.0)
        assert p.grad is None or not p.grad.any()
