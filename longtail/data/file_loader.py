"""Loader of image-file datasets: torchvision transforms v2 in DataLoader worker processes.

Each worker process's torch generator is seeded from ``(seed, epoch, rank)`` through the DataLoader's
generator (workers are started per epoch, never persistent), so the random transforms of an epoch are
reproducible for a fixed ``num_workers``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from longtail.data.augment import AugmentSpec, cutout
from longtail.data.batch import Batch
from longtail.data.files import ImageFiles, TransformedFiles
from longtail.data.loading import Loader
from longtail.errors import LongtailError, Setting, SettingError

WORKER_STREAM = 0xF11
RESIZE_RATIO = 0.875  # evaluation: resize to size / 0.875, then centre crop (256 -> 224)


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
