"""Settings shared by the tests that train for real: digits-lt at 8x8, a few seconds a run, and a small
model without BatchNorm for tests that compare training setups exactly (BatchNorm's batch statistics would
legitimately differ between them)."""

import torch
from torch import nn

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
