"""Large-image datasets: image files listed with their labels, read one by one in DataLoader workers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from longtail.data.decode import open_rgb


class ImageFiles(Dataset):
    """Images ``image_root / relative_paths[i]`` with labels ``targets``; items are ``(PIL image, label)``.

    ``meta`` holds per-image tensors (first dimension N) by name; loaders put them in ``Batch.meta``.
    """

    def __init__(
        self,
        image_root: Path,
        relative_paths: Sequence[str],
        targets: np.ndarray,
        class_names: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        meta: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.image_root = Path(image_root)
        self.relative_paths = np.asarray(relative_paths, dtype=object)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.class_names = list(class_names)
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = image_size
        self.meta = dict(meta or {})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, positions: np.ndarray) -> ImageFiles:
        return ImageFiles(
            self.image_root,
            self.relative_paths[positions],
            self.targets[positions],
            self.class_names,
            self.mean,
            self.std,
            self.image_size,
            {name: values[positions] for name, values in self.meta.items()},
        )

    def path(self, index: int) -> Path:
        return self.image_root / self.relative_paths[index]

    def load(self, index: int) -> Image.Image:
        return open_rgb(self.path(index))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.load(index), int(self.targets[index])


class TransformedFiles(Dataset):
    """``(index, *views)`` of an ImageFiles dataset: each view is one transform of the decoded image."""

    def __init__(self, files: ImageFiles, transforms: Sequence[Callable]) -> None:
        self.files = files
        self.transforms = list(transforms)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple:
        image = self.files.load(index)
        return (index, *(transform(image) for transform in self.transforms))
