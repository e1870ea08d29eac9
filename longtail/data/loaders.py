"""Loaders: the ``Batch``es of any long-tailed dataset, and the evaluation preprocessing of a single image.

``create_loader`` picks the loader of a dataset; both give the same ``Batch``es:

- ``InMemoryLoader`` (``InMemoryImages``): the uint8 images live on the target device and batches are
  augmented there (``longtail.data.augment.BatchAugment``).
- ``FileLoader`` (``ImageFiles``): torchvision transforms v2 (``file_transform``) in DataLoader worker
  processes. Each worker process's torch generator is seeded from ``(seed, epoch, rank)`` through the
  DataLoader's generator (workers are started per epoch, never persistent), so the random transforms of an
  epoch are reproducible for a fixed ``num_workers``.

Their base, ``Loader``, says which dataset indices each batch of an epoch holds on this rank. All randomness
of an epoch (its order, and the augmentations drawn by subclasses from ``epoch_seed``) is a function of
``(seed, epoch, rank)``, so ``set_epoch(e)`` reproduces epoch ``e`` exactly: resuming a run gives the
batches it would have seen. Training orders are padded so that every rank gets the same number of batches;
evaluation orders are dealt without padding (each image once over all ranks).

``preprocessing``, ``image_transform`` and ``load_image`` apply a dataset's evaluation preprocessing to any
image file (prediction) and state it as plain data (export).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from longtail.data.augment import AugmentSpec, BatchAugment, augment_spec, cutout
from longtail.data.containers import Batch, ImageFiles, InMemoryImages, TransformedFiles
from longtail.data.reading import intra_op_threads, open_rgb
from longtail.data.samplers import EpochSampler, SamplerSpec, SequentialSampler, create_sampler, epoch_rng, shard
from longtail.errors import LongtailError, Setting, SettingError

Augment = str | AugmentSpec | None
CIFAR_POLICY_MAX_SIZE = 64  # AutoAugment uses the CIFAR-10 policy up to this image size, ImageNet's above
AUGMENT_STREAM = 0xA06
WORKER_STREAM = 0xF11
RESIZE_RATIO = 0.875  # evaluation: resize to size / 0.875, then centre crop (256 -> 224)
IN_MEMORY_MAX_SIZE = 64  # images up to this size live in memory and are evaluated whole


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


class Loader(ABC):
    """Iterates the ``Batch``es of one epoch; ``set_epoch`` before each epoch (0-based)."""

    def __init__(
        self,
        dataset,
        sampler: EpochSampler,
        batch_size: int,
        train: bool,
        seed: int,
        drop_last: bool,
        rank: int,
        world_size: int,
    ) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> np.ndarray:
        """This rank's dataset indices for the current epoch, in order (the head of its shard when the
        sampler's order is longer than the epoch, as the repeated sampler's is)."""
        order = self.sampler.epoch_order(self.epoch, self.seed)
        return shard(order, self.rank, self.world_size, pad=self.train)[: self.samples_per_rank()]

    def epoch_batches(self) -> list[np.ndarray]:
        indices = self.epoch_indices()
        stop = len(indices) - len(indices) % self.batch_size if self.drop_last else len(indices)
        return [indices[start : min(start + self.batch_size, stop)] for start in range(0, stop, self.batch_size)]

    def epoch_seed(self, stream: int) -> int:
        """A seed for this epoch's and rank's randomness of kind ``stream``."""
        return int(epoch_rng(self.seed, self.epoch, stream, self.rank).integers(2**62))

    def samples_per_rank(self) -> int:
        total = self.sampler.num_samples
        if self.train:
            return -(-total // self.world_size)
        return len(range(self.rank, total, self.world_size))

    def __len__(self) -> int:
        samples = self.samples_per_rank()
        return samples // self.batch_size if self.drop_last else -(-samples // self.batch_size)

    @abstractmethod
    def __iter__(self) -> Iterator[Batch]: ...


class InMemoryLoader(Loader):
    """``weak`` (and ``strong`` for two views) map a uint8 batch to the normalised float views."""

    def __init__(
        self,
        dataset: InMemoryImages,
        weak: BatchAugment,
        strong: BatchAugment | None,
        device: torch.device | str,
        **loader_args,
    ) -> None:
        super().__init__(dataset, **loader_args)
        self.device = torch.device(device)
        self.weak, self.strong = weak, strong
        self.images = dataset.images.to(self.device)
        self.targets = torch.from_numpy(dataset.targets).to(self.device)
        self.meta = {name: values.to(self.device) for name, values in dataset.meta.items()}

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.epoch_seed(AUGMENT_STREAM))
        threads = 1 if self.device.type == "cpu" else torch.get_num_threads()  # see reading.intra_op_threads
        for indices in self.epoch_batches():
            with intra_op_threads(threads):
                batch = self._batch(torch.from_numpy(indices).to(self.device, non_blocking=True), generator)
            yield batch

    def _batch(self, rows: torch.Tensor, generator: torch.Generator) -> Batch:
        raw = self.images[rows]
        return Batch(
            images=self.weak(raw, generator),
            targets=self.targets[rows],
            indices=rows,
            strong=self.strong(raw, generator) if self.strong is not None else None,
            meta={name: values[rows] for name, values in self.meta.items()},
        )


class Cutout(torch.nn.Module):
    """Cutout (to 0) of one image (C, H, W); used inside worker transforms."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return cutout(image.unsqueeze(0), self.size, None)[0]


