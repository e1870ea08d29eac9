"""``create_loader``: batches of any long-tailed dataset, with the same ``Batch`` output for all of them."""

from __future__ import annotations

import os

import torch

from longtail.data.augment import AugmentSpec, BatchAugment, augment_spec
from longtail.data.file_loader import FileLoader
from longtail.data.files import ImageFiles
from longtail.data.loading import Loader
from longtail.data.memory import InMemoryImages
from longtail.data.memory_loader import InMemoryLoader
from longtail.data.samplers import EpochSampler, SamplerSpec, SequentialSampler, create_sampler
from longtail.errors import LongtailError

Augment = str | AugmentSpec | None
CIFAR_POLICY_MAX_SIZE = 64  # AutoAugment uses the CIFAR-10 policy up to this image size, ImageNet's above


def create_loader(
    dataset: InMemoryImages | ImageFiles,
    batch_size: int,
    train: bool,
    augment: Augment = "auto",
    two_views: bool = False,
    sampler: SamplerSpec | EpochSampler = "instance",
    seed: int = 0,
    drop_last: bool | None = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    *,
    strong_augment: Augment = "autoaugment",
    epochs: int | None = None,
    num_samples: int | None = None,
    channels_last: bool = False,
) -> Loader:
    """A Loader over ``dataset`` yielding ``Batch``es on ``device``.

    ``augment``: the (weak) view's augmentation, a name of ``longtail.data.augment.AUGMENTATIONS``
    ('none', 'standard' = crop + flip, 'autoaugment', 'randaugment') or an ``AugmentSpec``; 'auto' is
    'standard' for training and 'none' for evaluation. ``two_views`` adds ``Batch.strong`` made with
    ``strong_augment``. ``sampler`` (training only; evaluation reads the dataset in order): 'instance',
    'class-balanced', 'square-root', 'progressive' (needs ``epochs``), 'repeated', a mapping of a name and
    options (``{'name': 'repeated', 'repeats': 3}``) or an EpochSampler. ``drop_last``
    defaults to ``train``. ``rank`` / ``world_size`` shard every epoch for DistributedDataParallel.
    ``num_workers`` only applies to image-file datasets (default: up to 8 processes).
    """
    if batch_size < 1:
        raise LongtailError(f"batch_size must be >= 1, got {batch_size}.")
    weak = augment_spec(("standard" if train else "none") if augment == "auto" else augment)
    strong = augment_spec(strong_augment) if two_views else None
    loader_args = dict(
        sampler=_sampler(dataset, sampler, train, epochs, num_samples),
        batch_size=batch_size,
        train=train,
        seed=seed,
        drop_last=train if drop_last is None else drop_last,
        rank=rank,
        world_size=world_size,
    )
    if isinstance(dataset, ImageFiles):
        workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        return FileLoader(dataset, weak, strong, device, workers, **loader_args)
    cifar_policy = dataset.image_size <= CIFAR_POLICY_MAX_SIZE

    def batch_augment(spec: AugmentSpec) -> BatchAugment:
        return BatchAugment(spec, dataset.mean, dataset.std, channels_last, cifar_policy)

    return InMemoryLoader(
        dataset, batch_augment(weak), batch_augment(strong) if strong else None, device, **loader_args
    )


def _sampler(dataset, sampler: SamplerSpec | EpochSampler, train: bool, epochs: int | None, num_samples: int | None):
    if isinstance(sampler, EpochSampler):
        return sampler
    if not train:
        return SequentialSampler(dataset.targets)
    return create_sampler(sampler, dataset.targets, epochs=epochs, num_samples=num_samples)
