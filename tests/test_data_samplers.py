"""Samplers: empirical class frequencies, determinism from (seed, epoch), and DDP shards."""

from __future__ import annotations

import numpy as np
import pytest

from longtail.data.samplers import SAMPLERS, shard
from longtail.errors import LongtailError

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
