"""Samplers: empirical class frequencies, determinism from (seed, epoch), DDP shards, and repeated augmentation
(its options, epoch length, copies over ranks and independent augmentations of copies in one batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail.config import from_dict, list_recipes
from longtail.data import create_loader
from longtail.data.augment import AugmentSpec
from longtail.data.containers import ArrayStore, ImageClasses, InMemoryImages
from longtail.data.samplers import SAMPLERS, create_sampler, shard
from longtail.errors import LongtailError
from longtail.methods.recipes import resolve

COUNTS = np.array([1000, 300, 100, 30, 10])
TARGETS = np.repeat(np.arange(5), COUNTS)


def class_frequencies(order: np.ndarray) -> np.ndarray:
    return np.bincount(TARGETS[order], minlength=len(COUNTS)) / len(order)


def test_instance_sampler_is_a_seeded_permutation():
    sampler = SAMPLERS.get("instance")(TARGETS)
    first = sampler.epoch_order(0, seed=1)
    np.testing.assert_array_equal(np.sort(first), np.arange(len(TARGETS)))
    np.testing.assert_array_equal(first, sampler.epoch_order(0, seed=1))
    assert not np.array_equal(first, sampler.epoch_order(1, seed=1))
    assert not np.array_equal(first, sampler.epoch_order(0, seed=2))


@pytest.mark.parametrize("name, expected", [
    ("class-balanced", np.full(5, 0.2)),
    ("square-root", np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()),
])
def test_class_aware_frequencies(name, expected):
    sampler = SAMPLERS.get(name)(TARGETS, num_samples=100_000)
    frequencies = class_frequencies(sampler.epoch_order(0, seed=0))
    np.testing.assert_allclose(frequencies, expected, atol=0.01)
    within = TARGETS[sampler.epoch_order(0, seed=0)]
    assert (np.bincount(within) > 0).all()


def test_class_balanced_draws_all_images_of_a_class_uniformly():
    order = SAMPLERS.get("class-balanced")(TARGETS, num_samples=50_000).epoch_order(3, seed=0)
    rare = order[TARGETS[order] == 4]
    np.testing.assert_allclose(np.bincount(rare - COUNTS[:4].sum(), minlength=10) / len(rare), 0.1, atol=0.02)


def test_progressive_moves_from_instance_to_balanced():
    sampler = SAMPLERS.get("progressive")(TARGETS, epochs=11, num_samples=100_000)
    np.testing.assert_allclose(class_frequencies(sampler.epoch_order(0, 0)), COUNTS / COUNTS.sum(), atol=0.01)
    middle = 0.5 * COUNTS / COUNTS.sum() + 0.5 * 0.2
    np.testing.assert_allclose(class_frequencies(sampler.epoch_order(5, 0)), middle, atol=0.01)
    np.testing.assert_allclose(class_frequencies(sampler.epoch_order(10, 0)), 0.2, atol=0.01)
    with pytest.raises(LongtailError, match="epochs"):
        SAMPLERS.get("progressive")(TARGETS)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_shards_partition_the_epoch_with_equal_lengths(world_size):
    order = SAMPLERS.get("instance")(TARGETS).epoch_order(0, seed=0)
    shards = [shard(order, rank, world_size) for rank in range(world_size)]
    assert len({len(s) for s in shards}) == 1
    together = np.concatenate(shards)
    assert set(together) == set(order)
    if len(order) % world_size == 0:
        np.testing.assert_array_equal(np.sort(together), np.arange(len(order)))
    else:
        assert len(together) - len(order) < world_size


def test_unpadded_shards_cover_each_index_once():
    order = np.arange(10)
    shards = [shard(order, rank, 3, pad=False) for rank in range(3)]
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), order)
    with pytest.raises(LongtailError, match="rank"):
        shard(order, 3, 3)


def test_unknown_sampler_suggests():
    with pytest.raises(LongtailError, match="Did you mean 'square-root'"):
        SAMPLERS.get("squareroot")


def toy_images(count: int) -> InMemoryImages:
    targets = np.arange(count) % 3
    images = np.random.default_rng(0).integers(0, 256, (count, 3, 8, 8), dtype=np.uint8)
    classes = ImageClasses(["a", "b", "c"], (0.5,) * 3, (0.25,) * 3, 8)
    return InMemoryImages(ArrayStore(images), np.arange(count), targets, classes)


def test_repeated_sampler_writes_each_image_of_a_seeded_permutation_in_a_row():
    sampler = create_sampler({"name": "repeated", "repeats": 4}, TARGETS)
    order = sampler.epoch_order(0, seed=1)
    copies = order.reshape(-1, 4)
    assert (copies == copies[:, :1]).all()
    np.testing.assert_array_equal(np.sort(copies[:, 0]), np.arange(len(TARGETS)))
    np.testing.assert_array_equal(order, sampler.epoch_order(0, seed=1))
    assert not np.array_equal(order, sampler.epoch_order(1, seed=1))
    assert SAMPLERS.get("repeated")(TARGETS).repeats == 3


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_repeated_epoch_costs_one_pass_and_deals_copies_to_consecutive_ranks(world_size):
    dataset = toy_images(90)
    loaders = [
        create_loader(dataset, 5, train=True, augment="none", sampler="repeated", seed=2, rank=rank,
                      world_size=world_size)
        for rank in range(world_size)
    ]
    shards = [loader.epoch_indices() for loader in loaders]
    assert [len(s) for s in shards] == [90 // world_size] * world_size
    assert all(len(loader) == len(list(loader)) == 90 // world_size // 5 for loader in loaders)
    together = np.stack(shards, axis=1).reshape(-1)  # the global order, dealt back together
    copies = together.reshape(-1, 3)
    assert (copies == copies[:, :1]).all() and len(set(copies[:, 0])) == 30
    if world_size == 3:
        np.testing.assert_array_equal(shards[0], shards[1])  # every rank sees one copy of each image


def test_repeated_copies_in_one_batch_get_their_own_augmentations():
    jitter = AugmentSpec(color_jitter=(0.4, 0.4, 0.4, 0.1))  # continuous parameters: copies never coincide
    loader = create_loader(toy_images(60), 12, train=True, augment=jitter, sampler="repeated", seed=0)
    for batch in loader:
        rows = batch.indices.numpy()
        for index in np.unique(rows):
            copies = batch.images[torch.from_numpy(rows == index)]
            assert len(copies) == 3
            assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])


@pytest.mark.parametrize("spec, message", [
    ({"name": "repeated", "repeats": 0}, "repeats to be a whole number >= 1, got 0"),
    ({"name": "repeated", "repeats": 2.5}, "repeats to be a whole number >= 1, got 2.5"),
    ({"name": "repeated", "repeats": True}, "repeats to be a whole number >= 1, got True"),
    ({"name": "repeated", "repeat": 3}, "has no option 'repeat'. Did you mean 'repeats'"),
    ({"repeats": 3}, "needs a 'name'"),
    ({"name": "instance", "repeats": 3}, "Sampler 'instance' has no option 'repeats'"),
])
def test_bad_sampler_options_are_refused(spec, message):
    with pytest.raises(LongtailError, match=message):
        create_sampler(spec, TARGETS)


def test_a_sampler_with_options_is_a_mapping_in_the_config():
    config = from_dict({"data": {"sampler": {"name": "repeated", "repeats": 2}},
                        "stages": [{"name": "crt", "sampler": "class-balanced"}]})
    assert config.data.sampler == {"name": "repeated", "repeats": 2}
    assert create_sampler(config.data.sampler, TARGETS).repeats == 2


def test_deit_lt_students_repeat_and_accumulate_as_the_official_scripts_but_not_at_the_cpu_budget():
    students = [name for name in list_recipes() if name.startswith("deit-lt-") and "teacher" not in name]
    for name in students:
        config = resolve(name)
        if "budget" in name:
            assert (config.data.sampler, config.train.accumulate_steps) == ("instance", 1), name
        else:
            assert config.data.sampler == {"name": "repeated", "repeats": 3}, name
            assert config.train.accumulate_steps == 4, name
