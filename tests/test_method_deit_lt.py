"""DeiT-LT method: the student's two heads in train and eval mode, the frozen teacher on the student's own
mixed batch, DRW on the DIST head only, Mixup switched off at DRW, and the class-rank Head/Mid/Tail report."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

import longtail.losses
import longtail.models
from longtail.config import LossConfig, MethodConfig, ModelConfig, RunConfig
from longtail.data.containers import Batch
from longtail.errors import LongtailError
from longtail.losses.weights import effective_number_weights
from longtail.evaluation.metrics import rank_groups
from longtail.methods.deit_lt import DEIT_LT_CUT_POINTS, DeiTLT, FrozenTeacher, LabelTeacher
from longtail.methods.recipes import resolve
from longtail.models.output import ModelOutput
from tiny import set_up_on_cpu, step_of

NUM_CLASSES = 10
CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def tiny_student(image_size: int = 16) -> nn.Module:
    return longtail.models.create(
        "deit_lt_tiny_patch4_32", num_classes=NUM_CLASSES, image_size=image_size, depth=1, drop_path_rate=0.1
    )


def info(name: str = "cifar10-lt") -> SimpleNamespace:
    return SimpleNamespace(
        name=name,
        num_classes=NUM_CLASSES,
        class_names=[str(c) for c in range(NUM_CLASSES)],
        train_counts=CIFAR10_IF100,
        image_size=16,
        mean=MEAN,
        std=STD,
    )


def deit_lt(loss: str = "deit_lt", drw_epoch: int | None = 2, **options) -> DeiTLT:
    args = {} if drw_epoch is None else {"drw_epoch": drw_epoch}
    config = RunConfig(
        method=MethodConfig("deit_lt", options),
        model=ModelConfig("deit_lt_tiny_patch4_32"),
        loss=LossConfig(loss, args),
    )
    return DeiTLT(config, info(), **options)


class RecordingTeacher(nn.Module):
    """A linear classifier on pooled pixels that keeps every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, NUM_CLASSES)
        self.inputs: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> ModelOutput:
        self.inputs.append(images.detach().clone())
        return ModelOutput(logits=self.linear(images.mean(dim=(2, 3))))


def make_batch(size: int = 8, image_size: int = 16) -> Batch:
    generator = torch.Generator().manual_seed(1)
    return Batch(
        images=torch.randn(size, 3, image_size, image_size, generator=generator),
        targets=torch.randint(0, NUM_CLASSES, (size,), generator=generator),
        indices=torch.arange(size),
    )


def record_student_input(student: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    student.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


# ---------------------------------------------------------------- the student


@pytest.mark.parametrize("training", [True, False])
def test_student_reports_both_heads_and_their_mean_in_train_and_eval_mode(training):
    student = tiny_student().train(training)
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        output = student(images)
    cls_logits, dist_logits = output.aux["cls_logits"], output.aux["dist_logits"]
    assert cls_logits.shape == dist_logits.shape == (4, NUM_CLASSES)
    assert not torch.allclose(cls_logits, dist_logits)
    torch.testing.assert_close(output.logits, (cls_logits + dist_logits) / 2)
    assert output.features.shape == (4, 192)
    if not training:  # timm's own eval forward is the average of the two heads
        torch.testing.assert_close(output.logits, student.vit(images))


def test_student_heads_resizing_and_options():
    student = longtail.models.create("deit_lt_tiny_patch4_32", num_classes=NUM_CLASSES, depth=2, drop_path_rate=0.1)
    assert student.head_modules() == [student.vit.head, student.vit.head_dist]
    assert student.head is student.vit.head and student.head_dist is student.vit.head_dist
    assert student.vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert student.forward_features(torch.randn(2, 3, 16, 16)).shape == (2, 192)  # 16 px resized to 32
    student.replace_heads(lambda head: nn.Linear(head.in_features, NUM_CLASSES, bias=False))
    assert all(head.bias is None for head in student.head_modules())
    assert {"deit_lt_base_patch16_224", "deit_lt_small_patch4_32"} <= set(longtail.models.list_models())
    with pytest.raises(LongtailError, match="no option"):
        longtail.models.create("deit_lt_tiny_patch4_32", num_classes=NUM_CLASSES, drop_path=0.1)
    with pytest.raises(LongtailError, match="multiple of the patch size"):
        longtail.models.create("deit_lt_tiny_patch4_32", num_classes=NUM_CLASSES, image_size=30)


def test_student_evaluates_cifar_as_resize_256_and_centre_crop_224_and_trains_on_the_whole_image():
    # val-iisc/DeiT-LT datasets.py lines 615-622: Resize(256, bicubic) + CenterCrop(224) at test time
    student = longtail.models.create(
        "deit_lt_tiny_patch16_224", num_classes=NUM_CLASSES, depth=1, eval_crop_fraction=0.875
    )
    images = torch.randn(2, 3, 32, 32)
    resized = v2.functional.resize(images, [256], interpolation=v2.InterpolationMode.BICUBIC, antialias=False)
    centre = v2.functional.center_crop(resized, [224])
    whole = v2.functional.resize(images, [224], interpolation=v2.InterpolationMode.BICUBIC, antialias=False)
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(images).logits, student(centre).logits)
        torch.testing.assert_close(student.train()(images).logits, student(whole).logits)
    with pytest.raises(LongtailError, match="eval_crop_fraction"):
        longtail.models.create("deit_lt_tiny_patch4_32", num_classes=NUM_CLASSES, eval_crop_fraction=0.0)


