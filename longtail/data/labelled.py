"""What every image dataset of this library carries besides its images: labels, class names, normalisation
statistics, image size and per-image meta-information."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class LabelledImages(Dataset):
    """Labels ``targets`` (N,) of N images; ``meta`` holds per-image tensors (first dimension N) by name,
    which loaders put in ``Batch.meta``. Subclasses hold the images and build their own subsets."""

    def __init__(
        self,
        targets: np.ndarray,
        class_names: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        meta: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.targets = np.asarray(targets, dtype=np.int64)
        self.class_names = list(class_names)
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = image_size
        self.meta = dict(meta or {})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labels_at(self, positions: np.ndarray) -> tuple[Any, ...]:
        """The ``LabelledImages`` arguments of the subset at ``positions``: its labels and meta, the rest as is."""
        meta = {name: values[positions] for name, values in self.meta.items()}
        return self.targets[positions], self.class_names, self.mean, self.std, self.image_size, meta

    def __len__(self) -> int:
        return len(self.targets)


class LabelsOnly(LabelledImages):
    """A split whose images are absent: its labels alone, which fix the class counts and shot groups of a
    long-tailed profile (``longtail datasets describe`` without the data). It yields no images."""

    def subset(self, positions: np.ndarray) -> LabelsOnly:
        return LabelsOnly(*self.labels_at(positions))
