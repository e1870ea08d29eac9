"""SimCLR: NT-Xent against a hand computation, labels never reaching the loss, the settings that would use labels,
the k-NN monitor, and a tiny run through the trainer followed by the feature export and its clustering."""

from __future__ import annotations

import contextlib
import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from longtail.cli.main import main
from longtail.config import apply_overrides, from_dict, parse_overrides
from longtail.data.containers import Batch
from longtail.errors import LongtailError
from longtail.methods.base import create_method
from longtail.methods.context import RunContext
from longtail.methods.recipes import resolve
from longtail.methods.simclr import NTXentLoss, SimCLR, nt_xent
from longtail.models.output import ModelOutput
from tiny import step_of

NUM_CLASSES = 4
BASE = {
    "method": {"name": "simclr", "args": {"hidden_dim": 16, "projection_dim": 8}},
    "data": {"val_per_class": 0, "batch_size": 8, "two_views": True},
    "model": {"name": "resnet32"},
    "loss": {"name": "nt-xent"},
    "schedule": {"epochs": 1},
}
TINY_SIMCLR = [  # the CIFAR recipe on digits-lt at 8x8: one epoch of seconds, 2 validation images per class
    "data.name=digits-lt",
    "data.imbalance=10",
    "data.val_per_class=2",
    "data.batch_size=64",
    "data.args.image_size=8",
    "schedule.epochs=1",
    "schedule.warmup_epochs=0",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.progress=false",
    "method.args.hidden_dim=32",
    "method.args.projection_dim=16",
]

pytestmark = pytest.mark.usefixtures("one_thread")


def make_method(*overrides: str) -> SimCLR:
    config = from_dict(apply_overrides(BASE, parse_overrides(list(overrides))))
    info = SimpleNamespace(num_classes=NUM_CLASSES, train_counts=[8] * NUM_CLASSES, num_train=32)
    return create_method(config, info)


def two_view_batch(targets: torch.Tensor, seed: int = 1) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    return Batch(images=torch.randn(8, 3, 8, 8, generator=generator), targets=targets, indices=torch.arange(8),
                 strong=torch.randn(8, 3, 8, 8, generator=generator))


def unit(degrees: float, length: float = 1.0) -> list[float]:
    return [length * math.cos(math.radians(degrees)), length * math.sin(math.radians(degrees))]


# ---------------------------------------------------------------------------------------------- the loss


def test_nt_xent_of_two_orthogonal_pairs_by_hand():
    # rows [a, b, a, b]: each row's positive has cosine 1, its two negatives cosine 0
    projections = torch.tensor([unit(0), unit(90, 3.0), unit(0, 2.0), unit(90)])
    expected = math.log(1 + 2 * math.exp(-1 / 0.5))  # -log(e^(1/tau) / (e^(1/tau) + 2 e^0))
    assert nt_xent(projections, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_of_two_pairs_at_known_angles_by_hand():
    # view 1 = rows 0, 1 at 0 and 90 degrees; view 2 = rows 2, 3 at 60 and 180 degrees; pairs (0, 2), (1, 3)
    angles, tau = [0.0, 90.0, 60.0, 180.0], 0.5
    positive = {0: 2, 1: 3, 2: 0, 3: 1}
    total = 0.0
    for i in range(4):
        logits = {k: math.cos(math.radians(angles[i] - angles[k])) / tau for k in range(4) if k != i}
        total += -logits[positive[i]] + math.log(sum(math.exp(value) for value in logits.values()))
    projections = torch.tensor([unit(angle, length) for angle, length in zip(angles, (1.0, 2.0, 0.5, 3.0))])
    assert nt_xent(projections, tau).item() == pytest.approx(total / 4, rel=1e-6)


def test_identical_views_cost_less_than_unrelated_ones():
    generator = torch.Generator().manual_seed(0)
    first, unrelated = torch.randn(32, 16, generator=generator), torch.randn(32, 16, generator=generator)
    same = nt_xent(torch.cat([first, first]), 0.5)
    random = nt_xent(torch.cat([first, unrelated]), 0.5)
    assert same < random - 1.0
    assert random.item() == pytest.approx(math.log(63), abs=0.5)  # about chance among 2B - 1 candidates


def test_loss_module_reads_the_stacked_views_and_refuses_bad_input():
    projections = torch.randn(8, 4)
    loss = NTXentLoss(temperature=0.2)(ModelOutput(logits=projections))
    assert loss.item() == pytest.approx(nt_xent(projections, 0.2).item())
    with pytest.raises(LongtailError, match="two views"):
        nt_xent(torch.randn(5, 4), 0.5)
    with pytest.raises(LongtailError, match="temperature"):
        NTXentLoss(temperature=0.0)


def test_labels_never_reach_the_loss():
    losses = []
    for targets in (torch.arange(8) % NUM_CLASSES, torch.randperm(8) % NUM_CLASSES, torch.full((8,), -7)):
        torch.manual_seed(0)
        method = make_method()
        model = method.build_model()
        criterion = method.build_loss(method.config.loss)
        losses.append([method.training_step(model, two_view_batch(targets, seed), criterion, step_of(0))[0].item()
                       for seed in (1, 2)])
    assert losses[0] == losses[1] == losses[2]


def test_the_model_projects_backbone_features_and_selection_is_the_lowest_loss():
    method = make_method()
    output = method.build_model()(torch.randn(3, 3, 8, 8))
    assert output.features.shape == (3, 64) and output.logits.shape == (3, 8)
    assert method.selection_score({"loss": 2.5}) == -2.5 and method.selection_score({"loss": 2.0}) > -2.5


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.sampler=class-balanced", "label-free sampler"),
        ("data.two_views=false", "two_views=true"),
        ("loss.name=ce", "loss.name=nt-xent"),
        ("method.args.projection_dim=0", "projection_dim"),
        ("method.args.knn_k=0", "knn_k"),
    ],
)
def test_settings_that_would_use_labels_or_make_no_sense_are_refused(override, message):
    with pytest.raises(LongtailError, match=message):
        make_method(override)