def test_cifar_recipes_crop_as_the_official_transforms_for_their_student_size():
    student_224 = resolve("deit-lt-cifar100-lt-if100")
    assert student_224.data.augment["resized_crop"] == [0.08, 1.0] and student_224.data.augment["crop"]
    assert student_224.model.args["eval_crop_fraction"] == 0.875
    student_32 = resolve("deit-lt-cifar10-lt-if100-budget")  # padded crop for a 32 px student (lines 607-610)
    assert student_32.data.augment["resized_crop"] is None and student_32.data.augment["padding"] == 4
    assert student_32.model.args["eval_crop_fraction"] == 1.0


def test_student_uses_explicit_attention_on_cpu_with_the_fused_values():
    torch.manual_seed(0)
    student = longtail.models.create("deit_lt_tiny_patch4_32", num_classes=NUM_CLASSES, depth=2).eval()
    images = torch.randn(3, 3, 32, 32)
    explicit = student(images).logits
    assert not any(block.attn.fused_attn for block in student.vit.blocks)
    for block in student.vit.blocks:
        block.attn.fused_attn = True
    tokens = student.vit.forward_features(images)  # timm's own forward, fused attention
    fused = (student.vit.head(tokens[:, 0]) + student.vit.head_dist(tokens[:, 1])) / 2
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the teacher and the batch


def test_teacher_sees_the_students_mixed_batch_and_gets_no_gradient():
    recorder = RecordingTeacher()
    method = deit_lt(random_erasing=1.0)
    method.teacher = FrozenTeacher(recorder, image_size=16)
    set_up_on_cpu(method)
    student = tiny_student().train()
    student_inputs = record_student_input(student)
    batch = make_batch()
    original = batch.images.clone()
    criterion = longtail.losses.create("deit_lt", class_counts=CIFAR10_IF100, drw_epoch=2)

    loss, output = method.training_step(student, batch, criterion, step_of(0))
    loss.backward()

    (seen_by_teacher,) = recorder.inputs
    (seen_by_student,) = student_inputs
    assert torch.equal(seen_by_teacher, seen_by_student)
    assert not torch.allclose(seen_by_student, original)  # erased and mixed, not the clean batch
    assert torch.equal(batch.images, original)  # the loader's batch is left untouched
    assert not output.aux["teacher_logits"].requires_grad
    assert not recorder.training
    assert all(p.grad is None and not p.requires_grad for p in recorder.parameters())
    assert all(p.grad is not None for p in (student.vit.head.weight, student.vit.head_dist.weight))


