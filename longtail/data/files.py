"""Large-image datasets: image files listed with their labels, read one by one in DataLoader workers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from longtail.data.decode import open_rgb
from longtail.data.labelled import LabelledImages


class ImageFiles(LabelledImages):
    """Images ``image_root / relative_paths[i]`` with labels ``targets``; items are ``(PIL image, label)``."""

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
        super().__init__(targets, class_names, mean, std, image_size, meta)
        self.image_root = Path(image_root)
        self.relative_paths = np.asarray(relative_paths, dtype=object)

    def subset(self, positions: np.ndarray) -> ImageFiles:
        return ImageFiles(self.image_root, self.relative_paths[positions], *self.labels_at(positions))

    def path(self, index: int) -> Path:
        return self.image_root / self.relative_paths[index]

    def load(self, index: int) -> Image.Image:
        return open_rgb(self.path(index))

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
