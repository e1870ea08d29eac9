"""List-defined long-tailed datasets: ImageNet-LT, Places-LT (Liu et al., OLTR, 2019) and iNaturalist 2018.

Each split is a ``relative/path label`` list; the lists define the long tail, so ``imbalance`` and
``profile`` do not apply. Lists are looked up in ``list_root`` (default: the first of ``<root>/lt-splits``,
``<root>/<images folder>``, ``<root>`` holding the training list); images are read from ``image_root``
(default ``<root>/<images folder>``: ``imagenet``, ``places365``, ``inat2018``) by DataLoader workers.
iNaturalist 2018 has no separate test set: its official validation list is the test split, as in the
literature. ImageNet-LT and Places-LT bring official validation lists (20 images per class), used as the
validation split when present and ``val_per_class`` is None.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longtail.data.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetSplits,
    existing_root,
    long_tailed_splits,
    register_dataset,
)
from longtail.data.files import ImageFiles
from longtail.data.sources import FileList, read_class_names, read_file_list
from longtail.errors import Setting, SettingError

IMAGE_SIZE = 224


@dataclass(frozen=True)
class ListLayout:
    images_folder: str
    train: str
    val: str | None
    test: str
    class_names: str | None


IMAGENET_LT = ListLayout("imagenet", "ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt",
                         "ImageNet_LT_classnames.txt")
PLACES_LT = ListLayout("places365", "Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt",
                       "Places_LT_classnames.txt")
INAT2018 = ListLayout("inat2018", "iNaturalist18_train.txt", None, "iNaturalist18_val.txt", None)


def find_list_root(root: Path, layout: ListLayout) -> Path:
    candidates = [root / "lt-splits", root / layout.images_folder, root]
    for folder in candidates:
        if (folder / layout.train).is_file():
            return folder
    searched = ", ".join(f"'{c}'" for c in candidates)
    raise SettingError(
        f"Training list '{layout.train}' not found in {searched}. Put the split lists there or give ",
        Setting("list_root", "<folder with the lists>"), "."
    )


def list_splits(
    name: str,
    layout: ListLayout,
    root: Path,
    list_root: str | Path | None,
    image_root: str | Path | None,
    image_size: int,
    common: dict[str, Any],
) -> DatasetSplits:
    lists = Path(list_root) if list_root is not None else find_list_root(existing_root(root), layout)
    images = Path(image_root) if image_root is not None else root / layout.images_folder
    train_list = read_file_list(lists / layout.train)
    test_list = read_file_list(lists / layout.test)
    num_classes = int(max(train_list.targets.max(), test_list.targets.max())) + 1
    names = read_class_names(lists / layout.class_names, num_classes) if layout.class_names else None
    if names is None or len(names) != num_classes:
        names = [str(label) for label in range(num_classes)]

    def files(file_list: FileList) -> ImageFiles:
        return ImageFiles(images, file_list.relative_paths, file_list.targets, names, IMAGENET_MEAN, IMAGENET_STD,
                          image_size)

    has_val_list = layout.val is not None and (lists / layout.val).is_file()
    official_val = files(read_file_list(lists / layout.val)) if has_val_list else None
    return long_tailed_splits(
        name, files(train_list), files(test_list), official_val=official_val, apply_profile=False, **common
    )


@register_dataset("imagenet-lt")
def imagenet_lt(
    root: Path, list_root: str | Path | None = None, image_root: str | Path | None = None,
    image_size: int = IMAGE_SIZE, **common: Any,
) -> DatasetSplits:
    return list_splits("imagenet-lt", IMAGENET_LT, root, list_root, image_root, image_size, common)


@register_dataset("places-lt")
def places_lt(
    root: Path, list_root: str | Path | None = None, image_root: str | Path | None = None,
    image_size: int = IMAGE_SIZE, **common: Any,
) -> DatasetSplits:
    return list_splits("places-lt", PLACES_LT, root, list_root, image_root, image_size, common)


@register_dataset("inat2018")
def inat2018(
    root: Path, list_root: str | Path | None = None, image_root: str | Path | None = None,
    image_size: int = IMAGE_SIZE, **common: Any,
) -> DatasetSplits:
    return list_splits("inat2018", INAT2018, root, list_root, image_root, image_size, common)