def test_teacher_gets_the_batch_resized_and_renormalised_to_its_own_input():
    recorder = RecordingTeacher()
    teacher_mean, teacher_std = (0.4, 0.4, 0.4), (0.2, 0.25, 0.5)
    teacher = FrozenTeacher(
        recorder, image_size=8, student_stats=(MEAN, STD), teacher_stats=(teacher_mean, teacher_std)
    )
    raw = torch.rand(2, 3, 16, 16)

    def normalised(mean, std):
        return (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    teacher(normalised(MEAN, STD))
    expected = F.interpolate(
        normalised(teacher_mean, teacher_std), size=8, mode="bicubic", align_corners=False, antialias=True
    )
    torch.testing.assert_close(recorder.inputs[0], expected)


def test_label_teacher_teaches_the_dist_head_the_larger_part_of_each_mixed_image():
    method = deit_lt(teacher="labels", random_erasing=0.0, no_mixup_drw=True)
    set_up_on_cpu(method)
    assert isinstance(method.teacher, LabelTeacher)
    student = tiny_student().train()
    batch = make_batch()
    criterion = longtail.losses.create("deit_lt", class_counts=CIFAR10_IF100, drw_epoch=2)

    np.random.seed(3)  # timm's Mixup draws λ and the mode with NumPy
    loss, output = method.training_step(student, batch, criterion, step_of(0))
    np.random.seed(3)
    _, mixed_targets = method.augment(batch.images, batch.targets, mix=True)
    dominant = mixed_targets.argmax(1)
    assert torch.equal(output.aux["teacher_logits"].argmax(1), dominant)
    reversed_targets = batch.targets.flip(0)
    assert all(d in (a, b) for d, a, b in zip(dominant.tolist(), batch.targets.tolist(), reversed_targets.tolist()))
    cls_logits, dist_logits = output.aux["cls_logits"], output.aux["dist_logits"]
    expected = 0.5 * F.cross_entropy(cls_logits, mixed_targets) + 0.5 * F.cross_entropy(dist_logits, dominant)
    torch.testing.assert_close(loss, expected)

    _, output = method.training_step(student, batch, criterion, step_of(2))  # DRW without Mixup: the labels
    assert torch.equal(output.aux["teacher_logits"], F.one_hot(batch.targets, NUM_CLASSES).float())
    with pytest.raises(LongtailError, match="targets"):
        LabelTeacher(NUM_CLASSES)(batch.images)


def test_mixing_gives_smoothed_soft_targets_and_stops_at_drw_with_no_mixup_drw():
    method = deit_lt(random_erasing=0.0, no_mixup_drw=True)
    assert method.mixing(1) and not method.mixing(2)  # the recipe's loss.args.drw_epoch is 2
    batch = make_batch()
    images, targets = method.augment(batch.images, batch.targets, mix=True)
    assert targets.shape == (8, NUM_CLASSES)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert targets.min() >= 0.1 / NUM_CLASSES - 1e-6  # label smoothing 0.1 puts eps / C on every class
    images, targets = method.augment(batch.images, batch.targets, mix=False)
    assert torch.equal(targets, batch.targets) and torch.equal(images, batch.images)

    unmixed = deit_lt(mixup_alpha=0.0, cutmix_alpha=0.0)
    assert not unmixed.mixing(0)
    with pytest.raises(LongtailError, match="even batch"):
        method.augment(batch.images[:7], batch.targets[:7], mix=True)


def test_setup_refuses_a_distillation_loss_without_teacher_and_no_mixup_drw_without_drw():
    with pytest.raises(LongtailError, match="method.args.teacher"):
        set_up_on_cpu(deit_lt())
    with pytest.raises(LongtailError, match="drw_epoch"):
        set_up_on_cpu(deit_lt(loss="ce", drw_epoch=None, no_mixup_drw=True))
    with pytest.raises(LongtailError, match="teacher not found"):
        FrozenTeacher.from_checkpoint("/nonexistent/teacher-run", torch.device("cpu"), info())


def test_a_teacher_run_still_training_is_refused_with_the_fix(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"the state after a few epochs")
    with pytest.raises(LongtailError, match="has not finished training .* --resume"):
        FrozenTeacher.from_checkpoint(tmp_path, torch.device("cpu"), info())
    with pytest.raises(LongtailError, match="probability"):
        deit_lt(random_erasing=1.5)
    set_up_on_cpu(deit_lt(loss="ce"))  # no teacher needed without distillation


# ---------------------------------------------------------------- DRW on the DIST head only


def test_drw_reweights_the_dist_head_alone():
    generator = torch.Generator().manual_seed(0)
    cls_logits, dist_logits, teacher_logits = torch.randn(3, 16, NUM_CLASSES, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, NUM_CLASSES, (16,), generator=generator)
    loss = longtail.losses.create("deit_lt", class_counts=CIFAR10_IF100, drw_epoch=2)

    def gradients(epoch: int):
        loss.set_epoch(epoch)
        cls = cls_logits.clone().requires_grad_(True)
        dist = dist_logits.clone().requires_grad_(True)
        aux = {"cls_logits": cls, "dist_logits": dist, "teacher_logits": teacher_logits}
        output = ModelOutput(logits=(cls + dist) / 2, aux=aux)
        loss(output, targets).backward()
        return cls.grad, dist.grad, dict(loss.parts)

    cls_before, dist_before, _ = gradients(1)
    cls_after, dist_after, parts = gradients(2)
    torch.testing.assert_close(cls_after, cls_before)
    assert not torch.allclose(dist_after, dist_before)
    weights = effective_number_weights(torch.tensor(CIFAR10_IF100), 0.9999, torch.float64)
    teacher_labels = teacher_logits.argmax(1)
    per_sample = F.cross_entropy(dist_logits, teacher_labels, reduction="none")
    expected_dist = (weights[teacher_labels] * per_sample).sum() / weights[teacher_labels].sum()
    torch.testing.assert_close(parts["dist"], 0.5 * expected_dist)
    torch.testing.assert_close(parts["cls"], 0.5 * F.cross_entropy(cls_logits, targets))


# ---------------------------------------------------------------- Head / Mid / Tail by class rank


def test_rank_groups_follow_deit_lt_cut_points():
    cifar100_if100 = [int(500 * 0.01 ** (c / 99)) for c in range(100)]
    groups = rank_groups(cifar100_if100, DEIT_LT_CUT_POINTS["cifar100-lt"])
    assert [groups[name].size for name in ("head", "mid", "tail")] == [36, 35, 29]
    assert cifar100_if100[35] == 98 and cifar100_if100[70] == 19
    cifar10 = rank_groups(CIFAR10_IF100, DEIT_LT_CUT_POINTS["cifar10-lt"])
    assert [cifar10[name].tolist() for name in ("head", "mid", "tail")] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    shuffled = rank_groups([5, 50, 500, 20, 200], (1, 3))  # ranks, not indices, when classes are not sorted
    assert [shuffled[name].tolist() for name in ("head", "mid", "tail")] == [[2], [4, 1], [3, 0]]
    with pytest.raises(LongtailError, match="cut points"):
        rank_groups(CIFAR10_IF100, (7, 3))


def test_extra_metrics_and_predictions():
    method = deit_lt(loss="ce")
    per_class = np.array([1.0, 1.0, 0.4, 0.5, 0.5, 0.5, 0.5, 0.0, 0.3, np.nan])
    metrics = method.extra_metrics({"per_class": per_class})
    assert metrics["head"] == pytest.approx(0.8) and metrics["mid"] == pytest.approx(0.5)
    assert metrics["tail"] == pytest.approx(0.15)  # the untested class 9 is left out
    assert metrics["rank_group_sizes"] == {"head": 3, "mid": 4, "tail": 3}
    unknown = DeiTLT(RunConfig(loss=LossConfig("ce")), info("digits-lt"))
    assert unknown.extra_metrics({"per_class": per_class}) == {}
    output = tiny_student().eval()(torch.randn(2, 3, 16, 16))
    extra = method.extra_predictions(output)
    assert set(extra) == {"cls", "dist"} and torch.equal(extra["dist"], output.aux["dist_logits"])
