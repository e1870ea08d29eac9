"""SimCLR's view augmentations, batched: random resized crop (+ flip) and random grayscale, in-memory and streamed."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from longtail.data.augment import AugmentSpec, BatchAugment, random_grayscale, resized_crop_flip
from longtail.data.loaders import file_transform
from longtail.errors import LongtailError

SIMCLR_VIEW = AugmentSpec(resized_crop=(0.08, 1.0), color_jitter=(0.4, 0.4, 0.4, 0.1), grayscale=0.2)


def images(batch: int = 16, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_whole_image_crop_is_the_image_or_its_mirror():
    x = images(64)
    assert torch.equal(resized_crop_flip(x, (1.0, 1.0), False, seeded(), ratio=(1.0, 1.0)), x)
    out = resized_crop_flip(x, (1.0, 1.0), True, seeded(), ratio=(1.0, 1.0))
    mirrored = sum(torch.equal(out[i], x[i].flip(-1)) for i in range(len(x)))
    kept = sum(torch.equal(out[i], x[i]) for i in range(len(x)))
    assert mirrored + kept == len(x) and 16 < mirrored < 48


def test_a_quarter_area_crop_zooms_in_by_two():
    columns = (torch.arange(32) * 8).to(torch.uint8)
    ramp = columns.expand(8, 3, 32, 32).contiguous()  # each pixel's value is 8 x its column
    out = resized_crop_flip(ramp, (0.25, 0.25), False, seeded(), ratio=(1.0, 1.0)).float()
    steps = out[:, :, :, 1:] - out[:, :, :, :-1]
    assert torch.allclose(steps[:, :, :, 1:-1], torch.full_like(steps[:, :, :, 1:-1], 4.0), atol=1.0)
    assert (out.amax(dim=-1) - out.amin(dim=-1)).sub(31 * 4).abs().max() <= 2
    assert len({row[0, 0, 0].item() for row in out}) > 1  # the crops sit at different places


def test_random_grayscale_is_torchvisions_luma_for_the_chosen_images():
    x = images(200)
    assert torch.equal(random_grayscale(x, 1.0, seeded()), v2.functional.rgb_to_grayscale(x, num_output_channels=3))
    assert torch.equal(random_grayscale(x, 0.0, seeded()), x)
    out = random_grayscale(x, 0.2, seeded(4))
    gray = [bool((out[i] == out[i, :1]).all()) and not torch.equal(out[i], x[i]) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(g or k for g, k in zip(gray, kept)) and 20 < sum(gray) < 60


def test_simclr_views_are_seeded_and_differ_between_draws():
    augment = BatchAugment(SIMCLR_VIEW, (0.5,) * 3, (0.25,) * 3)
    x = images(8)
    first, again, other = augment(x, seeded(1)), augment(x, seeded(1)), augment(x, seeded(2))
    assert first.shape == (8, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_streamed_images_get_the_scale_and_the_grayscale():
    steps = file_transform(SIMCLR_VIEW, True, 32, (0.5,) * 3, (0.25,) * 3).transforms
    crop = next(step for step in steps if isinstance(step, v2.RandomResizedCrop))
    assert tuple(crop.scale) == (0.08, 1.0)
    assert any(isinstance(step, v2.RandomGrayscale) and step.p == 0.2 for step in steps)


@pytest.mark.parametrize(
    "fields, message",
    [({"grayscale": 1.5}, "grayscale"), ({"resized_crop": (0.5, 0.2)}, "resized_crop"),
     ({"resized_crop": (0.0, 1.0)}, "resized_crop")],
)
def test_bad_view_settings_are_refused(fields, message):
    with pytest.raises(LongtailError, match=message):
        AugmentSpec(**fields)
    assert AugmentSpec(resized_crop=[0.2, 1]).resized_crop == (0.2, 1.0)
