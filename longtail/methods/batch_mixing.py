"""Batch-level augmentation shared by the methods that train on mixed batches (ERM, DeiT-LT): timm's
``RandomErasing`` on the normalised batch, then timm's ``Mixup`` / CutMix into (B, C) soft targets."""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing

from longtail.errors import LongtailError


def pixel_random_erasing(probability: float, device: torch.device) -> RandomErasing | None:
    """timm random erasing of one box per image with per-pixel normal noise, or None when ``probability`` is 0."""
    if probability <= 0:
        return None
    return RandomErasing(probability=probability, mode="pixel", max_count=1, device=str(device))


def erase_and_mix(
    images: torch.Tensor, targets: torch.Tensor, erasing: RandomErasing | None, mixup: Mixup | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random erasing (if ``erasing``), then Mixup / CutMix (if ``mixup``); returns new tensors, the batch
    itself is left untouched."""
    images = images.clone()
    if erasing is not None:
        images = erasing(images)
    if mixup is None:
        return images, targets
    if len(images) % 2:
        raise LongtailError(
            f"Mixup/CutMix pairs each image with the batch reversed and needs an even batch, got {len(images)} "
            "images per process; use an even data.batch_size per process."
        )
    return mixup(images, targets)
