"""Datasets of image files given by a folder tree or by split lists: imagefolder-lt, imagenet-r, ImageNet-LT,
Places-LT and iNaturalist 2018. All use the ImageNet mean and std.

``imagefolder-lt``: any ``root/<split>/<class>/<image>`` tree, made long-tailed by the profile. Classes are in
sorted folder order; class ``i`` of the profile is the ``i``-th folder, and ``n_max`` defaults to the smallest
training class. The test split is ``root/test`` (else ``root/val``); when both exist, ``root/val`` is the
official validation split. Small images (the model sees at most ``IN_MEMORY_MAX_SIZE`` = 64 pixels a side:
``image_size``, else the first training image's own size) are decoded once into memory at that size (cached
on disk) for the fast batched pipeline; larger ones stream from disk through DataLoader workers at
``image_size`` (default 224). ``in_memory=True`` / ``False`` overrides the choice.

``imagenet-r``: ImageNet-R(endition), naturally long-tailed, with a seeded balanced test split held out.
ImageNet-R (Hendrycks et al., "The Many Faces of Robustness", ICCV 2021) holds 30,000 renditions (art,
cartoons, sketches, toys, ...) of 200 ImageNet classes, unevenly many per class. The P²OT / SP²OT papers
(see ``longtail.methods.p2ot``) cluster it as a naturally imbalanced dataset: ``test_per_class`` (20) random
images of every class are held out as the balanced test set, the rest is the training set as it comes (no
profile: ``imbalance``, ``profile`` and ``selection`` do not apply). The held-out images are drawn per class
with numpy stream ``(split_seed, HOLDOUT_STREAM)``, ``split_seed`` 0 by default and independent of the run's
seed, so that runs with different seeds are tested on the same images; ``val_per_class`` then carves
validation from the training images as for every dataset (``longtail.data.shaping``). Data: the released
``imagenet-r.tar`` extracted, ``<root>/imagenet-r/<wnid>/<image>`` (or ``image_root=<folder>``); it is
never downloaded. Labels follow the sorted wnids (the papers relabel by descending training count, which only
renames classes: the clustering metrics order classes by training count themselves). Class names are the
wnids, or readable names from ``names_file`` (default: the release's ``README.txt`` when present), a text
file whose ``<wnid> <name>`` lines are used and other lines ignored. Images stream from disk at 224 px.

iNature100 / 500 / 1000 (the P²OT papers' iNaturalist 2018 subsets): ``write_inat_subset_lists`` writes the
split lists of a subset (``longtail cluster --inat-subset N``), which ``inat2018`` reads as its ``list_root``.

List-defined long-tailed datasets: ImageNet-LT, Places-LT (Liu et al., OLTR, 2019) and iNaturalist 2018.
Each split is a ``relative/path label`` list; the lists define the long tail, so ``imbalance`` and
``profile`` do not apply. Lists are looked up in ``list_root`` (default: the first of ``<root>/lt-splits``,
``<root>/<images folder>``, ``<root>`` holding the training list); images are read from ``image_root``
(default ``<root>/<images folder>``: ``imagenet``, ``places365``, ``inat2018``) by DataLoader workers.
iNaturalist 2018 has no separate test set: its official validation list is the test split, as in the
literature. ImageNet-LT and Places-LT bring official validation lists (20 images per class), used as the
validation split when present and ``val_per_class`` is None.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longtail.data.containers import (
    DatasetSplits,
    DecodedFileStore,
    ImageClasses,
    ImageFiles,
    InMemoryImages,
    LongTailedDataset,
)
from longtail.data.datasets import existing_root, register_dataset
from longtail.data.loaders import IN_MEMORY_MAX_SIZE
from longtail.data.reading import FileList, open_rgb, read_class_names, read_file_list, scan_image_folder
from longtail.data.shaping import long_tailed_splits
from longtail.errors import LongtailError, Setting, SettingError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STREAMED_IMAGE_SIZE = 224
IMAGENET_R_FOLDER = "imagenet-r"
IMAGENET_R_NAMES_FILE = "README.txt"
IMAGENET_R_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
IMAGENET_R_TEST_PER_CLASS = 20
HOLDOUT_STREAM = 0x1E7  # separates the test draw from the validation draw seeded by the same seed
WNID_NAME_LINE = re.compile(r"^\s*(n\d{8})\s+(\S.*?)\s*$")
# Classes of iNaturalist 2018 and of the P²OT papers' iNature subsets, each kept from the one before it.
INAT_SUBSET_SIZES = (8142, 2000, 1000, 500, 200, 100)


def _imagenet_classes(class_names: list[str], image_size: int) -> ImageClasses:
    """Classes of images normalised with the ImageNet mean and std, as those of every dataset here are."""
    return ImageClasses(class_names, IMAGENET_MEAN, IMAGENET_STD, image_size)


def _split_dataset(folder: Path, in_memory: bool | None, image_size: int | None) -> LongTailedDataset:
    """The images of ``folder``; ``in_memory`` None keeps them in memory when the model sees them small."""
    files, names = scan_image_folder(folder)
    first = folder / files.relative_paths[0]
    if in_memory is None:
        in_memory = (image_size or max(open_rgb(first).size)) <= IN_MEMORY_MAX_SIZE
    if not in_memory:
        size = image_size or STREAMED_IMAGE_SIZE
        return ImageFiles(folder, files.relative_paths, files.targets, _imagenet_classes(names, size))
    size = image_size or _first_image_size(first)
    store = DecodedFileStore(folder, files.relative_paths, image_size)
    positions = np.arange(len(files.targets))
    return InMemoryImages(store, positions, files.targets, _imagenet_classes(names, size))


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


def _imagenet_r_folder(root: Path, image_root: str | Path | None) -> Path:
    folder = Path(image_root).expanduser() if image_root is not None else root / IMAGENET_R_FOLDER
    if not folder.is_dir():
        raise SettingError(
            f"ImageNet-R folder '{folder}' not found. Download imagenet-r.tar ({IMAGENET_R_URL}) and extract it "
            f"into the data root so that {root / IMAGENET_R_FOLDER}/<wnid>/<image> exists, or give ",
            Setting("image_root", "<your imagenet-r folder>"), "."
        )
    return folder


def read_readable_names(path: Path) -> dict[str, str]:
    """``wnid -> name`` from the ``<wnid> <name>`` lines of ``path`` (other lines are skipped)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    matches = (WNID_NAME_LINE.match(line) for line in lines)
    return {match[1]: match[2] for match in matches if match}


