"""The small-image datasets, held in memory: CIFAR-10-LT, CIFAR-100-LT and digits-lt.

``cifar10-lt`` and ``cifar100-lt`` (Cao et al., LDAM-DRW, 2019) come from the official pickles or an
ImageFolder copy. Under the data root, the first of these is used:

1. the official python version: ``cifar-10-batches-py/`` or ``cifar-100-python/`` (also accepted as the
   root itself); downloaded there by torchvision when ``download=True``;
2. an ImageFolder tree ``cifar10-jpeg/`` or ``cifar100-jpeg/`` (``train/<class>/*``, ``test/<class>/*``),
   e.g. ``../shared/data/cifar10-jpeg``; labels follow the CIFAR class order. Decoded once and cached.

``digits-lt``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes) made long-tailed. The
embedded default dataset: it ships with scikit-learn and needs no download. A fixed test split of 50 images
per class (chosen with numpy seed 0, whatever the run's seed) is set aside first; the rest is the training
pool, made long-tailed with ``n_max`` = its smallest class (124). Images are upsampled bilinearly to
``image_size`` (default 32, so CIFAR models and augmentations apply unchanged) and copied to three channels.
With n_max = 124 the shot groups use thresholds scaled to n_max (see ``longtail.data.shaping``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longtail.data.containers import (
    ArrayStore,
    DatasetSplits,
    DecodedFileStore,
    ImageClasses,
    InMemoryImages,
    LabelsOnly,
)
from longtail.data.datasets import DataNotFound, existing_root, register_dataset
from longtail.data.reading import CIFAR10_FORMAT, CIFAR100_FORMAT, CifarFormat, read_cifar, scan_image_folder
from longtail.data.shaping import long_tailed_splits
from longtail.errors import LongtailError, Setting

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # as in the LDAM-DRW / RIDE code
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
    "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard",
    "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum",
    "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper",
    "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm",
]  # the fine labels in CIFAR-100's label order
IMAGES_PER_CLASS = {10: (5000, 1000), 100: (500, 100)}  # (train, test) images of each class of CIFAR-10 / -100
CIFAR_IMAGE_SIZE = 32
DIGITS_TEST_PER_CLASS = 50
DIGITS_TEST_SEED = 0
DIGIT_MAX = 16.0  # scikit-learn's digits are grey levels 0..16


def _pickle_folder(root: Path, fmt: CifarFormat) -> Path | None:
    for folder in (root / fmt.folder, root):
        if (folder / fmt.meta_file).is_file():
            return folder
    return None


def _jpeg_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    for folder in [root / name for name in names] + [root]:
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return folder
    return None


def _download(root: Path, num_classes: int) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100

    dataset = CIFAR10 if num_classes == 10 else CIFAR100
    try:
        for train in (True, False):
            dataset(str(root), train=train, download=True)
    except (OSError, RuntimeError) as error:
        message = f"Downloading CIFAR-{num_classes} into '{root}' failed ({error}); are you online?"
        raise LongtailError(message) from None


def _pools(root: Path, num_classes: int, fmt: CifarFormat, jpeg_names: tuple[str, ...], stats, download: bool):
    """(train pool, test set) over the source's full splits."""
    folder = _pickle_folder(root, fmt)
    if folder is None and download:
        root.mkdir(parents=True, exist_ok=True)
        _download(root, num_classes)
        folder = _pickle_folder(root, fmt)
    if folder is not None:
        (train_x, train_y), (test_x, test_y), names = read_cifar(folder, fmt)
        classes = ImageClasses(names, *stats, CIFAR_IMAGE_SIZE)
        return (
            InMemoryImages(ArrayStore(train_x), np.arange(len(train_y)), train_y, classes),
            InMemoryImages(ArrayStore(test_x), np.arange(len(test_y)), test_y, classes),
        )
    tree = _jpeg_folder(existing_root(root), jpeg_names)
    if tree is None:
        raise DataNotFound(
            f"CIFAR-{num_classes} not found under '{root}': expected the official python version in "
            f"'{root / fmt.folder}' or an ImageFolder tree '{root / jpeg_names[0]}/{{train,test}}/<class>/'. ",
            "To fetch it, give ", Setting("download", "true"), "; to read it from another folder, give ",
            Setting("root", "<folder>"), "."
        )
    order = CIFAR10_CLASSES if num_classes == 10 else None
    pools = []
    for split in ("train", "test"):
        files, names = scan_image_folder(tree / split, order)
        if len(names) != num_classes:
            raise LongtailError(
                f"'{tree / split}' has {len(names)} class folders; CIFAR-{num_classes} has {num_classes}."
            )
        store = DecodedFileStore(tree / split, files.relative_paths, CIFAR_IMAGE_SIZE)
        classes = ImageClasses(names, *stats, CIFAR_IMAGE_SIZE)
        pools.append(InMemoryImages(store, np.arange(len(files.targets)), files.targets, classes))
    return tuple(pools)


