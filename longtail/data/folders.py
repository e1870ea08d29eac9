"""``imagefolder-lt``: any ``root/<split>/<class>/<image>`` tree, made long-tailed by the profile.

Classes are in sorted folder order; class ``i`` of the profile is the ``i``-th folder, and ``n_max``
defaults to the smallest training class. The test split is ``root/test`` (else ``root/val``); when both
exist, ``root/val`` is the official validation split. Small images (the model sees at most
``IN_MEMORY_MAX_SIZE`` = 64 pixels a side: ``image_size``, else the first training image's own size) are
decoded once into memory at that size (cached on disk) for the fast batched pipeline; larger ones stream from
disk through DataLoader workers at ``image_size`` (default 224). ``in_memory=True`` / ``False`` overrides the
choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from longtail.data.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetSplits,
    LongTailedDataset,
    existing_root,
    long_tailed_splits,
    register_dataset,
)
from longtail.data.decode import open_rgb
from longtail.data.files import ImageFiles
from longtail.data.memory import DecodedFileStore, InMemoryImages
from longtail.data.preprocess import IN_MEMORY_MAX_SIZE
from longtail.data.sources import scan_image_folder
from longtail.errors import LongtailError, Setting, SettingError

STREAMED_IMAGE_SIZE = 224


def _split_dataset(folder: Path, in_memory: bool | None, image_size: int | None) -> LongTailedDataset:
    """The images of ``folder``; ``in_memory`` None keeps them in memory when the model sees them small."""
    files, names = scan_image_folder(folder)
    first = folder / files.relative_paths[0]
    if in_memory is None:
        in_memory = (image_size or max(open_rgb(first).size)) <= IN_MEMORY_MAX_SIZE
    if not in_memory:
        size = image_size or STREAMED_IMAGE_SIZE
        return ImageFiles(folder, files.relative_paths, files.targets, names, IMAGENET_MEAN, IMAGENET_STD, size)
    size = image_size or _first_image_size(first)
    store = DecodedFileStore(folder, files.relative_paths, image_size)
    positions = np.arange(len(files.targets))
    return InMemoryImages(store, positions, files.targets, names, IMAGENET_MEAN, IMAGENET_STD, size)


def _first_image_size(path: Path) -> int:
    width, height = open_rgb(path).size
    if width != height:
        raise LongtailError(f"Image '{path}' is {width}x{height}; pass image_size=<pixels> to decode square images.")
    return width


@register_dataset("imagefolder-lt")
def imagefolder_lt(
    root: Path,
    in_memory: bool | None = None,
    image_size: int | None = None,
    n_max: int | None = None,
    **common: Any,
) -> DatasetSplits:
    root = existing_root(root)
    if not (root / "train").is_dir():
        raise SettingError(f"'{root}' has no 'train' folder; imagefolder-lt needs ", Setting("root", "<tree>"),
                           " with train/<class>/<image> and test/<class>/<image>.")
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if test_dir is None:
        raise LongtailError(f"'{root}' has no 'test' (or 'val') folder with the test images per class.")
    train_pool = _split_dataset(root / "train", in_memory, image_size)
    in_memory = isinstance(train_pool, InMemoryImages)  # every split as the training images
    test = _split_dataset(test_dir, in_memory, image_size)
    if test.class_names != train_pool.class_names:
        raise LongtailError(f"The class folders of '{test_dir}' differ from those of '{root / 'train'}'.")
    has_val = test_dir.name == "test" and (root / "val").is_dir()
    official_val = _split_dataset(root / "val", in_memory, image_size) if has_val else None
    return long_tailed_splits("imagefolder-lt", train_pool, test, official_val=official_val, n_max=n_max, **common)
