"""The RIDE method: router targets and loss, routed inference, compute accounting, the router stage and
distillation through the trainer on digits-lt (8x8), and the recipes."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from tiny import TINY_DIGITS_DATA, set_up_on_cpu, step_of
from torch.utils.flop_counter import FlopCounterMode

import longtail.models
from longtail.cli.main import main as cli_main
from longtail.config import (
    RunConfig,
    apply_overrides,
    from_dict,
    list_recipes,
    parse_overrides,
)
from longtail.engine.trainer import train
from longtail.errors import LongtailError
from longtail.methods.base import Stage, create_method
from longtail.methods.recipes import resolve
from longtail.methods.ride import (
    RIDE,
    ComputeCost,
    measure_compute,
    router_help_targets,
    router_loss,
    router_scores,
)
from longtail.methods.runs import CHECKPOINT, load_checkpoint
from longtail.models.multi_expert import ExpertRouter
from longtail.models.output import ModelOutput

ROUTER_STAGE = {
    "name": "router",
    "epochs": 1,
    "trainable": "router",
    "sampler": "class-balanced",
    "batch_size": 64,
    "optim": {"lr": 0.01, "nesterov": True, "weight_decay": 5.0e-4},
    "schedule": {"name": "cosine"},
    "loss": {"name": "ride_router", "args": {"pos_weight": 100}},
}
TINY = {
    "method": {"name": "ride", "args": {"router_top_k": 5}},
    "data": {**TINY_DIGITS_DATA, "batch_size": 32},
    "model": {"name": "ride_resnet32", "args": {"num_experts": 3}},
    "loss": {"name": "ride", "args": {"drw_epoch": 0}},
    "optim": {"lr": 0.05, "nesterov": True},
    "schedule": {"name": "multistep", "epochs": 1, "warmup_epochs": 0, "milestones": []},
    "stages": [ROUTER_STAGE],
    "train": {"progress": False, "deterministic": True},
}


def tiny_config(*overrides: str) -> RunConfig:
    return from_dict(apply_overrides(TINY, parse_overrides(list(overrides))))


class Info:
    """The dataset facts the method reads."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.train_counts = [100 // (c + 1) for c in range(num_classes)]


def routed_method(threshold: float, **args) -> tuple[RIDE, torch.nn.Module]:
    """A RIDE method and its 3-expert model after the router stage was prepared (router added), in eval mode."""
    options = [f"method.args.{key}={value}" for key, value in {"router_threshold": threshold, **args}.items()]
    method = create_method(tiny_config(*options), Info(10))
    model = method.build_model()
    for stage in method.stages():
        method.prepare_stage(stage, model)
    return method, model.eval()


# ---------------------------------------------------------------- router targets and loss


def test_help_target_is_wrong_now_and_right_with_a_later_prefix():
    # 3 experts, 4 images, 2 classes, all targets 0; prefix sums decide correctness.
    expert_logits = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]],  # prefix 1: right, wrong, wrong, wrong
            [[0.0, 0.0], [3.0, 0.0], [0.0, 0.0], [0.5, 0.0]],  # prefix 2: right, right, wrong, wrong
            [[0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [0.0, 0.0]],  # prefix 3: right, right, right, wrong
        ]
    )
    targets = torch.zeros(4, dtype=torch.long)
    expected = torch.tensor([[False, True, True, False], [False, False, True, False]])
    assert torch.equal(router_help_targets(expert_logits, targets), expected)


def test_router_loss_is_weighted_bce_averaged_over_routers_and_images():
    scores = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    help_targets = torch.tensor([[True, False], [False, True]])
    positive = -torch.nn.functional.logsigmoid(scores)
    negative = -torch.nn.functional.logsigmoid(-scores)
    manual = torch.where(help_targets, 100.0 * positive, negative).mean()
    torch.testing.assert_close(router_loss(scores, help_targets, 100.0), manual)


