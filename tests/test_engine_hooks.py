"""Engine hooks for methods and models: ``Method.extra_metrics`` in every head's metrics and the summary,
``train.ema_eval``, the run context and step info, ``Network.set_epoch`` and meta-information (``model(x, meta=...)`` and the ``no_meta`` head),
``model.activation_options``."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tiny import TINY_DIGITS_DATA
from torch import nn

import longtail.engine.trainer as trainer_module
from longtail.config import (
    RunConfig,
    apply_overrides,
    from_dict,
    parse_overrides,
)
from longtail.engine.checkpoint import load_initial_weights
from longtail.engine.trainer import Trainer, train
from longtail.errors import LongtailError
from longtail.evaluation.evaluator import summarize
from longtail.methods.base import Method, accepts_meta
from longtail.methods.baselines import ERM
from longtail.methods.context import RunContext, StepInfo
from longtail.methods.runs import load_checkpoint
from longtail.models import create
from longtail.models.activations import AGLU
from longtail.models.base import Network
from longtail.models.output import ModelOutput

TINY = {
    "data": TINY_DIGITS_DATA,
    "model": {"name": "resnet32"},
    "optim": {"lr": 0.05},
    "schedule": {"name": "constant", "epochs": 2},
    "train": {"progress": False},
}
META_DIM = 4


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(*overrides: str) -> RunConfig:
    return from_dict(apply_overrides(TINY, parse_overrides(list(overrides))))


class TinyMetaModel(Network):
    """Logits from the mean colour of the image plus, when given, a linear map of ``meta['attributes']``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(3, num_classes)
        self.meta_head = nn.Linear(META_DIM, num_classes)
        self.epochs_seen: list[int] = []
        self.meta_batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def replace_heads(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        self.head = fn(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, meta: dict[str, torch.Tensor] | None = None) -> ModelOutput:
        features = self.forward_features(x)
        logits = self.head(features)
        if meta:
            self.meta_batches += 1
            logits = logits + self.meta_head(meta["attributes"])
        return ModelOutput(logits=logits, features=features)


class PlainModel(nn.Module):
    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(logits=x.flatten(1), features=None)


def test_predict_adds_the_no_meta_head_only_for_models_given_meta():
    method = Method(RunConfig(), SimpleNamespace(num_classes=3))
    model = TinyMetaModel(3)
    images, meta = torch.randn(2, 3, 4, 4), {"attributes": torch.randn(2, META_DIM)}
    output = method.predict(model, images, meta)
    assert torch.equal(output.aux["no_meta_logits"], model(images).logits)
    assert not torch.allclose(output.logits, output.aux["no_meta_logits"])
    assert "no_meta_logits" not in method.predict(model, images).aux
    assert accepts_meta(model) and not accepts_meta(PlainModel())
    assert "no_meta_logits" not in method.predict(PlainModel(), torch.randn(2, 3), meta).aux


def with_meta(monkeypatch) -> None:
    """Every split of the datasets gets random ``attributes`` meta; ERM builds a TinyMetaModel."""
    original = trainer_module.create_datasets_for

    def create_datasets_for(config: RunConfig) -> Any:
        splits = original(config)
        generator = torch.Generator().manual_seed(0)
        for split in (splits.train, splits.val, splits.test):
            split.meta["attributes"] = torch.randn(len(split), META_DIM, generator=generator)
        return splits

    monkeypatch.setattr(trainer_module, "create_datasets_for", create_datasets_for)
    monkeypatch.setattr(ERM, "build_model", lambda self: TinyMetaModel(self.info.num_classes))


def test_trainer_sets_the_epoch_passes_meta_and_reports_the_no_meta_head(tmp_path, monkeypatch):
    with_meta(monkeypatch)
    trainer = Trainer(tiny_config(), tmp_path)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    assert trainer.model.epochs_seen == [0, 1]
    assert trainer.model.meta_batches > 0
    assert {"main", "no_meta"} <= summary["last_test"].keys()
    results = json.loads((tmp_path / "report" / "last_test" / "results.json").read_text())
    assert "no_meta" in results["heads"]


def test_a_model_that_is_not_a_network_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(ERM, "build_model", lambda self: PlainModel())
    with pytest.raises(LongtailError, match="PlainModel, not a longtail.models.base.Network: subclass Network"):
        Trainer(tiny_config(), tmp_path)


def test_a_loss_that_is_not_a_longtail_loss_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(ERM, "build_loss", lambda self, loss: nn.CrossEntropyLoss())
    trainer = Trainer(tiny_config(), tmp_path)
    try:
        with pytest.raises(LongtailError, match="CrossEntropyLoss, not a longtail.losses.Loss: subclass Loss"):
            trainer.fit()
    finally:
        trainer.close()


def test_methods_get_the_run_context_and_each_steps_place_in_optimiser_steps(tmp_path, monkeypatch):
    seen: list[StepInfo] = []
    contexts: list[RunContext] = []
    original_step, original_setup = ERM.training_step, ERM.setup

    def training_step(self, model, batch, criterion, step):
        seen.append(step)
        return original_step(self, model, batch, criterion, step)

    def setup(self, context):
        contexts.append(context)
        original_setup(self, context)

    monkeypatch.setattr(ERM, "training_step", training_step)
    monkeypatch.setattr(ERM, "setup", setup)
    trainer = Trainer(tiny_config("train.accumulate_steps=2"), tmp_path)
    try:
        trainer.fit()
    finally:
        trainer.close()
    (context,) = contexts
    assert context.splits is trainer.splits and context.device == trainer.device and context.world_size == 1
    assert trainer.method.context is context
    batches = len(trainer.splits.train) // TINY["data"]["batch_size"]
    steps = -(-batches // 2)
    assert [(s.epoch, s.step) for s in seen] == [(e, b // 2) for e in range(2) for b in range(batches)]
    assert {(s.stage_epochs, s.steps_per_epoch) for s in seen} == {(2, steps)}
    assert seen[0].progress == 0.0 and seen[-1].progress == pytest.approx((2 * steps - 1) / (2 * steps))


def test_extra_metrics_reach_every_head_and_the_summary(tmp_path, monkeypatch):
    def extra_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"head": float(metrics["per_class"][0]), "mid": 0.5, "tail": 0.25, "not_summarised": 1.0}

    monkeypatch.setattr(ERM, "extra_metrics", extra_metrics)
    summary = train(tiny_config("schedule.epochs=1", "eval.logit_adjust_tau=1.0"), tmp_path)
    for head in ("main", "logit_adjusted"):
        assert summary["last_test"][head]["mid"] == 0.5 and summary["last_test"][head]["tail"] == 0.25
        assert "not_summarised" not in summary["last_test"][head]
    results = json.loads((tmp_path / "report" / "last_test" / "results.json").read_text())
    assert results["metrics"]["not_summarised"] == 1.0 and results["heads"]["logit_adjusted"]["not_summarised"] == 1.0


def test_summary_leaves_out_rank_groups_that_are_absent():
    metrics = {"top1": 0.5, "top5": 0.9, "many": 0.6, "medium": 0.5, "few": 0.1}
    assert summarize({"main": metrics}) == {"main": metrics}


@pytest.mark.parametrize("ema_eval", [True, False])
def test_ema_eval_chooses_the_evaluated_weights(tmp_path, ema_eval):
    config = tiny_config("schedule.epochs=1", "train.ema_decay=0.5", f"train.ema_eval={str(ema_eval).lower()}")
    trainer = Trainer(config, tmp_path)
    try:
        trainer.fit()
        assert (trainer._eval_model() is trainer.ema.module) == ema_eval
        assert (trainer._eval_model() is trainer.model) != ema_eval
    finally:
        trainer.close()


def test_activation_options_reach_replace_activations():
    model = create("resnet32", num_classes=10, activation="aglu", activation_options={"per_channel": True})
    sizes = {module.kappa_param.numel() for module in model.modules() if isinstance(module, AGLU)}
    assert max(sizes) > 1
    with pytest.raises(LongtailError, match="no activation"):
        create("resnet32", num_classes=10, activation_options={"per_channel": True})
    config = tiny_config("model.activation=aglu", "model.activation_options.per_channel=true")
    assert config.model.activation_options == {"per_channel": True}


def test_init_checkpoint_starts_from_the_weights_but_a_new_classifier(tmp_path):
    source = create("resnet32", num_classes=5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pt")
    target = create("resnet32", num_classes=10)
    skipped = load_initial_weights(target, tmp_path / "w.pt")
    assert skipped == ["head.bias", "head.weight"]
    torch.testing.assert_close(target.conv1.weight, source.conv1.weight)
    torch.save({"other": torch.zeros(3)}, tmp_path / "unrelated.pt")
    with pytest.raises(LongtailError, match="saved from another model: only 0 of the"):
        load_initial_weights(target, tmp_path / "unrelated.pt")
    with pytest.raises(LongtailError, match="does not exist"):
        load_initial_weights(target, tmp_path / "missing.pt")


def test_trainer_starts_from_init_checkpoint(tmp_path):
    train(tiny_config("schedule.epochs=1"), tmp_path / "first")
    config = tiny_config("schedule.epochs=1", f"model.init_checkpoint={tmp_path / 'first'}")
    trainer = Trainer(config, tmp_path / "second")
    try:
        trained = load_checkpoint(tmp_path / "first")["model"]
        torch.testing.assert_close(trainer.model.state_dict()["conv1.weight"], trained["conv1.weight"])
    finally:
        trainer.close()
