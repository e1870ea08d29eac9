"""DeiT-LT end to end through the trainer on digits-lt: a ResNet-32 teacher trained by the library, then a
one-block DeiT student distilled from its checkpoint (Mixup before DRW, none after), reporting the CLS and
DIST heads; the same student with the labels in the teacher's place; and the shipped recipes resolve."""

from __future__ import annotations

import pytest
import torch

from longtail.config import apply_overrides, from_dict, list_recipes, parse_overrides
from longtail.engine.trainer import train
from longtail.methods.recipes import resolve
from longtail.methods.runs import load_trained_model

DATA = {
    "name": "digits-lt",
    "imbalance": 10,
    "val_per_class": 5,
    "batch_size": 32,
    "eval_batch_size": 256,
    "augment": {"crop": True, "padding": 2, "flip": False, "policy": "randaugment"},
    "args": {"image_size": 16},
}
TEACHER = {
    "data": DATA,
    "model": {"name": "resnet32"},
    "optim": {"lr": 0.05},
    "schedule": {"name": "constant", "epochs": 1},
    "train": {"progress": False},
}
STUDENT = {
    "method": {"name": "deit_lt", "args": {"no_mixup_drw": True}},
    "data": DATA,
    "model": {"name": "deit_lt_tiny_patch4_32", "args": {"image_size": 16, "depth": 1, "drop_path_rate": 0.1}},
    "loss": {"name": "deit_lt", "args": {"drw_epoch": 1}},
    "optim": {"name": "adamw", "lr": 5.0e-4, "weight_decay": 0.05},
    "schedule": {"name": "cosine", "epochs": 2, "warmup_epochs": 1, "warmup_lr": 1.0e-6},
    "train": {"progress": False},
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_student_distils_from_a_library_trained_teacher(tmp_path):
    train(from_dict(TEACHER), tmp_path / "teacher")
    student = apply_overrides(STUDENT, parse_overrides([f"method.args.teacher={tmp_path / 'teacher'}"]))

    summary = train(from_dict(student), tmp_path / "student")

    assert {"main", "cls", "dist"} <= set(summary["last_test"])
    log = (tmp_path / "student" / "log.jsonl").read_text().splitlines()
    assert len(log) == 2 and '"loss_dist"' in log[0]
    restored = load_trained_model(tmp_path / "student")  # evaluating a student needs no teacher
    assert restored.method.teacher is None
    assert all(key.startswith("vit.") for key in restored.state["model"])  # the teacher is not saved with it
    output = restored.model(torch.zeros(2, 3, 16, 16))
    assert set(output.aux) == {"cls_logits", "dist_logits"}


def test_student_trains_with_the_labels_as_its_teacher(tmp_path):
    student = apply_overrides(STUDENT, parse_overrides(["method.args.teacher=labels"]))

    summary = train(from_dict(student), tmp_path / "student")

    assert {"main", "cls", "dist"} <= set(summary["last_test"])
    assert '"loss_dist"' in (tmp_path / "student" / "log.jsonl").read_text()


def test_deit_lt_recipes_resolve():
    names = [name for name in list_recipes() if name.startswith("deit-lt")]
    assert len(names) == 16
    for name in names:
        config = resolve(name)
        if config.method.name == "deit_lt":
            assert config.model.name.startswith("deit_lt_") and config.optim.name == "adamw"
            assert config.loss.args["drw_epoch"] < config.schedule.epochs
        else:
            assert config.optim.sam_rho > 0 and config.loss.name == "ldam"
    budget = resolve("deit-lt-cifar10-lt-if100-budget")
    assert (budget.schedule.epochs, budget.loss.args["drw_epoch"], budget.schedule.warmup_epochs) == (12, 11, 1)
    assert resolve("deit-lt-cifar10-lt-if100-budget-no-teacher").method.args["teacher"] is None
    label_teacher = resolve("deit-lt-cifar10-lt-if100-budget-label-teacher")
    assert (label_teacher.method.args["teacher"], label_teacher.loss.name) == ("labels", "deit_lt")