def _imagenet_r_class_names(wnids: list[str], folder: Path, names_file: str | Path | None) -> list[str]:
    path = Path(names_file).expanduser() if names_file is not None else folder / IMAGENET_R_NAMES_FILE
    if not path.is_file():
        if names_file is not None:
            raise LongtailError(f"names_file '{path}' not found; pass a file of '<wnid> <name>' lines or omit it.")
        return list(wnids)
    readable = read_readable_names(path)
    return [readable.get(wnid, wnid) for wnid in wnids]


def hold_out_per_class(targets: np.ndarray, test_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` sorted positions: ``test_per_class`` random positions of every class go to test."""
    rng = np.random.default_rng([seed, HOLDOUT_STREAM])
    test = [rng.permutation(np.flatnonzero(targets == label))[:test_per_class] for label in np.unique(targets)]
    held_out = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(targets)), held_out), held_out


def _check_class_sizes(counts: np.ndarray, wnids: list[str], folder: Path, test_per_class: int) -> None:
    small = [f"{wnids[label]} ({counts[label]})" for label in np.flatnonzero(counts <= test_per_class)]
    if small:
        shown = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
        raise LongtailError(
            f"Class folders of '{folder}' with at most test_per_class={test_per_class} images: {shown}. Each class "
            "needs more images than it holds out for testing: lower test_per_class or complete those folders."
        )


@register_dataset("imagenet-r")
def imagenet_r(
    root: Path,
    image_root: str | Path | None = None,
    test_per_class: int = IMAGENET_R_TEST_PER_CLASS,
    names_file: str | Path | None = None,
    image_size: int = STREAMED_IMAGE_SIZE,
    split_seed: int = 0,
    **common: Any,
) -> DatasetSplits:
    if isinstance(test_per_class, bool) or not isinstance(test_per_class, int) or test_per_class < 1:
        raise LongtailError(f"test_per_class must be an integer >= 1 (images held out per class), got "
                            f"{test_per_class!r}.")
    folder = _imagenet_r_folder(root, image_root)
    files, wnids = scan_image_folder(folder)
    _check_class_sizes(np.bincount(files.targets, minlength=len(wnids)), wnids, folder, test_per_class)
    classes = _imagenet_classes(_imagenet_r_class_names(wnids, folder, names_file), image_size)
    images = ImageFiles(folder, files.relative_paths, files.targets, classes)
    train, test = hold_out_per_class(files.targets, test_per_class, split_seed)
    return long_tailed_splits("imagenet-r", images.subset(train), images.subset(test), apply_profile=False, **common)


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
    classes = _imagenet_classes(names, image_size)

    def files(file_list: FileList) -> ImageFiles:
        return ImageFiles(images, file_list.relative_paths, file_list.targets, classes)

    has_val_list = layout.val is not None and (lists / layout.val).is_file()
    official_val = files(read_file_list(lists / layout.val)) if has_val_list else None
    return long_tailed_splits(
        name, files(train_list), files(test_list), official_val=official_val, apply_profile=False, **common
    )


@register_dataset("imagenet-lt")
def imagenet_lt(
    root: Path, list_root: str | Path | None = None, image_root: str | Path | None = None,
    image_size: int = STREAMED_IMAGE_SIZE, **common: Any,
) -> DatasetSplits:
    return list_splits("imagenet-lt", IMAGENET_LT, root, list_root, image_root, image_size, common)


@register_dataset("places-lt")
def places_lt(
    root: Path, list_root: str | Path | None = None, image_root: str | Path | None = None,
    image_size: int = STREAMED_IMAGE_SIZE, **common: Any,
) -> DatasetSplits:
    return list_splits("places-lt", PLACES_LT, root, list_root, image_root, image_size, common)


@register_dataset("inat2018")
def inat2018(
    root: Path, list_root: str | Path | None = None, image_root: str | Path | None = None,
    image_size: int = STREAMED_IMAGE_SIZE, **common: Any,
) -> DatasetSplits:
    return list_splits("inat2018", INAT2018, root, list_root, image_root, image_size, common)


def inat_subset_classes(train_targets: np.ndarray | Sequence[int], num_classes: int) -> np.ndarray:
    """The iNaturalist 2018 classes of the papers' iNature100/500/1000 subsets, in new-label order.

    Classes are sorted by training count (descending, ties by class id); each subset size of
    ``INAT_SUBSET_SIZES`` keeps every ``previous // size``-th class of the previous subset, the first ``size``.
    """
    if num_classes not in INAT_SUBSET_SIZES[1:]:
        sizes = ", ".join(map(str, INAT_SUBSET_SIZES[1:]))
        raise LongtailError(f"iNat subsets have {sizes} classes; got {num_classes}.")
    counts = np.bincount(np.asarray(train_targets, dtype=np.int64))
    if len(counts) != INAT_SUBSET_SIZES[0]:
        raise LongtailError(f"The iNat 2018 training list has {len(counts)} classes; expected {INAT_SUBSET_SIZES[0]}.")
    selected = np.argsort(-counts, kind="stable")
    for previous, size in zip(INAT_SUBSET_SIZES, INAT_SUBSET_SIZES[1:]):
        selected = selected[:: previous // size][:size]
        if size == num_classes:
            return selected
    raise AssertionError("unreachable: num_classes was checked against INAT_SUBSET_SIZES")


def write_inat_subset_lists(list_root: str | Path, out_dir: str | Path, num_classes: int) -> Path:
    """Write ``iNaturalist18_train.txt`` / ``iNaturalist18_val.txt`` of a subset (labels renumbered by
    :func:`inat_subset_classes`) into ``out_dir``; use it as ``data.args.list_root`` of dataset ``inat2018``."""
    list_root, out_dir = Path(list_root), Path(out_dir)
    train, val = read_file_list(list_root / INAT2018.train), read_file_list(list_root / INAT2018.test)
    classes = inat_subset_classes(train.targets, num_classes)
    new_label = np.full(INAT_SUBSET_SIZES[0], -1, dtype=np.int64)
    new_label[classes] = np.arange(num_classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    for file_list, name in ((train, INAT2018.train), (val, INAT2018.test)):
        labels = new_label[file_list.targets]
        lines = [f"{path} {label}\n" for path, label in zip(file_list.relative_paths, labels) if label >= 0]
        (out_dir / name).write_text("".join(lines))
    return out_dir
