"""Trainer hooks for reports and selection: per-image numbers (``aux['<name>_per_image']``) averaged into the
main head's metrics, summary and table; best-epoch selection by ``Method.selection_score`` (with or without a
validation split) and by validation top-1 otherwise."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from tiny import TINY_DIGITS_DATA
from torch import nn

from longtail.config import (
    RunConfig,
    apply_overrides,
    from_dict,
    parse_overrides,
)
from longtail.engine.trainer import Trainer, train
from longtail.evaluation.evaluator import format_table
from longtail.evaluation.report import format_shot_table
from longtail.methods.baselines import ERM
from longtail.methods.runs import BEST, load_checkpoint
from longtail.models.base import SingleHeadNetwork
from longtail.models.output import ModelOutput

TINY = {
    "data": TINY_DIGITS_DATA,
    "model": {"name": "resnet32"},
    "optim": {"lr": 0.05},
    "schedule": {"name": "constant", "epochs": 3},
    "train": {"progress": False},
}
SCORES = {1: 0.2, 2: 0.9, 3: 0.5}  # by 1-based epoch: epoch 2 is the best


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class MeanColourModel(SingleHeadNetwork):
    """Logits from the mean colour of the image: trains in milliseconds."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


@pytest.fixture
def tiny_model(monkeypatch):
    monkeypatch.setattr(ERM, "build_model", lambda self: MeanColourModel(self.info.num_classes))


def tiny_config(*overrides: str) -> RunConfig:
    return from_dict(apply_overrides(TINY, parse_overrides(list(overrides))))


def read_log(run_dir) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- per-image numbers


def test_per_image_numbers_reach_the_main_head_summary_results_and_table(tmp_path, monkeypatch, tiny_model):
    def predict(self, model: nn.Module, images: torch.Tensor, meta: Any = None) -> ModelOutput:
        output = model(images)
        output.aux["first_logit_per_image"] = output.logits[:, 0]
        output.aux["pair_per_image"] = torch.ones(len(images), 2)  # not (B,): not a per-image number
        return output

    monkeypatch.setattr(ERM, "predict", predict)
    trainer = Trainer(tiny_config("schedule.epochs=1", "eval.logit_adjust_tau=1.0"), tmp_path)
    try:
        summary = trainer.fit()
        found = trainer.evaluator.collect(trainer.model, trainer.splits.test)
    finally:
        trainer.close()
    assert set(found.per_image) == {"first_logit"}
    torch.testing.assert_close(found.per_image["first_logit"], found.heads["main"][:, 0])
    average = found.heads["main"][:, 0].mean().item()
    assert summary["last_test"]["main"]["first_logit"] == pytest.approx(average)
    assert "first_logit" not in summary["last_test"]["logit_adjusted"]
    results = json.loads((tmp_path / "report" / "last_test" / "results.json").read_text())
    assert results["metrics"]["first_logit"] == pytest.approx(average)
    header, *rows = summary["table"].splitlines()
    assert header.split()[-1] == "first_logit"
    last_test = next(row for row in rows if row.startswith("last test "))
    assert float(last_test.split()[-1]) == pytest.approx(average, rel=1e-3)
    assert next(row for row in rows if row.startswith("last test logit_adjusted")).split()[-1] == "-"


def test_the_table_is_the_shot_table_without_per_image_numbers():
    metrics = {"top1": 0.5, "many": 0.6, "medium": 0.5, "few": 0.1, "shot_sizes": {"many": 3, "medium": 4, "few": 3}}
    rows = {"last test": metrics, "best test": metrics}
    assert format_table(rows) == format_shot_table(rows)


# ---------------------------------------------------------------- best-epoch selection


@pytest.mark.parametrize("val_per_class", [0, 5])
def test_the_method_score_selects_the_best_epoch_with_or_without_validation(
    tmp_path, monkeypatch, tiny_model, val_per_class
):
    records = []

    def selection_score(self, record: dict[str, Any]) -> float:
        records.append(dict(record))
        return SCORES[record["epoch"]]

    monkeypatch.setattr(ERM, "selection_score", selection_score)
    summary = train(tiny_config(f"data.val_per_class={val_per_class}"), tmp_path)
    assert [record["epoch"] for record in records] == [1, 2, 3]
    assert all("loss" in record for record in records)
    assert all(("val_top1" in record) == (val_per_class > 0) for record in records)
    assert load_checkpoint(tmp_path / BEST)["best"]["epoch"] == 2
    assert (summary["best_epoch"], summary["best_metric"], summary["best_metric_name"]) == (2, 0.9, "selection_score")
    assert "best_test" in summary and ("best_val" in summary) == (val_per_class > 0)


def test_without_a_method_score_validation_top1_selects(tmp_path, tiny_model):
    summary = train(tiny_config(), tmp_path)
    accuracies = [record["val_top1"] for record in read_log(tmp_path)]
    best = max(range(len(accuracies)), key=lambda i: (accuracies[i], -i))  # the first of equals
    assert (summary["best_epoch"], summary["best_metric"]) == (best + 1, accuracies[best])
    assert summary["best_metric_name"] == "val_top1"
    assert load_checkpoint(tmp_path / BEST)["best"]["epoch"] == best + 1


def test_without_validation_or_method_score_nothing_is_selected(tmp_path, tiny_model):
    summary = train(tiny_config("data.val_per_class=0", "schedule.epochs=1"), tmp_path)
    assert not (tmp_path / BEST).exists()
    assert summary["best_epoch"] is None and summary["best_metric"] is None
    assert "last_test" in summary and "best_test" not in summary
