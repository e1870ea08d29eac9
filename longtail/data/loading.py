"""The ``Loader`` base: which dataset indices each batch of an epoch holds on this rank.

All randomness of an epoch (its order, and the augmentations drawn by subclasses from ``epoch_seed``) is a
function of ``(seed, epoch, rank)``, so ``set_epoch(e)`` reproduces epoch ``e`` exactly: resuming a run
gives the batches it would have seen. Training orders are padded so that every rank gets the same number
of batches; evaluation orders are dealt without padding (each image once over all ranks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np

from longtail.data.batch import Batch
from longtail.data.samplers import EpochSampler, epoch_rng, shard


class Loader(ABC):
    """Iterates the ``Batch``es of one epoch; ``set_epoch`` before each epoch (0-based)."""

    def __init__(
        self,
        dataset,
        sampler: EpochSampler,
        batch_size: int,
        train: bool,
        seed: int,
        drop_last: bool,
        rank: int,
        world_size: int,
    ) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> np.ndarray:
        """This rank's dataset indices for the current epoch, in order (the head of its shard when the
        sampler's order is longer than the epoch, as the repeated sampler's is)."""
        order = self.sampler.epoch_order(self.epoch, self.seed)
        return shard(order, self.rank, self.world_size, pad=self.train)[: self.samples_per_rank()]

    def epoch_batches(self) -> list[np.ndarray]:
        indices = self.epoch_indices()
        stop = len(indices) - len(indices) % self.batch_size if self.drop_last else len(indices)
        return [indices[start : min(start + self.batch_size, stop)] for start in range(0, stop, self.batch_size)]

    def epoch_seed(self, stream: int) -> int:
        """A seed for this epoch's and rank's randomness of kind ``stream``."""
        return int(epoch_rng(self.seed, self.epoch, stream, self.rank).integers(2**62))

    def samples_per_rank(self) -> int:
        total = self.sampler.num_samples
        if self.train:
            return -(-total // self.world_size)
        return len(range(self.rank, total, self.world_size))

    def __len__(self) -> int:
        samples = self.samples_per_rank()
        return samples // self.batch_size if self.drop_last else -(-samples // self.batch_size)

    @abstractmethod
    def __iter__(self) -> Iterator[Batch]: ...