def test_router_reads_topk_of_the_prefix_mean_and_its_expert_feature():
    router = ExpertRouter(feature_dim=6, num_experts=3, top_k=2)
    expert_logits, expert_features = torch.randn(3, 4, 5), torch.randn(3, 4, 6)
    scores = router_scores(router, expert_logits, expert_features)
    assert scores.shape == (2, 4)
    second_mean = expert_logits[:2].mean(0)
    torch.testing.assert_close(scores[1], router(1, second_mean, expert_features[1]))
    # Only the top-2 values of the mean logits matter, not which classes they belong to.
    permuted = second_mean[:, torch.randperm(5)]
    torch.testing.assert_close(router(1, permuted, expert_features[1]), scores[1])


# ---------------------------------------------------------------- routed inference and compute


def test_routed_inference_with_threshold_zero_equals_full_inference():
    method, model = routed_method(threshold=0.0)
    images = torch.randn(12, 3, 8, 8)
    with torch.no_grad():
        full = model(images)
        routed = method.predict(model, images)
    torch.testing.assert_close(routed.logits, full.logits)
    assert torch.equal(routed.aux["experts_per_image"], torch.full((12,), 3.0))
    torch.testing.assert_close(routed.aux["all_experts_logits"], full.logits)


def test_routed_inference_with_threshold_one_uses_the_first_expert_only():
    method, model = routed_method(threshold=1.0, report_all_experts=False)
    images = torch.randn(12, 3, 8, 8)
    with torch.no_grad():
        routed = method.predict(model, images)
        first = model(images, num_experts=1)
    torch.testing.assert_close(routed.logits, first.logits)
    assert torch.equal(routed.aux["experts_per_image"], torch.ones(12))
    assert routed.expert_logits is None


def test_each_image_averages_exactly_the_experts_its_routers_chose():
    method, model = routed_method(threshold=0.5)
    images = torch.randn(32, 3, 8, 8)
    with torch.no_grad():
        full = model(images)
        decision = model.router.decision[0]
        decision.weight.normal_(0.0, 3.0)
        first_scores = model.router(0, full.expert_logits[0], full.expert_features[0])
        decision.bias.sub_(first_scores.median())  # about half the images stop after the first expert
        routed = method.predict(model, images)
    used = routed.aux["experts_per_image"].long()
    assert len(used.unique()) > 1
    for count in used.unique().tolist():
        rows = used == count
        torch.testing.assert_close(routed.logits[rows], full.expert_logits[:count, rows].mean(0))


def test_compute_of_all_experts_matches_a_flop_count_of_the_full_model():
    model = longtail.models.create("ride_resnet32", num_classes=10, num_experts=3).eval()
    images = torch.randn(2, 3, 32, 32)
    cost = measure_compute(model, images)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    assert cost.trunk + sum(cost.experts) == pytest.approx(counter.get_total_flops() / 2 / len(images))
    one, two, three = cost.by_experts_used()
    assert one < two < three
    # About 0.07 GMACs for the LDAM ResNet-32; RIDE-3 with reduced experts is about 0.1 (SADE README: 0.11).
    assert 0.08e9 < three < 0.13e9


def test_routed_cost_counts_the_routers_each_image_passed():
    cost = ComputeCost(trunk=10.0, experts=(100.0, 100.0, 100.0), routers=(1.0, 2.0))
    assert cost.by_experts_used() == [111.0, 213.0, 313.0]
    expected = torch.tensor([111.0, 313.0, 213.0], dtype=torch.float64)
    torch.testing.assert_close(cost.macs(torch.tensor([1, 3, 2])), expected)


def test_predict_reports_gmacs_from_the_experts_used():
    method, model = routed_method(threshold=1.0)
    images = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        output = method.predict(model, images)
    one_expert = method.compute_cost(model, images).by_experts_used()[0] / 1e9
    torch.testing.assert_close(output.aux["gmacs_per_image"], torch.full((4,), one_expert))


# ---------------------------------------------------------------- bad settings


def test_distillation_loss_without_teacher_is_refused():
    with pytest.raises(LongtailError, match="method.args.teacher"):
        create_method(tiny_config("loss.name=ride_distill"), Info(10))


