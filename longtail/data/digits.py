"""``digits-lt``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes) made long-tailed.

The embedded default dataset: it ships with scikit-learn and needs no download. A fixed test split of
50 images per class (chosen with numpy seed 0, whatever the run's seed) is set aside first; the rest is
the training pool, made long-tailed with ``n_max`` = its smallest class (124). Images are upsampled
bilinearly to ``image_size`` (default 32, so CIFAR models and augmentations apply unchanged) and copied to
three channels. With n_max = 124 the shot groups use thresholds scaled to n_max (see ``shots``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longtail.data.datasets import DatasetSplits, long_tailed_splits, register_dataset
from longtail.data.memory import ArrayStore, InMemoryImages
from longtail.errors import LongtailError

TEST_PER_CLASS = 50
TEST_SPLIT_SEED = 0
DIGIT_MAX = 16.0  # scikit-learn's digits are grey levels 0..16


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
    rng = np.random.RandomState(TEST_SPLIT_SEED)
    per_class = [rng.permutation(np.flatnonzero(labels == c))[:TEST_PER_CLASS] for c in np.unique(labels)]
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
    names = [str(d) for d in range(10)]

    def split(mask: np.ndarray) -> InMemoryImages:
        positions = np.flatnonzero(mask)
        return InMemoryImages(store, positions, labels[positions], names, *stats, image_size)

    return long_tailed_splits("digits-lt", split(~is_test), split(is_test), **common)
