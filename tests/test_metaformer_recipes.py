"""MetaFormer recipes resolve to the reference's settings, and a MetaFG with meta groups gets its meta in
training and both heads (with and without meta) in evaluation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from longtail.config import RunConfig
from longtail.data.containers import Batch
from longtail.methods.baselines import ERM
from longtail.methods.recipes import resolve
from longtail.models import create
from tiny import step_of

METAFORMER_RECIPES = [
    "metaformer-inat2018-metafg0-meta",
    "metaformer-cub200-metafg0-attributes",
    "metafg-cifar10-lt-if100-budget",
]


@pytest.mark.parametrize("name", METAFORMER_RECIPES)
def test_metaformer_recipes_follow_the_reference(name):
    config = resolve(name)
    assert config.model.name == "metafg_0" and config.model.args["drop_path_rate"] == 0.1
    assert (config.optim.name, config.optim.weight_decay, config.optim.clip_grad) == ("adamw", 0.05, 5.0)
    assert config.schedule.name == "cosine" and config.loss.args["label_smoothing"] == 0.1
    assert config.method.args == {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "random_erasing": 0.25}
    assert config.data.augment["policy"] == "randaugment"


def test_inat_recipe_reads_spatiotemporal_meta_and_masks_it_over_the_whole_schedule():
    config = resolve("metaformer-inat2018-metafg0-meta")
    assert (config.schedule.epochs, config.schedule.warmup_epochs) == (300, 20)
    assert config.optim.lr == pytest.approx(1e-4 * config.data.batch_size / 512)
    assert config.model.args["meta_groups"] == {"spatiotemporal": [4, 3]}
    assert config.model.args["meta_mask_epochs"] == config.schedule.epochs
    assert config.data.args["meta_file"][0].endswith("train2018.json")
    assert config.expected["all"] == 85.4 and config.expected["no_meta"] == 79.5


def test_budget_recipe_is_vision_only_at_32_pixels():
    config = resolve("metafg-cifar10-lt-if100-budget")
    assert config.model.args == {"drop_path_rate": 0.1, "img_size": 32}
    assert config.schedule.epochs == 30 == config.budget


def test_metafg_with_meta_trains_on_its_meta_and_reports_the_no_meta_head():
    torch.manual_seed(0)
    model = create("metafg_0", num_classes=3, img_size=32, meta_groups={"attributes": 4}).eval()
    method = ERM(RunConfig(), SimpleNamespace(num_classes=3))
    images, meta = torch.randn(2, 3, 32, 32), {"attributes": torch.randn(2, 4)}
    with torch.no_grad():
        output = method.predict(model, images, meta)
        torch.testing.assert_close(output.logits, model(images, meta=meta).logits)
        zero_meta = model(images, meta={"attributes": torch.zeros(2, 4)}).logits
        torch.testing.assert_close(output.aux["no_meta_logits"], zero_meta)
        assert not torch.allclose(output.logits, output.aux["no_meta_logits"])
        batch = Batch(images=images, targets=torch.tensor([0, 1]), indices=torch.arange(2), meta=meta)
        criterion = lambda out, targets: torch.nn.functional.cross_entropy(out.logits, targets)  # noqa: E731
        _, trained = method.training_step(model, batch, criterion, step_of(0))
        torch.testing.assert_close(trained.logits, output.logits)
