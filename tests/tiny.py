"""Settings shared by the tests that train for real: digits-lt at 8x8, a few seconds a run, and a small
model without BatchNorm for tests that compare training setups exactly (BatchNorm's batch statistics would
legitimately differ between them)."""

import torch
from torch import nn

from longtail.methods.base import Method
from longtail.methods.context import RunContext, StepInfo
from longtail.models.base import SingleHeadNetwork
from longtail.models.registry import MODELS, register_model

TINY_DIGITS_DATA = {
    "name": "digits-lt",
    "imbalance": 10,
    "val_per_class": 5,
    "batch_size": 64,
    "eval_batch_size": 256,
    "augment": "none",
    "args": {"image_size": 8},
}

TINY_MLP = "test_tiny_mlp"


class TinyMLP(SingleHeadNetwork):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


if TINY_MLP not in MODELS:
    register_model(TINY_MLP)(TinyMLP)


def set_up_on_cpu(method: Method) -> Method:
    """``method.setup`` as the trainer calls it, on the CPU, with the splits built from its config if used."""
    method.setup(RunContext(method.config, torch.device("cpu")))
    return method


def step_of(epoch: int, stage_epochs: int | None = None, step: int = 0, steps_per_epoch: int = 1) -> StepInfo:
    """The ``StepInfo`` of a training step at 0-based ``epoch`` (the stage's last epoch unless told)."""
    return StepInfo(epoch, epoch + 1 if stage_epochs is None else stage_epochs, step, steps_per_epoch)
