"""The in-memory loader: Batch contents, two views, epochs, DDP sharding and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail.data import Batch, create_datasets, create_loader
from longtail.data.containers import ArrayStore, ImageClasses, InMemoryImages
from longtail.data.reading import cache_root, cached_array
from longtail.errors import LongtailError


def toy_dataset(counts=(40, 20, 10, 5)) -> InMemoryImages:
    targets = np.repeat(np.arange(len(counts)), counts)
    images = np.random.default_rng(0).integers(0, 256, (len(targets), 3, 16, 16), dtype=np.uint8)
    names = [str(i) for i in range(len(counts))]
    classes = ImageClasses(names, (0.5,) * 3, (0.25,) * 3, 16)
    return InMemoryImages(ArrayStore(images), np.arange(len(targets)), targets, classes)


def test_training_batches():
    dataset = toy_dataset()
    loader = create_loader(dataset, 16, train=True, two_views=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 75 // 16
    batch = batches[0]
    assert isinstance(batch, Batch) and len(batch) == 16
    assert batch.images.shape == batch.strong.shape == (16, 3, 16, 16)
    assert batch.images.dtype == torch.float32 and batch.targets.dtype == torch.int64
    np.testing.assert_array_equal(batch.targets.numpy(), dataset.targets[batch.indices.numpy()])
    assert not torch.equal(batch.images, batch.strong)
    seen = np.concatenate([b.indices.numpy() for b in batches])
    assert len(set(seen)) == len(seen)


def test_evaluation_reads_everything_in_order_without_augmentation():
    dataset = toy_dataset()
    batches = list(create_loader(dataset, 16, train=False))
    assert len(batches) == 5 and len(batches[-1]) == 75 - 64
    np.testing.assert_array_equal(torch.cat([b.indices for b in batches]).numpy(), np.arange(75))
    expected = (dataset.images[:16].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(batches[0].images, expected)


def test_epochs_are_reproducible_and_differ():
    dataset = toy_dataset()
    loader = create_loader(dataset, 8, train=True, seed=3)
    loader.set_epoch(2)
    first = [b.images for b in loader]
    loader.set_epoch(0)
    other = next(iter(loader)).images
    resumed = create_loader(dataset, 8, train=True, seed=3)
    resumed.set_epoch(2)
    assert all(torch.equal(a, b.images) for a, b in zip(first, resumed))
    assert not torch.equal(first[0], other)


def test_ddp_ranks_split_the_epoch():
    dataset = toy_dataset((40, 24))
    loaders = [create_loader(dataset, 8, train=True, sampler="instance", rank=r, world_size=2) for r in range(2)]
    indices = [torch.cat([b.indices for b in loader]).numpy() for loader in loaders]
    assert len(loaders[0]) == len(loaders[1]) == 4
    np.testing.assert_array_equal(np.sort(np.concatenate(indices)), np.arange(64))


def test_class_balanced_loader_balances():
    dataset = toy_dataset((400, 20))
    loader = create_loader(dataset, 42, train=True, sampler="class-balanced")
    targets = torch.cat([b.targets for b in loader]).numpy()
    assert abs(targets.mean() - 0.5) < 0.08


def test_meta_and_channels_last():
    dataset = toy_dataset()
    dataset.meta = {"location": torch.arange(len(dataset)).float().unsqueeze(1)}
    dataset = dataset.subset(np.arange(10, 40))
    batch = next(iter(create_loader(dataset, 8, train=True, channels_last=True)))
    torch.testing.assert_close(batch.meta["location"][:, 0], batch.indices.float() + 10)
    assert batch.images.is_contiguous(memory_format=torch.channels_last)


def test_digits_end_to_end():
    splits = create_datasets("digits-lt", imbalance=10)
    loader = create_loader(splits.train, 64, train=True, sampler="square-root", two_views=True,
                           strong_augment="randaugment")
    batch = next(iter(loader))
    assert batch.images.shape == (64, 3, 32, 32) and batch.strong is not None


def test_bad_loader_arguments():
    with pytest.raises(LongtailError, match="batch_size"):
        create_loader(toy_dataset(), 0, train=True)
    with pytest.raises(LongtailError, match="Unknown sampler"):
        create_loader(toy_dataset(), 4, train=True, sampler="balanced")


def test_cache_round_trip_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path))
    built = []

    def build() -> np.ndarray:
        built.append(1)
        return np.arange(12, dtype=np.uint8).reshape(3, 4)

    first = cached_array("test", {"a": 1}, build)
    second = cached_array("test", {"a": 1}, build)
    np.testing.assert_array_equal(first, second)
    assert built == [1] and cache_root() == tmp_path
    assert [p.suffix for p in tmp_path.iterdir()] == [".npy"]
    cached_array("test", {"a": 2}, build)
    assert built == [1, 1]
