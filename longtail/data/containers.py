"""What the data package hands out: image datasets, the batches loaders make of them, and a dataset's splits.

Every image dataset is a ``LabelledImages``: labels, per-image meta-information and the ``ImageClasses`` that
all splits and subsets of its dataset share (class names, image size, normalisation statistics). Its kinds
differ in where the images are:

- ``InMemoryImages``: small images held in memory as one uint8 (N, 3, H, W) tensor. They are loaded lazily:
  building a dataset (and describing it) costs nothing; the first access to ``.images`` reads them from
  their store (``ArrayStore``: an array, ``DecodedFileStore``: a folder decoded once and cached on disk).
- ``ImageFiles``: large images, image files listed with their labels, read one by one in DataLoader
  workers (``TransformedFiles``).
- ``LabelsOnly``: a split whose images are absent; its labels alone fix the class counts and shot groups of
  a long-tailed profile (``longtail datasets describe`` without the data). It yields no images.

``Batch`` is what every loader yields and every method consumes; ``DatasetSplits`` holds a dataset's train /
validation / test datasets and its ``DatasetInfo``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from longtail.data.reading import cached_array, decode_files, open_rgb


@dataclass
class Batch:
    """A training or evaluation batch.

    ``images`` (B, 3, H, W) float, normalised: the (weak) view. ``strong`` is the second, strongly
    augmented view of the same images when the loader makes two views. ``targets`` (B,) int64,
    ``indices`` (B,) the dataset indices (memory banks, clustering). ``meta`` holds per-image
    meta-information tensors by group name (MetaFormer).
    """

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    strong: torch.Tensor | None = None
    meta: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.targets.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            images=move(self.images),
            targets=move(self.targets),
            indices=move(self.indices),
            strong=move(self.strong),
            meta={k: move(v) for k, v in self.meta.items()},
        )


@dataclass
class ImageClasses:
    """What every split and subset of a dataset shares: the class names in label order, the side of the square
    images the model takes and the normalisation statistics (per RGB channel)."""

    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int

    def __post_init__(self) -> None:
        self.class_names = list(self.class_names)
        self.mean, self.std = tuple(self.mean), tuple(self.std)


class LabelledImages(Dataset):
    """Labels ``targets`` (N,) of N images of ``classes``; ``meta`` holds per-image tensors (first dimension
    N) by name, which loaders put in ``Batch.meta``. Subclasses hold the images and build their own subsets."""

    def __init__(self, targets: np.ndarray, classes: ImageClasses, meta: dict[str, torch.Tensor] | None = None) -> None:
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = classes
        self.meta = dict(meta or {})

    @property
    def class_names(self) -> list[str]:
        return self.classes.class_names

    @property
    def mean(self) -> tuple[float, ...]:
        return self.classes.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.classes.std

    @property
    def image_size(self) -> int:
        return self.classes.image_size

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def meta_at(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        """The meta-information of the images at ``positions``."""
        return {name: values[positions] for name, values in self.meta.items()}

    def __len__(self) -> int:
        return len(self.targets)


class LabelsOnly(LabelledImages):
    """A split of labels without images (see the module docstring)."""

    def subset(self, positions: np.ndarray) -> LabelsOnly:
        return LabelsOnly(self.targets[positions], self.classes, self.meta_at(positions))


class ArrayStore:
    """Images already in memory (CIFAR pickles, scikit-learn digits)."""

    def __init__(self, images: np.ndarray) -> None:
        self.array = images

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self.array[indices]


class DecodedFileStore:
    """Image files decoded together on first use, then cached on disk under a key of the files' identity."""

    def __init__(self, root: Path, relative_paths: Sequence[str], size: int | None) -> None:
        self.root = root
        self.relative_paths = list(relative_paths)
        self.size = size
        self._array: np.ndarray | None = None

    def _fingerprint(self) -> dict:
        stats = [(p, *self._stat(p)) for p in self.relative_paths]
        return {"root": str(self.root.resolve()), "size": self.size, "files": stats}

    def _stat(self, relative: str) -> tuple[int, int]:
        stat = (self.root / relative).stat()
        return stat.st_size, stat.st_mtime_ns

    def read(self, indices: np.ndarray) -> np.ndarray:
        if self._array is None:
            paths = [self.root / p for p in self.relative_paths]
            self._array = cached_array("images", self._fingerprint(), lambda: decode_files(paths, self.size))
        return self._array[indices]


Store = ArrayStore | DecodedFileStore


class InMemoryImages(LabelledImages):
    """Images ``store[indices]`` with labels ``targets``; items are ``(uint8 (3, H, W) tensor, label)``."""

    def __init__(
        self,
        store: Store,
        indices: np.ndarray,
        targets: np.ndarray,
        classes: ImageClasses,
        meta: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(targets, classes, meta)
        self.store = store
        self.source_indices = np.asarray(indices, dtype=np.int64)
        self._images: torch.Tensor | None = None

    @property
    def images(self) -> torch.Tensor:
        if self._images is None:
            self._images = torch.from_numpy(np.ascontiguousarray(self.store.read(self.source_indices)))
        return self._images

    def subset(self, positions: np.ndarray) -> InMemoryImages:
        """The images at ``positions`` of this dataset, as a new dataset over the same store."""
        return InMemoryImages(
            self.store, self.source_indices[positions], self.targets[positions], self.classes, self.meta_at(positions)
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])


class ImageFiles(LabelledImages):
    """Images ``image_root / relative_paths[i]`` with labels ``targets``; items are ``(PIL image, label)``."""

    def __init__(
        self,
        image_root: Path,
        relative_paths: Sequence[str],
        targets: np.ndarray,
        classes: ImageClasses,
        meta: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(targets, classes, meta)
        self.image_root = Path(image_root)
        self.relative_paths = np.asarray(relative_paths, dtype=object)

    def subset(self, positions: np.ndarray) -> ImageFiles:
        return ImageFiles(
            self.image_root, self.relative_paths[positions], self.targets[positions], self.classes,
            self.meta_at(positions),
        )

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


LongTailedDataset = InMemoryImages | ImageFiles


@dataclass(frozen=True)
class DatasetInfo:
    """What models, losses and reports need to know about a dataset's classes and images."""

    name: str
    num_classes: int
    class_names: list[str]
    train_counts: list[int]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    shot_groups: dict[str, np.ndarray]
    shot_thresholds: tuple[float, float] = (100.0, 20.0)

    @property
    def num_train(self) -> int:
        return sum(self.train_counts)


@dataclass
class DatasetSplits:
    """``val`` is None when the dataset has no validation split (``val_per_class=0``)."""

    train: LongTailedDataset
    val: LongTailedDataset | None
    test: LongTailedDataset
    info: DatasetInfo
