"""Small-image datasets held in memory as one uint8 (N, 3, H, W) tensor.

Images are loaded lazily: building a dataset (and describing it) costs nothing; the first access to
``.images`` reads them from their store (an array, or a folder decoded once and cached on disk).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from longtail.data.cache import cached_array
from longtail.data.decode import decode_files
from longtail.data.labelled import LabelledImages


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
        class_names: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        meta: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(targets, class_names, mean, std, image_size, meta)
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
        return InMemoryImages(self.store, self.source_indices[positions], *self.labels_at(positions))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])

