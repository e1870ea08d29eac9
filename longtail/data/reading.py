"""Reading images off disk: the raw formats, image decoding, the on-disk cache of decoded arrays.

Raw formats: CIFAR pickle folders, ImageFolder trees and ``relative/path label`` lists. Each reader returns
plain arrays or lists; the dataset families (``small_images``, ``folders_and_lists``) make datasets of them.
CIFAR pickles are read with ``pickle``, which runs code: load only the official files.

Decoding: many small files into one uint8 (N, 3, H, W) array, and single images for streaming. Bulk decoding
reads the files and decodes JPEGs in batches with ``torchvision.io.decode_jpeg`` on a thread pool (about
40,000 CIFAR-sized JPEGs per second per core); other formats go through ``decode_image`` and then PIL. A file
that none of them can read raises a LongtailError naming it.

Cache: decoded image arrays are kept on disk, so that a dataset is decoded once per machine. Location:
``$LONGTAIL_CACHE``, else ``~/.cache/longtail``. Entries are ``.npy`` files named by a hash of what produced
them (source path, file sizes and times, decode parameters); a changed source gets a new entry. Writes go to
a temporary file in the same folder, renamed into place (atomic), so concurrent runs never read a
half-written entry. A cache folder that cannot be written only costs the speed-up.

Threads: ``intra_op_threads`` runs a block with a given number of torch intra-op threads, restoring the
previous number after. Batched augmentation and bulk decoding issue many small tensor ops; on CPU, intra-op
parallelism costs them more than it gains (thread hand-offs per op), and on a busy machine it can slow them
by orders of magnitude. They run single-threaded; the caller's setting (for the model) is restored afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from longtail.errors import LongtailError, Setting, SettingError

Split = tuple[np.ndarray, np.ndarray]  # CIFAR images uint8 (N, 3, 32, 32), labels int64 (N,)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
DECODE_CHUNK = 1024  # files read and decoded together


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


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads (see the module docstring)."""
    previous = torch.get_num_threads()
    if previous != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if previous != count:
            torch.set_num_threads(previous)


def unreadable_image_error(path: Path, reason: object) -> LongtailError:
    return LongtailError(
        f"Cannot read image '{path}' ({reason}). Replace or delete the file, or fix the image root / list file."
    )


def open_rgb(path: Path) -> Image.Image:
    """A PIL RGB image, or a LongtailError naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise unreadable_image_error(path, "file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise unreadable_image_error(path, error) from None


def _read_bytes(path: Path) -> torch.Tensor:
    try:
        return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    except OSError as error:
        raise unreadable_image_error(path, error) from None


def _decode_one(path: Path, data: torch.Tensor) -> torch.Tensor:
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        return TF.pil_to_tensor(open_rgb(path))


def _decode_chunk(paths: Sequence[Path], size: int | None) -> list[torch.Tensor]:
    data = [_read_bytes(p) for p in paths]
    try:
        images = decode_jpeg(data, mode=ImageReadMode.RGB)
    except RuntimeError:  # not all JPEG, or one is corrupt: find out file by file
        images = [_decode_one(p, d) for p, d in zip(paths, data)]
    if size is not None:
        images = [im if im.shape[-2:] == (size, size) else TF.resize(im, [size, size], antialias=True) for im in images]
    return images


def decode_files(paths: Sequence[Path], size: int | None = None) -> np.ndarray:
    """All ``paths`` decoded into a uint8 (N, 3, H, W) array, resized to ``size`` x ``size`` when given."""
    chunks = [paths[i : i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK)]
    workers = max(1, min(4, os.cpu_count() or 1))
    with intra_op_threads(1), warnings.catch_warnings(), ThreadPoolExecutor(workers) as pool:
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)  # torchvision 0.29 -> torchcodec
        images = [im for chunk in pool.map(lambda c: _decode_chunk(c, size), chunks) for im in chunk]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise LongtailError(
            f"Images under {Path(paths[0]).parent.parent} have different sizes {sorted(shapes)[:3]}...; "
            "pass image_size=<pixels> to resize them when decoding."
        )
    return torch.stack(images).numpy() if images else np.zeros((0, 3, size or 0, size or 0), np.uint8)


def cache_root() -> Path:
    return Path(os.environ.get("LONGTAIL_CACHE", Path.home() / ".cache" / "longtail")).expanduser()


def cache_key(parts: Any) -> str:
    """A short stable hash of JSON-serialisable ``parts``."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cached_array(kind: str, parts: Any, build: Callable[[], np.ndarray]) -> np.ndarray:
    """The array cached under (``kind``, ``parts``), built with ``build()`` and stored on a miss.

    Hits are memory-mapped read-only: index them (which copies) before writing.
    """
    path = cache_root() / f"{kind}-{cache_key(parts)}.npy"
    if path.exists():
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged entry: rebuild it
    array = build()
    _write_entry(path, array)
    return array


def _write_entry(path: Path, array: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False) as f:
            temporary = Path(f.name)
            np.save(f, array)
        os.chmod(temporary, 0o644)  # readable like any cache file (temporary files are created 0600)
        os.replace(temporary, path)
    except OSError as error:
        warnings.warn(f"longtail: could not write the data cache {path} ({error}); set LONGTAIL_CACHE", stacklevel=3)
        if "temporary" in locals():
            temporary.unlink(missing_ok=True)