def file_transform(
    spec: AugmentSpec, train: bool, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """PIL image -> normalised float tensor: RandomResizedCrop (training) or resize + centre crop, then ``spec``."""
    if train and spec.crop:
        scale = spec.resized_crop or (0.08, 1.0)
        steps: list = [v2.RandomResizedCrop(image_size, scale=scale, antialias=True)]
    else:
        steps = [v2.Resize(round(image_size / RESIZE_RATIO), antialias=True), v2.CenterCrop(image_size)]
    if spec.flip:
        steps.append(v2.RandomHorizontalFlip())
    if spec.color_jitter is not None:
        steps.append(v2.ColorJitter(*spec.color_jitter))
    if spec.grayscale:
        steps.append(v2.RandomGrayscale(spec.grayscale))
    if spec.rotation:
        steps.append(v2.RandomRotation(spec.rotation))
    if spec.policy == "autoaugment":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, fill=spec.policy_fill))
    elif spec.policy == "randaugment":
        steps.append(
            v2.RandAugment(num_ops=spec.randaugment_ops, magnitude=spec.randaugment_magnitude, fill=spec.policy_fill)
        )
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    black_cutout = spec.cutout and spec.cutout_fill == "black"
    if black_cutout:
        steps.append(Cutout(spec.cutout))
    steps.append(v2.Normalize(list(mean), list(std)))
    if spec.cutout and not black_cutout:
        steps.append(Cutout(spec.cutout))
    return v2.Compose(steps)


def _collate(items: list[tuple]) -> tuple[torch.Tensor, ...]:
    columns = list(zip(*items))
    indices = torch.tensor(columns[0], dtype=torch.int64)
    return (indices, *(torch.stack(view) for view in columns[1:]))


class FileLoader(Loader):
    def __init__(
        self,
        dataset: ImageFiles,
        weak: AugmentSpec,
        strong: AugmentSpec | None,
        device: torch.device | str,
        num_workers: int,
        **loader_args,
    ) -> None:
        super().__init__(dataset, **loader_args)
        if not dataset.image_root.is_dir():
            raise SettingError(
                f"Image root '{dataset.image_root}' does not exist; give ", Setting("image_root", "<folder>"),
                ", the folder holding the images."
            )
        self.device = torch.device(device)
        self.num_workers = num_workers
        size, mean, std = dataset.image_size, dataset.mean, dataset.std
        views = [file_transform(weak, self.train, size, mean, std)]
        if strong is not None:
            views.append(file_transform(strong, self.train, size, mean, std))
        self.views = TransformedFiles(dataset, views)
        self.targets = torch.from_numpy(dataset.targets)
        self.meta = dataset.meta

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.epoch_seed(WORKER_STREAM))
        loader = DataLoader(
            self.views,
            batch_sampler=[b.tolist() for b in self.epoch_batches()],
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            generator=generator,
        )
        try:
            for indices, weak, *strong in loader:
                batch = Batch(
                    images=weak,
                    targets=self.targets[indices],
                    indices=indices,
                    strong=strong[0] if strong else None,
                    meta={name: values[indices] for name, values in self.meta.items()},
                )
                yield batch.to(self.device, non_blocking=True)
        except LongtailError as error:  # re-raised from a worker with its traceback: keep the message only
            raise LongtailError(str(error).rstrip().rsplit("LongtailError: ", 1)[-1]) from None


def preprocessing(info: Any) -> dict[str, Any]:
    """The steps that turn an image into the model's input, as plain data (for an exported model).

    Images of at most ``IN_MEMORY_MAX_SIZE`` pixels (CIFAR, digits, small ImageFolder trees) live in memory at
    their size and are evaluated whole, so a new image is resized to ``image_size`` x ``image_size``. Larger
    images are evaluated as the file loader does: the shorter side resized to ``image_size / 0.875``, then a
    centre crop of ``image_size``. Both end in RGB floats in [0, 1] normalised by the dataset's mean and std.
    """
    size = info.image_size
    if size > IN_MEMORY_MAX_SIZE:
        geometry = {"resize_shorter_side": round(size / RESIZE_RATIO), "center_crop": size}
    else:
        geometry = {"resize": [size, size]}
    return {
        "color": "RGB",
        **geometry,
        "interpolation": "bilinear, antialiased",
        "scale": "pixel / 255",
        "mean": list(info.mean),
        "std": list(info.std),
        "input": f"float32 (N, 3, {size}, {size})",
    }


def image_transform(info: Any) -> v2.Compose:
    """PIL RGB image -> the normalised (3, S, S) float tensor the model takes, S = ``info.image_size``."""
    steps = preprocessing(info)
    if "center_crop" in steps:
        geometry = [v2.Resize(steps["resize_shorter_side"], antialias=True), v2.CenterCrop(steps["center_crop"])]
    else:
        geometry = [v2.Resize(tuple(steps["resize"]), antialias=True)]
    return v2.Compose(
        [*geometry, v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(steps["mean"], steps["std"])]
    )


def load_image(image: str | Path | Image.Image, info: Any) -> torch.Tensor:
    """An image file (or PIL image) as the model saw evaluation images."""
    picture = image.convert("RGB") if isinstance(image, Image.Image) else open_rgb(Path(image))
    return image_transform(info)(picture)
