"""``imagenet-r``: ImageNet-R(endition), naturally long-tailed, with a seeded balanced test split held out.

ImageNet-R (Hendrycks et al., "The Many Faces of Robustness", ICCV 2021) holds 30,000 renditions (art,
cartoons, sketches, toys, ...) of 200 ImageNet classes, unevenly many per class. The P²OT / SP²OT papers
(see ``longtail.methods.p2ot``) cluster it as a naturally imbalanced dataset: ``test_per_class`` (20) random
images of every class are held out as the balanced test set, the rest is the training set as it comes (no
profile: ``imbalance``, ``profile`` and ``selection`` do not apply). The held-out images are drawn per class
with numpy stream ``(split_seed, HOLDOUT_STREAM)``, ``split_seed`` 0 by default and independent of the run's
seed, so that runs with different seeds are tested on the same images; ``val_per_class`` then carves
validation from the training images as for every dataset (``longtail.data.splits``).

Data: the released ``imagenet-r.tar`` extracted, ``<root>/imagenet-r/<wnid>/<image>`` (or
``image_root=<folder>``); it is never downloaded. Labels follow the sorted wnids (the papers relabel by
descending training count, which only renames classes: the clustering metrics order classes by training
count themselves). Class names are the wnids, or readable names from ``names_file`` (default: the
release's ``README.txt`` when present), a text file whose ``<wnid> <name>`` lines are used and other
lines ignored. Images stream from disk at 224 px with the ImageNet mean and std.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from longtail.data.datasets import IMAGENET_MEAN, IMAGENET_STD, DatasetSplits, long_tailed_splits, register_dataset
from longtail.data.files import ImageFiles
from longtail.data.sources import scan_image_folder
from longtail.errors import LongtailError, Setting, SettingError

FOLDER = "imagenet-r"
NAMES_FILE = "README.txt"
DOWNLOAD_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
IMAGE_SIZE = 224
TEST_PER_CLASS = 20
HOLDOUT_STREAM = 0x1E7  # separates the test draw from the validation draw seeded by the same seed
NAME_LINE = re.compile(r"^\s*(n\d{8})\s+(\S.*?)\s*$")


def _images_folder(root: Path, image_root: str | Path | None) -> Path:
    folder = Path(image_root).expanduser() if image_root is not None else root / FOLDER
    if not folder.is_dir():
        raise SettingError(
            f"ImageNet-R folder '{folder}' not found. Download imagenet-r.tar ({DOWNLOAD_URL}) and extract it "
            f"into the data root so that {root / FOLDER}/<wnid>/<image> exists, or give ",
            Setting("image_root", "<your imagenet-r folder>"), "."
        )
    return folder


def read_readable_names(path: Path) -> dict[str, str]:
    """``wnid -> name`` from the ``<wnid> <name>`` lines of ``path`` (other lines are skipped)."""
    matches = (NAME_LINE.match(line) for line in path.read_text(encoding="utf-8", errors="replace").splitlines())
    return {match[1]: match[2] for match in matches if match}


def _class_names(wnids: list[str], folder: Path, names_file: str | Path | None) -> list[str]:
    path = Path(names_file).expanduser() if names_file is not None else folder / NAMES_FILE
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
    test_per_class: int = TEST_PER_CLASS,
    names_file: str | Path | None = None,
    image_size: int = IMAGE_SIZE,
    split_seed: int = 0,
    **common: Any,
) -> DatasetSplits:
    if isinstance(test_per_class, bool) or not isinstance(test_per_class, int) or test_per_class < 1:
        raise LongtailError(f"test_per_class must be an integer >= 1 (images held out per class), got "
                            f"{test_per_class!r}.")
    folder = _images_folder(root, image_root)
    files, wnids = scan_image_folder(folder)
    _check_class_sizes(np.bincount(files.targets, minlength=len(wnids)), wnids, folder, test_per_class)
    images = ImageFiles(folder, files.relative_paths, files.targets, _class_names(wnids, folder, names_file),
                        IMAGENET_MEAN, IMAGENET_STD, image_size)
    train, test = hold_out_per_class(files.targets, test_per_class, split_seed)
    return long_tailed_splits("imagenet-r", images.subset(train), images.subset(test), apply_profile=False, **common)
