"""The APA reference's recipe pieces: the CosNorm head, post-hoc IIF, Mixup / random erasing in ``erm``,
and its recipes resolving."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from longtail.config import RunConfig, total_epochs
from longtail.data.containers import Batch
from longtail.errors import LongtailError
from longtail.evaluation.posthoc import posthoc_iif
from longtail.losses import create as create_loss
from longtail.methods.baselines import ERM
from longtail.methods.recipes import resolve
from longtail.models import create
from longtail.models.heads import CosNormHead, create_head
from longtail.models.output import ModelOutput
from tiny import set_up_on_cpu, step_of


def test_cosnorm_squashes_the_feature_and_scales_by_the_squared_learnable_scale():
    torch.manual_seed(0)
    head = create_head("cosnorm", 6, 4)
    assert isinstance(head, CosNormHead) and isinstance(head.scale, torch.nn.Parameter)
    assert head.scale.item() == 5.0 and head.weight.abs().max() <= 6**-0.5
    features = torch.randn(3, 6, dtype=torch.float64)
    head = head.double()
    norms = features.norm(dim=1, keepdim=True)
    unit_w = head.weight / head.weight.norm(dim=1, keepdim=True)
    expected = 25.0 * (norms / (1 + norms)) * (features / norms) @ unit_w.T
    torch.testing.assert_close(head(features), expected)
    assert torch.equal(head(torch.zeros(2, 6, dtype=torch.float64)), torch.zeros(2, 4, dtype=torch.float64))
    head(features).sum().backward()
    assert head.scale.grad is not None
    fixed = create_head("cosnorm", 6, 4, scale=4.0, learnable_scale=False)
    assert fixed.scale == 4.0 and not any(p is fixed.scale for p in fixed.parameters())


def test_se_resnet32_takes_the_cosnorm_head():
    model = create("se_resnet32", num_classes=10, head="cosnorm")
    assert isinstance(model.head, CosNormHead)
    assert model(torch.randn(2, 3, 32, 32)).logits.shape == (2, 10)


def test_iif_adds_log_of_the_other_classes_over_the_class():
    counts = [90, 9, 1]
    logits = torch.zeros(2, 3)
    adjusted = posthoc_iif(logits, counts)
    expected = torch.tensor([math.log(10 / 90), math.log(91 / 9), math.log(99 / 1)])
    torch.testing.assert_close(adjusted, expected.expand(2, 3))
    with pytest.raises(LongtailError, match="one positive training count per class"):
        posthoc_iif(logits, [1, 2])


def info(num_classes: int = 4) -> SimpleNamespace:
    return SimpleNamespace(name="digits-lt", num_classes=num_classes, train_counts=[40, 20, 10, 5])


def test_erm_mixup_gives_soft_targets_that_ce_accepts():
    method = ERM(RunConfig(), info(), mixup_alpha=0.2, random_erasing=0.5)
    set_up_on_cpu(method)
    images = torch.randn(8, 3, 8, 8)
    batch = Batch(images=images, targets=torch.arange(8) % 4, indices=torch.arange(8))
    mixed, soft = method.augment(batch.images, batch.targets)
    assert soft.shape == (8, 4) and torch.allclose(soft.sum(dim=1), torch.ones(8))
    assert not torch.equal(mixed, images) and torch.equal(batch.images, images)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 4))

    class Wrapped(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> ModelOutput:
            return ModelOutput(logits=model(x), features=None)

    criterion = create_loss("ce", class_counts=info().train_counts, label_smoothing=0.1)
    loss, _ = method.training_step(Wrapped(), batch, criterion, step_of(0))
    assert torch.isfinite(loss)
    with pytest.raises(LongtailError, match="even batch"):
        method.augment(images[:3], batch.targets[:3])
    with pytest.raises(LongtailError, match="random_erasing"):
        ERM(RunConfig(), info(), random_erasing=1.5)


def test_erm_without_options_leaves_the_batch_alone():
    method = ERM(RunConfig(), info())
    images, targets = torch.randn(3, 3, 4, 4), torch.tensor([0, 1, 2])
    assert method.augment(images, targets) == (images, targets)


APA_RECIPES = [
    "apa-cifar100-lt-if100",
    "apa-cifar10-lt-if100",
    "apa-imagenet-lt-se-resnet50",
    "apa-imagenet-lt-se-resnext50",
    "apa-inat2018-se-resnet50",
    "apa-places-lt-se-resnet50",
    "digits-aglu",
]


@pytest.mark.parametrize("name", APA_RECIPES)
def test_apa_recipes_resolve_to_the_reference_settings(name):
    config = resolve(name)
    assert config.model.name.startswith("se_res") and config.model.args["head"] == "cosnorm"
    assert config.eval.iif and config.schedule.name == "cosine"


# classification/README.md: `--classif_norm cosine` (fixed scale 16) everywhere but Places-LT (`lr_cosine`);
# `--label-smoothing 0.1` only on Places-LT and iNaturalist
@pytest.mark.parametrize(
    ("name", "learnable", "label_smoothing"),
    [("apa-cifar100-lt-if100", False, 0.0), ("apa-cifar10-lt-if100", False, 0.0),
     ("apa-imagenet-lt-se-resnet50", False, 0.0), ("apa-imagenet-lt-se-resnext50", False, 0.0),
     ("apa-inat2018-se-resnet50", False, 0.1), ("apa-places-lt-se-resnet50", True, 0.1)],
)
def test_apa_recipes_classifier_scale_and_label_smoothing_follow_each_command(name, learnable, label_smoothing):
    config = resolve(name)
    assert config.loss.args["label_smoothing"] == label_smoothing
    head = create_head("cosnorm", 6, 4, **config.model.args["head_options"])
    assert isinstance(head.scale, torch.nn.Parameter) == learnable
    features = torch.tensor([[3.0, 0, 0, 0, 0, 0]])
    torch.nn.init.eye_(head.weight)
    # a feature of norm 3 along w_0: (3 / 4) times the scale the command gives (16 fixed, 5² learnable)
    assert head(features)[0, 0].item() == pytest.approx(0.75 * (25.0 if learnable else 16.0))


def test_cifar_apa_recipe_matches_the_reference_table():
    config = resolve("apa-cifar100-lt-if100")
    assert (config.data.batch_size, config.optim.lr, config.schedule.epochs, config.optim.weight_decay) == (
        512, 0.2, 500, 1e-3
    )
    assert config.method.args["mixup_alpha"] == 0.2 and config.schedule.warmup_epochs == 3
    assert config.data.augment["policy"] == "autoaugment" and "cutout" not in config.data.augment
    assert config.model.activation is None  # AGLU is built into se_resnet32


def test_budget_pair_differs_only_in_the_activation():
    aglu = resolve("cifar10-lt-if100-resnet32-aglu-budget").to_dict()
    relu = resolve("cifar10-lt-if100-resnet32-relu-budget").to_dict()
    differing = {key for key in aglu if aglu[key] != relu[key]}
    assert differing <= {"description", "model"}
    assert {k for k in aglu["model"] if aglu["model"][k] != relu["model"][k]} == {"activation"}
    assert total_epochs(resolve("cifar10-lt-if100-resnet32-aglu-budget")) == aglu["budget"]


def test_the_aglu_budget_recipe_is_the_budget_ce_run_with_aglu():
    # The results compare it with cifar10-lt-if100-ce at budget=30 (benchmarks/results/comparisons.yaml).
    aglu = resolve("cifar10-lt-if100-resnet32-aglu-budget").to_dict()
    ce = resolve("cifar10-lt-if100-ce", ["budget=30"]).to_dict()
    assert {key for key in aglu if aglu[key] != ce[key]} == {"description", "expected", "model"}
    assert {k for k in aglu["model"] if aglu["model"][k] != ce["model"][k]} == {"activation"}
    assert ce["model"]["activation"] is None  # ResNet-32's own ReLU
