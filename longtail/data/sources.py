"""Readers of the raw formats: CIFAR pickle folders, ImageFolder trees and ``relative/path label`` lists.

Each returns plain arrays or lists; the dataset modules (``cifar``, ``lists``, ``folders``) make datasets of
them. CIFAR pickles are read with ``pickle``, which runs code: load only the official files.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longtail.errors import LongtailError, Setting, SettingError

Split = tuple[np.ndarray, np.ndarray]  # CIFAR images uint8 (N, 3, 32, 32), labels int64 (N,)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class CifarFormat:
    """Where a CIFAR pickle folder keeps its parts (the layout of the official tarballs)."""

    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str


CIFAR10_FORMAT = CifarFormat(
    "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
    "labels", "label_names",
)
CIFAR100_FORMAT = CifarFormat("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise LongtailError(f"CIFAR file '{path}' is missing: the folder is incomplete; download it again.")
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError) as error:
        raise LongtailError(f"CIFAR file '{path}' is not a valid CIFAR pickle ({error}); download it again.") from None


def _cifar_part(folder: Path, names: tuple[str, ...], label_key: str) -> Split:
    parts = [_unpickle(folder / name) for name in names]
    try:
        images = np.concatenate([np.asarray(p["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for p in parts])
        labels = np.concatenate([np.asarray(p[label_key], dtype=np.int64) for p in parts])
    except (KeyError, ValueError) as error:
        message = f"CIFAR folder '{folder}' has an unexpected layout ({error!r}); download it again."
        raise LongtailError(message) from None
    return images, labels


def read_cifar(folder: Path, fmt: CifarFormat) -> tuple[Split, Split, list[str]]:
    """``((train_images, train_labels), (test_images, test_labels), class_names)``."""
    train = _cifar_part(folder, fmt.train_files, fmt.label_key)
    test = _cifar_part(folder, (fmt.test_file,), fmt.label_key)
    names = list(_unpickle(folder / fmt.meta_file)[fmt.names_key])
    return train, test, names


def write_cifar(folder: Path, fmt: CifarFormat, train: Split, test: Split, class_names: list[str]) -> None:
    """Write images (N, 3, 32, 32) uint8 and labels in the official pickle layout (tests, conversions)."""
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = train
    splits = np.array_split(np.arange(len(train_labels)), len(fmt.train_files))
    for name, rows in zip(fmt.train_files, splits):
        _dump(folder / name, train_images[rows], train_labels[rows], fmt.label_key)
    _dump(folder / fmt.test_file, *test, fmt.label_key)
    with (folder / fmt.meta_file).open("wb") as f:
        pickle.dump({fmt.names_key: list(class_names)}, f, protocol=2)


def _dump(path: Path, images: np.ndarray, labels: np.ndarray, label_key: str) -> None:
    entry = {"data": np.asarray(images, np.uint8).reshape(len(images), -1), label_key: [int(x) for x in labels]}
    with path.open("wb") as f:
        pickle.dump(entry, f, protocol=2)


@dataclass
class FileList:
    """``relative_paths[i]`` has label ``targets[i]``."""

    relative_paths: list[str]
    targets: np.ndarray


def scan_image_folder(split_dir: Path, class_order: list[str] | None = None) -> tuple[FileList, list[str]]:
    """The images of ``split_dir/<class>/*`` in class then file-name order, and the class names.

    Classes are in sorted folder order, or in ``class_order`` when it names exactly the same folders.
    """
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not folders:
        raise LongtailError(f"'{split_dir}' has no class folders; expected {split_dir}/<class>/<image>.")
    classes = class_order if class_order and sorted(class_order) == folders else folders
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(e.name for e in (split_dir / name).iterdir() if e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise LongtailError(f"Class folder '{split_dir / name}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        paths += [f"{name}/{f}" for f in files]
        labels += [label] * len(files)
    return FileList(paths, np.asarray(labels, dtype=np.int64)), list(classes)


def read_file_list(path: Path) -> FileList:
    """A ``relative/path label`` list (ImageNet-LT, Places-LT, iNaturalist format)."""
    if not path.is_file():
        raise SettingError(
            f"List file '{path}' not found; give ", Setting("list_root", "<folder with the split lists>"), "."
        )
    paths, labels = [], []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.rsplit(maxsplit=1)
            if len(fields) != 2 or not fields[1].isdigit():
                raise LongtailError(
                    f"{path}, line {number}: expected '<relative/path> <integer label>', got {line.strip()!r}. "
                    "Fix or delete that line."
                )
            paths.append(fields[0])
            labels.append(int(fields[1]))
    if not paths:
        raise LongtailError(f"List file '{path}' is empty.")
    return FileList(paths, np.asarray(labels, dtype=np.int64))


def read_class_names(path: Path, num_classes: int) -> list[str]:
    """Names from a ``<id> <name>`` per line file in label order, or the label numbers when it is absent."""
    if not path.is_file():
        return [str(i) for i in range(num_classes)]
    lines = [line.split(maxsplit=1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [fields[-1] for fields in lines]
