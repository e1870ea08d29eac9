"""Colour jitter (``AugmentSpec.color_jitter``) in the in-memory batch augmentation and the file transforms."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from longtail.data.augment import AugmentSpec, BatchAugment, color_jitter
from longtail.data.loaders import file_transform
from longtail.errors import LongtailError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def images(n: int = 8) -> torch.Tensor:
    return torch.randint(30, 220, (n, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_batch_jitter_moves_pixels_per_image_and_is_seeded():
    batch = images()
    spec = AugmentSpec(crop=False, flip=False, color_jitter=(0.4, 0.4, 0.4, 0.1))
    plain = BatchAugment(AugmentSpec(crop=False, flip=False), MEAN, STD)(batch)
    jittered = BatchAugment(spec, MEAN, STD)(batch, torch.Generator().manual_seed(1))
    again = BatchAugment(spec, MEAN, STD)(batch, torch.Generator().manual_seed(1))
    assert torch.equal(jittered, again)
    change = (jittered - plain).abs().mean(dim=(1, 2, 3))
    assert (change > 0.01).all() and change.std() > 0  # every image moved, each by its own factors


def test_each_jitter_component_matches_torchvision_at_a_fixed_factor():
    batch = images(2).float() / 255
    brightness = color_jitter(batch, (0.5, 0, 0, 0), torch.Generator().manual_seed(3))
    factor = torch.Generator().manual_seed(3)
    factors = 0.5 + torch.rand(2, generator=factor)
    expected = torch.stack([v2.functional.adjust_brightness(image, f.item()) for image, f in zip(batch, factors)])
    torch.testing.assert_close(brightness, expected)
    unchanged = color_jitter(batch, (0, 0, 0, 0), None)
    torch.testing.assert_close(unchanged, batch)


def test_file_transform_jitters_after_the_flip():
    spec = AugmentSpec(crop=False, color_jitter=(0.4, 0.4, 0.4, 0.1))
    steps = file_transform(spec, train=True, image_size=16, mean=MEAN, std=STD).transforms
    kinds = [type(step) for step in steps]
    assert kinds.index(v2.ColorJitter) == kinds.index(v2.RandomHorizontalFlip) + 1
    image = Image.fromarray(images(1)[0].permute(1, 2, 0).numpy())
    plain = file_transform(AugmentSpec(crop=False, flip=False), True, 16, MEAN, STD)(image)
    torch.manual_seed(0)
    assert not torch.allclose(file_transform(spec, True, 16, MEAN, STD)(image), plain)


def test_bad_jitter_is_refused():
    with pytest.raises(LongtailError, match="color_jitter"):
        AugmentSpec(color_jitter=(0.4, 0.4, 0.4))
    assert AugmentSpec(color_jitter=[0.1, 0.2, 0.3, 0.0]).color_jitter == (0.1, 0.2, 0.3, 0.0)
