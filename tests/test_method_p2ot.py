"""P²OT / SP²OT training pieces: the swapped-prediction loss and its mass weighting, the logits bank, the rho
ramp, labels never reaching the loss, the settings that would leak labels, last-block freezing, timm
backbones from local weights, and the iNat subset selection."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.config import apply_overrides, from_dict, parse_overrides
from longtail.data.containers import Batch
from longtail.data.folders_and_lists import inat_subset_classes, write_inat_subset_lists
from longtail.errors import LongtailError
from longtail.methods.base import create_method
from longtail.methods.p2ot import (
    P2OT,
    SwappedPredictionLoss,
    swapped_prediction_loss,
)
from longtail.models.label_free import LogitsBank
from longtail.models.output import ModelOutput
from tiny import step_of

NUM_CLASSES = 4
BASE = {
    "method": {"name": "p2ot", "args": {"trainable": "all", "bank_batches": 2}},
    "data": {"val_per_class": 0, "batch_size": 8, "two_views": True},
    "model": {"name": "resnet32"},
    "loss": {"name": "swapped-ce"},
    "schedule": {"epochs": 3},
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and OpenMP threads spin badly on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_method(*overrides: str, num_train: int = 32) -> P2OT:
    config = from_dict(apply_overrides(BASE, parse_overrides(list(overrides))))
    info = SimpleNamespace(num_classes=NUM_CLASSES, train_counts=[num_train // NUM_CLASSES] * NUM_CLASSES,
                           num_train=num_train)
    return create_method(config, info)


def two_view_batch(targets: torch.Tensor, size: int = 8, seed: int = 1) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    return Batch(
        images=torch.randn(size, 3, 8, 8, generator=generator),
        targets=targets,
        indices=torch.randperm(32, generator=generator)[:size],
        strong=torch.randn(size, 3, 8, 8, generator=generator),
    )


# ---------------------------------------------------------------------------------------------- the loss


def test_swapped_loss_is_each_view_supervised_by_the_other_views_plan():
    logits = torch.randn(2, 5, 3, dtype=torch.float64)
    plans = torch.rand(2, 5, 3, dtype=torch.float64) / 3

    def soft_ce(z, q):
        return -(q * F.log_softmax(z, dim=1)).sum(dim=1).mean()

    expected = soft_ce(logits[0], plans[1]) + soft_ce(logits[1], plans[0])
    assert torch.allclose(swapped_prediction_loss(logits, plans), expected)


def test_each_sample_weighs_by_its_transported_mass():
    logits = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    plans = torch.softmax(torch.randn(2, 4, 3, dtype=torch.float64), dim=-1)
    mass = torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64)
    weighted = plans * mass.view(1, 4, 1)
    swapped_prediction_loss(logits, weighted).backward()

    unit_loss = [swapped_prediction_loss(logits[:, i:i + 1], plans[:, i:i + 1]).item() for i in range(4)]
    per_sample = [swapped_prediction_loss(logits[:, i:i + 1], weighted[:, i:i + 1]).item() for i in range(4)]
    assert per_sample == pytest.approx([m * u for m, u in zip(mass.tolist(), unit_loss)])
    assert torch.all(logits.grad[:, 3] == 0)  # an untransported sample gets no gradient
    assert torch.all(logits.grad[:, 0].abs().sum(-1) > 0)


def test_loss_module_reads_stacked_views_and_logs_the_selection_score():
    loss_fn = SwappedPredictionLoss()
    logits, plans = torch.randn(6, 3), torch.rand(6, 3) / 3
    loss = loss_fn(ModelOutput(logits=logits), plans, rho=0.5)
    assert torch.allclose(loss, swapped_prediction_loss(logits.view(2, 3, 3), plans.view(2, 3, 3)))
    assert torch.allclose(loss_fn.parts["normalized"], loss / 0.5)
    assert torch.allclose(loss_fn.parts["mass"], plans.sum(1).mean())
    with pytest.raises(LongtailError, match="views"):
        loss_fn(ModelOutput(logits=torch.randn(5, 3)), torch.rand(5, 3))


# ---------------------------------------------------------------------------------------------- the bank


def test_bank_is_a_fifo_of_the_last_batches_oldest_first():
    bank = LogitsBank(capacity=4, num_clusters=2)
    assert bank.contents()[0].shape == (0, 2)
    for step in range(3):
        bank.push(torch.full((2, 2), float(step)), torch.tensor([10 * step, 10 * step + 1]))
    logits, indices = bank.contents()
    assert indices.tolist() == [10, 11, 20, 21]
    assert logits[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0]
    bank.push(torch.full((6, 2), 9.0), torch.arange(6))  # more rows than it holds: the newest stay
    assert bank.contents()[1].tolist() == [2, 3, 4, 5]


def test_bank_without_capacity_stays_empty_and_is_in_the_state_dict():
    empty = LogitsBank(capacity=0, num_clusters=3)
    empty.push(torch.ones(4, 3), torch.arange(4))
    assert empty.contents()[0].shape == (0, 3)
    assert {"logits", "indices", "filled", "position"} <= set(LogitsBank(4, 3).state_dict())


def test_training_step_solves_over_bank_plus_batch_and_then_pushes_view_one():
    method = make_method()
    model = method.build_model()
    criterion = method.build_loss(method.config.loss)
    batch = two_view_batch(torch.zeros(8, dtype=torch.int64))
    sizes = []
    original = method.solver.solve

    def recording(logits):
        sizes.append(logits.shape[0])
        return original(logits)

    method.solver.solve = recording
    method.training_step(model, batch, criterion, step_of(0))
    method.training_step(model, two_view_batch(torch.zeros(8, dtype=torch.int64), seed=2), criterion, step_of(0))
    method.training_step(model, two_view_batch(torch.zeros(8, dtype=torch.int64), seed=3), criterion, step_of(0))
    assert sizes == [8, 8, 16, 16, 24, 24]  # the bank holds 2 batches
    assert model.memory.contents()[0].shape == (16, NUM_CLASSES)
    assert model.memory.contents()[1][-8:].tolist() == two_view_batch(batch.targets, seed=3).indices.tolist()


# ---------------------------------------------------------------------------------------------- rho


def test_rho_ramps_from_rho_start_to_rho_end():
    method = make_method("method.args.rho_ramp=linear")
    values = [method.rho(step_of(epoch, 3, step, 4)) for epoch in range(3) for step in range(4)]
    assert values[0] == pytest.approx(0.1)
    assert values == pytest.approx([0.1 + 0.9 * t / 12 for t in range(12)])

    sigmoid = make_method()
    assert sigmoid.rho(step_of(0, 3)) == pytest.approx(0.1 + 0.9 * math.exp(-5.0))
    by_epoch = make_method("method.args.ramp_unit=epoch")
    assert [by_epoch.rho(step_of(epoch, 3, 3, 4)) for epoch in range(3)] == pytest.approx(
        [0.1 + 0.9 * math.exp(-5 * (1 - t) ** 2) for t in (0.0, 0.5, 1.0)])


def test_the_plans_carry_mass_rho_over_bank_and_batch():
    method = make_method()
    model = method.build_model()
    views = torch.randn(2, 8, NUM_CLASSES)
    plans = method.pseudo_labels(model, views, torch.arange(8), rho=0.3)
    assert plans.shape == (2, 8, NUM_CLASSES)
    assert plans.sum(dim=(1, 2)) / 8 == pytest.approx(torch.tensor([0.3, 0.3]), abs=1e-4)
    assert torch.all(plans.sum(-1) <= 1 + 1e-6)


def test_extra_metrics_are_the_clustering_metrics_of_the_argmax():
    from longtail.clustering import clustering_metrics
    from longtail.evaluation.metrics import evaluate

    generator = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(60, NUM_CLASSES, generator=generator), torch.randint(0, NUM_CLASSES, (60,))
    logits[targets == 0, 2] += 5.0  # class 0 mostly lands in cluster 2
    counts = [30, 15, 10, 5]
    extra = make_method().extra_metrics(evaluate(logits, targets, counts))
    expected = clustering_metrics(logits.argmax(1), targets, counts, NUM_CLASSES)
    assert extra == pytest.approx({f"cluster_{key}": expected[key] for key in
                                   ("acc", "mean_class_acc", "nmi", "ari", "macro_f1", "head", "medium", "tail")})
    assert extra["cluster_acc"] > evaluate(logits, targets, counts)["top1"]


# ---------------------------------------------------------------------------------------------- no labels


def test_labels_never_reach_the_loss():
    losses = []
    for targets in (torch.arange(8) % NUM_CLASSES, torch.randperm(8) % NUM_CLASSES, torch.full((8,), -7)):
        torch.manual_seed(0)
        method = make_method()
        model = method.build_model()
        criterion = method.build_loss(method.config.loss)
        step_losses = [method.training_step(model, two_view_batch(targets, seed=seed), criterion, step_of(0))[0].item()
                       for seed in (1, 2)]
        losses.append(step_losses)
    assert losses[0] == losses[1] == losses[2]


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.val_per_class=5", "val_per_class=0"),
        ("data.sampler=class-balanced", "label-free sampler"),
        ("data.two_views=false", "two_views=true"),
        ("loss.name=ce", "loss.name=swapped-ce"),
        ("method.args.num_clusters=7", "num_clusters=7"),
        ("method.args.trainable=last_block", "pretrained_path"),
        ("method.args.transport=sp3ot", "sp2ot"),
        ("method.args.rho_ramp=cosine", "sigmoid"),
        ("optim.sam_rho=0.05", "sam_rho=0"),
    ],
)
def test_settings_that_would_use_labels_or_make_no_sense_are_refused(override, message):
    with pytest.raises(LongtailError, match=message):
        make_method(override)


# ---------------------------------------------------------------------------------------------- backbones


def test_last_block_trains_only_the_head_and_the_last_residual_block():
    method = make_method()
    model = method.build_model()
    stage = method.stages()[0]
    stage.trainable = "last_block"
    chosen = {id(p) for p in method.trainable_parameters(stage, model)}
    expected = {id(p) for p in [*model.head.parameters(), *model.backbone.layer3[-1].parameters()]}
    assert chosen == expected
    assert method.stages()[0].trainable == "all"


def test_timm_backbone_loads_local_weights_and_trains_its_last_block(tmp_path):
    import timm

    options = {"img_size": 16, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0, **options)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    args = ",".join(f"{k}: {v}" for k, v in options.items())
    method = make_method("model.name=timm:vit_tiny_patch16_224", f"model.args={{{args}, pretrained_path: "
                         f"{tmp_path / 'weights.pth'}}}", "method.args.trainable=last_block")
    model = method.build_model()
    assert torch.equal(model.backbone.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    chosen = {id(p) for p in method.trainable_parameters(method.stages()[0], model)}
    assert chosen == {id(p) for p in [*model.head.parameters(), *model.backbone.model.blocks[-1].parameters()]}
    assert model(torch.randn(2, 3, 16, 16)).logits.shape == (2, NUM_CLASSES)
    with pytest.raises(LongtailError, match="never downloaded"):
        make_method("model.name=timm:vit_tiny_patch16_224", "model.args.pretrained_path=/nonexistent.pth",
                    "method.args.trainable=last_block").build_model()


def test_input_size_resizes_images_before_the_backbone():
    model = make_method("method.args.input_size=16").build_model()
    seen = []

    def features(images):
        seen.append(tuple(images.shape))
        return torch.ones(images.shape[0], model.head.in_features)

    model.backbone.forward_features = features
    model(torch.randn(2, 3, 8, 8))
    model(torch.randn(2, 3, 16, 16))
    assert seen == [(2, 3, 16, 16), (2, 3, 16, 16)]


# ---------------------------------------------------------------------------------------------- iNat subsets


def inat_like_targets() -> np.ndarray:
    rng = np.random.default_rng(0)
    counts = rng.permutation(np.arange(8142) // 1000 + 1)  # 1 to 9 images, many ties, shuffled class ids
    return np.repeat(np.arange(8142), counts)


def test_inat_subsets_take_every_interval_th_class_by_sorted_size():
    targets = inat_like_targets()
    order = np.argsort(-np.bincount(targets), kind="stable")
    for size, stride in ((1000, 8), (500, 16), (100, 64)):
        assert inat_subset_classes(targets, size).tolist() == order[::stride][:size].tolist()
    with pytest.raises(LongtailError, match="100"):
        inat_subset_classes(targets, 300)


def test_inat_subset_lists_keep_and_renumber_the_chosen_classes(tmp_path):
    targets = inat_like_targets()
    val_targets = np.repeat(np.arange(8142), 3)
    (tmp_path / "iNaturalist18_train.txt").write_text("".join(f"train/{i}.jpg {t}\n" for i, t in enumerate(targets)))
    (tmp_path / "iNaturalist18_val.txt").write_text("".join(f"val/{i}.jpg {t}\n" for i, t in enumerate(val_targets)))
    out = write_inat_subset_lists(tmp_path, tmp_path / "inat100", 100)
    classes = inat_subset_classes(targets, 100)
    train_lines = (out / "iNaturalist18_train.txt").read_text().split("\n")[:-1]
    val_lines = (out / "iNaturalist18_val.txt").read_text().split("\n")[:-1]
    new_labels = np.array([int(line.split()[1]) for line in train_lines])
    old_labels = np.array([targets[int(line.split()[0][6:-4])] for line in train_lines])
    assert len(val_lines) == 300 and sorted(set(new_labels)) == list(range(100))
    assert np.array_equal(classes[new_labels], old_labels)
    assert np.bincount(new_labels)[0] == np.bincount(targets)[classes[0]]


# ---------------------------------------------------------------------------------------------- recipes


def recipe_method(name: str, *overrides: str, num_classes: int = 100) -> P2OT:
    from longtail.methods.recipes import resolve

    info = SimpleNamespace(num_classes=num_classes, train_counts=[5] * num_classes, num_train=5 * num_classes)
    return create_method(resolve(name, list(overrides)), info)


def test_the_paper_recipes_follow_the_papers_and_need_local_dino_weights():
    from longtail.config import list_recipes
    from longtail.methods.recipes import resolve

    names = [name for name in list_recipes() if name.startswith(("p2ot-", "sp2ot-"))]
    assert len(names) == 14
    config = resolve("sp2ot-cifar100-lt-if100")
    assert (config.data.name, config.data.imbalance, config.data.batch_size, config.schedule.epochs) == (
        "cifar100-lt", 100.0, 512, 50)
    assert (config.optim.name, config.optim.lr, config.optim.weight_decay) == ("adamw", 5e-4, 0.0)
    assert config.model.name == "timm:vit_base_patch16_224.dino"
    args = config.method.args
    assert (args["transport"], args["trainable"], args["bank_batches"], args["knn"]) == ("sp2ot", "last_block", 10, 20)
    assert (args["rho_start"], args["rho_end"], args["rho_ramp"]) == (0.1, 1.0, "sigmoid")
    with pytest.raises(LongtailError, match="pretrained_path"):
        recipe_method("p2ot-cifar100-lt-if100")
    assert recipe_method("p2ot-inat500", "model.args.pretrained_path=dino.pth", num_classes=500).transport == "p2ot"
    with pytest.raises(LongtailError, match="inat-subset"):
        recipe_method("p2ot-inat100", "model.args.pretrained_path=dino.pth", num_classes=8142)


@pytest.mark.parametrize("name", ["p2ot-digits-lt", "sp2ot-digits-lt", "p2ot-cifar10-lt-if100",
                                  "sp2ot-cifar10-lt-if100"])
def test_the_cpu_recipes_build(name):
    method = recipe_method(name, num_classes=10)
    assert method.build_model().head.num_classes == 10