def _label_pools(names: list[str], stats) -> tuple[LabelsOnly, LabelsOnly]:
    """(train pool, test set) as labels alone: CIFAR's classes are balanced, so its layout is known."""
    label, classes = np.arange(len(names)), ImageClasses(names, *stats, CIFAR_IMAGE_SIZE)
    return tuple(LabelsOnly(np.repeat(label, per_class), classes) for per_class in IMAGES_PER_CLASS[len(names)])


@register_dataset("cifar10-lt")
def cifar10_lt(root: Path, download: bool = False, labels_only: bool = False, **common: Any) -> DatasetSplits:
    """``labels_only``: the splits' labels without reading any image (for the class counts of a profile)."""
    if labels_only:
        train, test = _label_pools(CIFAR10_CLASSES, CIFAR10_STATS)
    else:
        train, test = _pools(root, 10, CIFAR10_FORMAT, ("cifar10-jpeg", "cifar10"), CIFAR10_STATS, download)
    return long_tailed_splits("cifar10-lt", train, test, **common)


@register_dataset("cifar100-lt")
def cifar100_lt(root: Path, download: bool = False, labels_only: bool = False, **common: Any) -> DatasetSplits:
    """``labels_only``: the splits' labels without reading any image (for the class counts of a profile)."""
    if labels_only:
        train, test = _label_pools(CIFAR100_CLASSES, CIFAR100_STATS)
    else:
        train, test = _pools(root, 100, CIFAR100_FORMAT, ("cifar100-jpeg", "cifar100"), CIFAR100_STATS, download)
    return long_tailed_splits("cifar100-lt", train, test, **common)


def digit_images(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All digits as uint8 (N, 3, image_size, image_size) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / DIGIT_MAX)
    if image_size != grey.shape[-1]:
        grey = F.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = grey.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images.numpy(), digits.target.astype(np.int64)


def held_out_positions(labels: np.ndarray) -> np.ndarray:
    rng = np.random.RandomState(DIGITS_TEST_SEED)
    per_class = [rng.permutation(np.flatnonzero(labels == c))[:DIGITS_TEST_PER_CLASS] for c in np.unique(labels)]
    return np.sort(np.concatenate(per_class))


@register_dataset("digits-lt")
def digits_lt(root: Path, image_size: int = 32, **common: Any) -> DatasetSplits:
    if image_size < 8:
        raise LongtailError(f"digits-lt images are 8x8; image_size must be >= 8, got {image_size}.")
    images, labels = digit_images(image_size)
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[held_out_positions(labels)] = True
    train_pixels = images[~is_test].astype(np.float32) / 255.0
    stats = (tuple(train_pixels.mean(axis=(0, 2, 3))), tuple(train_pixels.std(axis=(0, 2, 3))))
    store = ArrayStore(images)
    classes = ImageClasses([str(d) for d in range(10)], *stats, image_size)

    def split(mask: np.ndarray) -> InMemoryImages:
        positions = np.flatnonzero(mask)
        return InMemoryImages(store, positions, labels[positions], classes)

    return long_tailed_splits("digits-lt", split(~is_test), split(is_test), **common)