def test_one_view_batches_are_refused():
    method = make_method()
    with pytest.raises(LongtailError, match="two_views=true"):
        method.training_step(method.build_model(), Batch(torch.randn(8, 3, 8, 8), torch.zeros(8), torch.arange(8)),
                             method.build_loss(method.config.loss), step_of(0))


# ---------------------------------------------------------------------------------------------- the k-NN monitor


def test_knn_monitor_predicts_training_images_by_their_own_label_and_refits_after_training():
    from longtail.distributed import DistContext
    from longtail.evaluation.evaluator import Evaluator
    from longtail.methods.context import create_datasets_for

    config = resolve("simclr-cifar10-lt-if100", [*TINY_SIMCLR, "method.args.knn_k=1"])
    splits = create_datasets_for(config)
    method = create_method(config, splits.info)
    method.attach(RunContext(config, torch.device("cpu"), splits))
    model = method.build_model()
    evaluator = Evaluator(config, method, splits.info, torch.device("cpu"), DistContext())
    heads, targets = evaluator.predictions(model, splits.train)
    assert torch.equal(heads["main"].argmax(dim=1), targets)  # 1-NN of a training image is itself
    fitted = method._knn
    evaluator.predictions(model, splits.val)
    assert method._knn is fitted
    method.training_step(model, two_view_batch(torch.zeros(8, dtype=torch.int64)),
                         method.build_loss(config.loss), step_of(0))
    evaluator.predictions(model, splits.val)
    assert method._knn is not fitted


# ---------------------------------------------------------------------------------------------- the trainer


@pytest.mark.slow
def test_simclr_trains_through_the_trainer_and_exports_clusterable_features(tmp_path):
    from longtail.engine.trainer import train
    from longtail.methods.runs import load_trained_model
    from longtail.methods.context import create_datasets_for

    config = resolve("simclr-cifar10-lt-if100", TINY_SIMCLR)
    summary = train(config, tmp_path / "run")

    assert summary["best_metric_name"] == "-loss" and summary["best_epoch"] == 1
    assert 0.0 <= summary["last_test"]["main"]["top1"] <= 1.0  # the k-NN monitor's accuracy
    out = tmp_path / "features.npz"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["predict", str(tmp_path / "run"), "--features", str(out), "--split", "train"]) == 0
    train_split = create_datasets_for(config).train
    with np.load(out) as data:
        features, targets, counts = data["features"], data["targets"], data["train_counts"]
    assert features.shape == (len(train_split), 64) and np.isfinite(features).all()
    assert np.array_equal(targets, train_split.targets) and counts.sum() == len(train_split)
    trained = load_trained_model(tmp_path / "run")
    first = torch.stack([train_split[i][0] for i in range(4)])
    first = (first.float() / 255 - torch.tensor(train_split.mean).view(1, 3, 1, 1)) / torch.tensor(
        train_split.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = trained.model.forward_features(first).numpy()
    assert np.allclose(features[:4], expected, atol=1e-4)

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["cluster", "--features", str(out), "--methods", "kmeans"]) == 0
    assert "kmeans" in printed.getvalue()


def test_predict_without_images_or_features_says_what_to_give(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.pt")]) == 2
    assert "IMAGE" in capsys.readouterr().err
