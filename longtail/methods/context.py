"""What the trainer tells a method: the run context at set-up and the step info at every training step.

``RunContext`` is given once (``Method.setup``; ``load_trained_model`` attaches one for evaluation): the run's
config, device, process rank and count, its dataset splits, and the features of the training split. ``StepInfo``
comes with every ``Method.training_step``: the 0-based epoch within the stage, the optimiser step within the
epoch, how many there are, and the progress through the stage they imply. Methods read these instead of
re-deriving the trainer's loader arithmetic or keeping counters of their own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longtail.config import RunConfig
from longtail.data import DatasetSplits, create_datasets, create_loader
from longtail.models.base import eval_mode


def create_datasets_for(config: RunConfig) -> DatasetSplits:
    """The train / validation / test splits that ``config.data`` describes."""
    data = config.data
    return create_datasets(
        data.name,
        root=data.root,
        imbalance=data.imbalance,
        profile=data.profile,
        selection=data.selection,
        seed=config.train.seed,
        val_per_class=data.val_per_class,
        **data.args,
    )


class RunContext:
    """The run a method takes part in. ``splits`` are the trainer's own; where none are given (evaluation of a
    saved run) they are built from the config on first use, so a context costs nothing until a method asks."""

    def __init__(
        self,
        config: RunConfig,
        device: torch.device,
        splits: DatasetSplits | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.config = config
        self.device = device
        self.rank = rank
        self.world_size = world_size
        if splits is not None:
            self.__dict__["splits"] = splits  # fills the cached property

    @functools.cached_property
    def splits(self) -> DatasetSplits:
        return create_datasets_for(self.config)

    @torch.no_grad()
    def training_features(self, network: nn.Module) -> Tensor:
        """``network.forward_features`` (N, D) of the training split, unaugmented, in dataset order, on the CPU."""
        train = self.splits.train
        device = next(network.parameters()).device
        loader = create_loader(train, batch_size=self.config.data.eval_batch_size, train=False, augment="none",
                               device=device, num_workers=self.config.data.num_workers)
        features: Tensor | None = None
        with eval_mode(network), torch.autocast(device.type, enabled=False):
            for batch in loader:
                rows = network.forward_features(batch.images).float().cpu()
                if features is None:
                    features = torch.empty(len(train), rows.shape[1])
                features[batch.indices.cpu()] = rows
        return features


@dataclass(frozen=True)
class StepInfo:
    """Where a training step stands: ``epoch`` (0-based within the stage, of ``stage_epochs``) and ``step``, the
    0-based optimiser step within the epoch, of ``steps_per_epoch`` (micro-batches of one accumulated step share
    it, and SAM's second pass repeats it)."""

    epoch: int
    stage_epochs: int
    step: int = 0
    steps_per_epoch: int = 1

    @property
    def progress(self) -> float:
        """The share of the stage's optimiser steps done before this one, in [0, 1)."""
        return (self.epoch * self.steps_per_epoch + self.step) / (self.stage_epochs * self.steps_per_epoch)