def test_a_teacher_with_a_loss_that_does_not_distil_is_refused():
    with pytest.raises(LongtailError, match="ride_distill"):
        create_method(tiny_config("method.args.teacher=somewhere"), Info(10))


def test_a_teacher_run_still_training_is_refused_with_the_fix(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"the state after a few epochs")
    method = create_method(tiny_config("loss.name=ride_distill", f"method.args.teacher={tmp_path}"), Info(10))
    with pytest.raises(LongtailError, match="has not finished training .* --resume"):
        set_up_on_cpu(method)


def test_router_top_k_larger_than_the_classes_is_refused():
    with pytest.raises(LongtailError, match="router_top_k"):
        create_method(tiny_config("method.args.router_top_k=30"), Info(10))


def test_router_stage_needs_the_router_loss():
    config = tiny_config("stages.0.loss.name=ce")
    method = create_method(config, Info(10))
    with pytest.raises(LongtailError, match="ride_router"):
        method.prepare_stage(method.stages()[1], method.build_model())


# ---------------------------------------------------------------- through the trainer


@pytest.mark.slow
def test_ride_run_with_router_stage_changes_no_backbone_weight(tmp_path, monkeypatch):
    snapshots = {}
    original = RIDE.prepare_stage

    def snapshot_before_router(self, stage: Stage, model):
        if stage.trainable == "router" and "before" not in snapshots:  # later calls rebuild checkpoints
            snapshots["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        original(self, stage, model)

    monkeypatch.setattr(RIDE, "prepare_stage", snapshot_before_router)
    summary = train(tiny_config(), tmp_path)

    after = load_checkpoint(tmp_path / CHECKPOINT)["model"]
    before = snapshots["before"]
    assert set(after) - set(before) == {key for key in after if key.startswith("router.")} != set()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [record["stage"] for record in log] == ["train", "router"]
    assert {"main", "all_experts", "expert_0"} <= set(summary["last_test"])


@pytest.mark.slow
def test_routed_run_reports_experts_and_gmacs_per_image_and_eval_can_change_the_threshold(tmp_path, capsys):
    summary = train(tiny_config(), tmp_path)
    for split in ("last_val", "last_test"):
        main_head = summary[split]["main"]
        assert 1.0 <= main_head["experts"] <= 3.0
        assert main_head["gmacs"] > 0.0
        assert "experts" not in summary[split]["all_experts"]
    assert summary["table"].splitlines()[0].split()[-2:] == ["experts", "gmacs"]

    capsys.readouterr()
    assert cli_main(["eval", str(tmp_path), "method.args.router_threshold=0.0", "--split", "test"]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    experts = header.split().index("experts") - len(header.split())
    main_rows = [row.split() for row in rows if row.startswith(("last test ", "best test "))]
    main_rows = [cells for cells in main_rows if cells[2][0].isdigit()]  # not 'expert_0', 'all_experts'
    assert len(main_rows) == 2 and all(cells[experts] == "3" for cells in main_rows)  # threshold 0: every expert
    assert cli_main(["eval", str(tmp_path), "method.args.router_hidden_dim=4"]) == 2
    assert "do not fit the model" in capsys.readouterr().err


@pytest.mark.slow
def test_distillation_teacher_gets_no_gradient_and_stays_in_eval_mode(tmp_path):
    teacher_config = tiny_config("model.args.num_experts=2")
    teacher_dir = tmp_path / "teacher"
    train(from_dict({**teacher_config.to_dict(), "stages": []}), teacher_dir)

    config = tiny_config("loss.name=ride_distill", f"method.args.teacher={teacher_dir}")
    method = create_method(config, Info(10))
    model = method.build_model()
    set_up_on_cpu(method)
    method.prepare_stage(method.stages()[0], model)
    model.train()
    teacher = method.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    batch = Batch(torch.randn(8, 3, 8, 8), torch.arange(8) % 10)
    criterion = method.build_loss(method.stages()[0].loss)
    loss, output = method.training_step(model, batch, criterion, step_of(0))
    loss.backward()
    with torch.no_grad():
        torch.testing.assert_close(output.aux["teacher_logits"], teacher(batch.images).logits)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in model.parameters())
    assert not teacher.training and "distill" in criterion.parts


class Batch:
    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images = images
        self.targets = targets


# ---------------------------------------------------------------- recipes


def test_ride_recipes_resolve_and_carry_the_published_numbers():
    names = [name for name in list_recipes() if name.startswith("ride-") or name == "digits-ride"]
    assert len(names) >= 30
    for name in names:
        config = resolve(name)
        assert config.method.name == "ride" and config.model.name.startswith("ride_"), name
        assert config.loss.name in ("ride", "ride_distill"), name
        assert all(stage.loss.name == "ride_router" for stage in config.stages), name
    routed = resolve("ride-cifar100-lt-if100")
    assert (routed.schedule.epochs, routed.data.batch_size, routed.optim.weight_decay) == (200, 128, 5e-4)
    router = routed.stages[0]
    assert (router.batch_size, router.sampler, router.epochs, router.trainable) == (512, "class-balanced", 5, "router")
    assert routed.expected["all"] == 48.6 and routed.expected["few"] == 25.7
    assert resolve("ride-cifar100-lt-if100-teacher").model.args["num_experts"] == 6
    assert resolve("ride-imagenet-lt-resnext50").expected["all"] == 55.7


def test_model_output_of_predict_without_router_is_the_full_ensemble():
    method = create_method(tiny_config(), Info(10))
    model = method.build_model().eval()
    images = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        output: ModelOutput = method.predict(model, images)
        torch.testing.assert_close(output.logits, model(images).logits)
    assert "experts_per_image" not in output.aux


@pytest.mark.parametrize("dataset", ["cifar10-lt-if100", "cifar100-lt-if100", "cifar100-lt-if10"])
def test_cifar_teacher_and_distillation_recipes_use_the_official_diversity_factor(dataset):
    # configs/config_imbalance_cifar100_ride_teacher.json and _distill_ride.json at HEAD: -0.45, as plain RIDE
    for suffix in ("", "-teacher", "-distill", "-distill-4experts"):
        config = resolve(f"ride-{dataset}{suffix}")
        assert config.loss.args["diversity_factor"] == -0.45, suffix
    assert resolve(f"ride-{dataset}-distill").schedule.warmup_epochs == 20


@pytest.mark.parametrize("teacher_mode", ["eval", "train"])
def test_teacher_mode_chooses_running_or_batch_statistics(monkeypatch, teacher_mode):
    # the official trainer never calls teacher_model.eval() (trainer/trainer.py lines 24-38, 98)
    teacher_model = longtail.models.create("ride_resnet32", num_classes=10, num_experts=2).eval()
    trained = SimpleNamespace(model=teacher_model, info=Info(10))
    monkeypatch.setattr("longtail.methods.ride.load_teacher", lambda path, device: trained)
    config = tiny_config("loss.name=ride_distill", "method.args.teacher=teacher-run",
                         f"method.args.teacher_mode={teacher_mode}")
    method = create_method(config, Info(10))
    model = method.build_model().train()
    set_up_on_cpu(method)
    assert method.teacher.training == (teacher_mode == "train")
    images = torch.randn(8, 3, 8, 8) * 3 + 1  # far from the fresh running statistics (0, 1)
    batch = Batch(images, torch.arange(8) % 10)
    _, output = method.training_step(model, batch, method.build_loss(config.loss), step_of(0))
    reference = copy.deepcopy(teacher_model).train(teacher_mode == "train")
    with torch.no_grad():
        torch.testing.assert_close(output.aux["teacher_logits"], reference(images).logits)
        other_mode = copy.deepcopy(teacher_model).train(teacher_mode != "train")
        assert not torch.allclose(output.aux["teacher_logits"], other_mode(images).logits)


def test_unknown_teacher_mode_is_refused():
    with pytest.raises(LongtailError, match="teacher_mode"):
        create_method(tiny_config("loss.name=ride_distill", "method.args.teacher=x", "method.args.teacher_mode=frozen"),
                      Info(10))
