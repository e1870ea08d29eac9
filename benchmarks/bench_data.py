"""Throughput of the in-memory pipeline: augmented CIFAR-10-LT batches per second.

    python benchmarks/bench_data.py                 # full run (target: >= 20,000 images/s, crop + flip)
    python benchmarks/bench_data.py --batches 5     # quick check

Uses cifar10-lt from the data root (``--root``, ``$LONGTAIL_DATA``, else ../shared/data); where it is
absent, random images of the same shape stand in (the pipeline's speed does not depend on the pixels).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from longtail.data import create_datasets, create_loader
from longtail.data.containers import ArrayStore, ImageClasses, InMemoryImages
from longtail.data.small_images import CIFAR10_STATS
from longtail.errors import LongtailError

CONFIGS = [
    ("crop+flip", dict(augment="standard")),
    ("crop+flip, 2 views (strong: AutoAugment+Cutout)", dict(augment="standard", two_views=True)),
    ("crop+flip, 2 views (strong: RandAugment+Cutout)", dict(augment="standard", two_views=True,
                                                             strong_augment="randaugment")),
]


def training_set(root: str | None) -> tuple[InMemoryImages, str]:
    try:
        started = time.perf_counter()
        train = create_datasets("cifar10-lt", root=root, imbalance=100).train
        train.images  # decode, or load from the cache
        return train, f"cifar10-lt IF100 (images ready in {time.perf_counter() - started:.1f} s)"
    except LongtailError as error:
        targets = np.repeat(np.arange(10), [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
        images = np.random.default_rng(0).integers(0, 256, (len(targets), 3, 32, 32), dtype=np.uint8)
        classes = ImageClasses([str(i) for i in range(10)], *CIFAR10_STATS, 32)
        dataset = InMemoryImages(ArrayStore(images), np.arange(len(targets)), targets, classes)
        return dataset, f"random CIFAR-10-LT-shaped images ({error})"


def images_per_second(loader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # warm-up
    started = time.perf_counter()
    count = 0
    for _, batch in zip(range(batches), iterator):
        count += len(batch)
    if loader.device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=60, help="timed batches per configuration")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    dataset, source = training_set(args.root)
    print(f"data: {source}; device {args.device}; batch {args.batch_size}; torch threads {torch.get_num_threads()}")
    print(f"{'configuration':<52} {'images/s':>10}")
    for name, options in CONFIGS:
        loader = create_loader(dataset, args.batch_size, train=True, device=args.device, **options)
        print(f"{name:<52} {images_per_second(loader, args.batches):>10,.0f}")


if __name__ == "__main__":
    main()
