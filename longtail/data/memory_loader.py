"""Loader of in-memory datasets: the uint8 images live on the target device and batches are augmented there."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from longtail.data.augment import BatchAugment
from longtail.data.batch import Batch
from longtail.data.loading import Loader
from longtail.data.memory import InMemoryImages
from longtail.data.threads import intra_op_threads

AUGMENT_STREAM = 0xA06


class InMemoryLoader(Loader):
    """``weak`` (and ``strong`` for two views) map a uint8 batch to the normalised float views."""

    def __init__(
        self,
        dataset: InMemoryImages,
        weak: BatchAugment,
        strong: BatchAugment | None,
        device: torch.device | str,
        **loader_args,
    ) -> None:
        super().__init__(dataset, **loader_args)
        self.device = torch.device(device)
        self.weak, self.strong = weak, strong
        self.images = dataset.images.to(self.device)
        self.targets = torch.from_numpy(dataset.targets).to(self.device)
        self.meta = {name: values.to(self.device) for name, values in dataset.meta.items()}

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.epoch_seed(AUGMENT_STREAM))
        threads = 1 if self.device.type == "cpu" else torch.get_num_threads()  # see longtail.data.threads
        for indices in self.epoch_batches():
            with intra_op_threads(threads):
                batch = self._batch(torch.from_numpy(indices).to(self.device, non_blocking=True), generator)
            yield batch

    def _batch(self, rows: torch.Tensor, generator: torch.Generator) -> Batch:
        raw = self.images[rows]
        return Batch(
            images=self.weak(raw, generator),
            targets=self.targets[rows],
            indices=rows,
            strong=self.strong(raw, generator) if self.strong is not None else None,
            meta={name: values[rows] for name, values in self.meta.items()},
        )
