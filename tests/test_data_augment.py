"""Batched augmentations on uint8 tensors: shapes, ranges, determinism, and that pixels really move."""

from __future__ import annotations

import pytest
import torch

from longtail.data.augment import (
    AUGMENTATIONS,
    AugmentSpec,
    BatchAugment,
    GroupedPolicy,
    augment_spec,
    crop_flip,
    cutout,
    normalise,
    rotate,
)
from longtail.errors import LongtailError

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def images(batch: int = 16, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_flip_matches_pad_slice_and_mirror():
    x = images(64)
    out = crop_flip(x, 4, True, seeded(3))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    matched = 0
    for i in range(len(x)):
        crops = [padded[i, :, t : t + 32, s : s + 32] for t in range(9) for s in range(9)]
        candidates = crops + [c.flip(-1) for c in crops]
        matched += any(torch.equal(out[i], c) for c in candidates)
    assert matched == len(x)
    assert not torch.equal(out, x)
    assert sum(torch.equal(out[i], x[i]) for i in range(len(x))) < len(x) // 4


def test_flip_alone_mirrors_about_half():
    x = images(200)
    out = crop_flip(x, 0, True, seeded(0))
    mirrored = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 60 < sum(mirrored) < 140


def test_normalise_values_and_channels_last():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalise(x, MEAN, STD, channels_last=True)
    expected = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)])
    assert torch.allclose(out[0, :, 0, 0], expected)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)


def test_cutout_erases_one_clipped_square():
    x = torch.ones(50, 3, 32, 32)
    out = cutout(x, 16, seeded(0))
    erased = (out == 0).all(1).sum((1, 2))
    assert (erased > 0).all() and (erased <= 256).all()
    assert (erased == 256).any() and (erased < 256).any()  # centred inside vs clipped at a border


def test_rotation_moves_pixels_and_keeps_dtype():
    x = images(8)
    out = rotate(x, 30, seeded(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert not torch.equal(out, x)
    assert torch.equal(rotate(x, 0, seeded(0)), x)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_presets_shapes_ranges_determinism(name):
    x = images(32)
    augment = BatchAugment(augment_spec(name), MEAN, STD)
    out = augment(x, seeded(5))
    assert out.shape == x.shape and out.dtype == torch.float32
    low = min((0 - m) / s for m, s in zip(MEAN, STD))
    high = max((1 - m) / s for m, s in zip(MEAN, STD))
    assert out.min() >= low - 1e-5 and out.max() <= high + 1e-5
    assert torch.equal(out, augment(x, seeded(5)))
    if name != "none":
        assert not torch.equal(out, augment(x, seeded(6)))


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment"])
def test_policies_are_per_image_and_seeded(policy):
    x = images(64)
    transform = GroupedPolicy(policy)
    out = transform(x, seeded(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, transform(x, seeded(0)))
    changed = [not torch.equal(out[i], x[i]) for i in range(len(x))]
    assert 0 < sum(changed) < len(x) or policy == "randaugment"
    same_image = x[:1].expand(64, -1, -1, -1).contiguous()
    variants = {transform(same_image, seeded(1))[i].sum().item() for i in range(64)}
    assert len(variants) > 5  # each image draws its own operations


def test_rotation_spec_and_bad_policy():
    out = BatchAugment(AugmentSpec(crop=False, flip=False, rotation=20), MEAN, STD)(images(4), seeded(0))
    assert out.shape == (4, 3, 32, 32)
    with pytest.raises(LongtailError, match="Did you mean 'autoaugment'"):
        AugmentSpec(policy="autoaugmnt")
    with pytest.raises(LongtailError, match="Unknown augmentation 'crop'"):
        augment_spec("crop")


@pytest.mark.parametrize(("fill", "erased_value"), [("mean", (0.0, 0.0, 0.0)), ("black", (-2.0, -2.0, -1.0))])
def test_cutout_fill_is_the_mean_colour_after_or_black_before_normalisation(fill, erased_value):
    # SHIKE's official Cutout runs before Normalize (cifarTrain.py lines 29-36): erased pixels are black
    white = torch.full((40, 3, 32, 32), 255, dtype=torch.uint8)
    spec = AugmentSpec(crop=False, flip=False, cutout=16, cutout_fill=fill)
    out = BatchAugment(spec, MEAN, STD)(white, seeded(0))
    white_value = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    erased = ~torch.isclose(out, white_value).all(1, keepdim=True)
    assert erased.any()
    expected = torch.tensor(erased_value).view(1, 3, 1, 1).expand_as(out)
    torch.testing.assert_close(out[erased.expand_as(out)], expected[erased.expand_as(out)])
    with pytest.raises(LongtailError, match="cutout fill"):
        AugmentSpec(cutout=16, cutout_fill="grey")


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment"])
def test_policy_fill_colours_the_area_geometric_operations_uncover(policy):
    # SHIKE's CIFAR10Policy fills with grey 128 (autoaugment.py lines 49, 91, 112); torchvision's default is 0
    white = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    black_fill = GroupedPolicy(policy)(white, seeded(3))
    grey_fill = GroupedPolicy(policy, fill=128)(white, seeded(3))
    uncovered = black_fill != grey_fill
    assert (black_fill[uncovered] == 0).sum() > 1000 and (grey_fill[uncovered] == 128).sum() > 1000
    with pytest.raises(LongtailError, match="policy_fill"):
        AugmentSpec(policy=policy, policy_fill=300)


def test_streamed_images_take_the_black_cutout_before_normalisation():
    from PIL import Image

    from longtail.data.loaders import file_transform

    spec = AugmentSpec(crop=False, flip=False, cutout=16, cutout_fill="black")
    torch.manual_seed(0)
    out = file_transform(spec, True, 32, MEAN, STD)(Image.new("RGB", (40, 40), (255, 255, 255)))
    black = torch.tensor([-m / s for m, s in zip(MEAN, STD)]).view(3, 1, 1).expand_as(out)
    erased = torch.isclose(out, black).all(0)
    assert 0 < erased.sum() <= 256
