"""Image decoding: many small files into one uint8 (N, 3, H, W) array, and single images for streaming.

Bulk decoding reads the files and decodes JPEGs in batches with ``torchvision.io.decode_jpeg`` on a
thread pool (about 40,000 CIFAR-sized JPEGs per second per core); other formats go through
``decode_image`` and then PIL. A file that none of them can read raises a LongtailError naming it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from longtail.data.threads import intra_op_threads
from longtail.errors import LongtailError

CHUNK = 1024


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
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
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
