"""Epoch orders of dataset indices: instance, class-balanced, square-root, progressive and repeated sampling.

Every order is a function of ``(seed, epoch)`` only, so all DDP ranks compute the same global order and
take disjoint shards of it (``shard``): the padded order is dealt round-robin, ``order[rank::world_size]``,
which gives every rank the same length, as ``torch.utils.data.DistributedSampler`` does.

Class-aware samplers draw a class ``c`` with probability ``p_c``, then an image of ``c`` uniformly:

- ``class-balanced``: ``p_c = 1 / C`` (Shen et al., 2016; Kang et al., 2020)
- ``square-root``:    ``p_c ∝ sqrt(n_c)`` (Mahajan et al., 2018)
- ``progressive``:    ``p_c(t) = (1 - a) n_c / N + a / C`` with ``a = t / (T - 1)``, moving from instance
  to class-balanced sampling over the ``T`` training epochs (Kang et al., 2020, with 0-based epoch ``t``
  reaching fully balanced sampling at the last epoch).

``instance`` is a random permutation of the dataset; ``sequential`` (evaluation) is file order.
An epoch has ``len(dataset)`` draws unless ``num_samples`` says otherwise.

``repeated`` is repeated augmentation (Hoffer et al., CVPR 2020; DeiT's ``RASampler``, Touvron et al., 2021):
a random permutation with every index written ``repeats`` times in a row (default 3). Its order is longer than
the epoch: the round-robin deal sends the copies of an image to consecutive ranks (with ``world_size >=
repeats``, each to a different process), and each rank keeps only its first ``ceil(num_samples / world_size)``
indices, so an epoch costs what an instance epoch does while covering about ``1 / repeats`` of the images
(DeiT also rounds the epoch down to a multiple of 256 images; here ``drop_last`` batching does the
rounding). Each copy is augmented independently: the in-memory loader draws augmentation parameters per
image, also for copies in the same batch. A sampler with options is given as a mapping, e.g. ``data.sampler:
{name: repeated, repeats: 3}`` (``create_sampler``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from longtail.errors import LongtailError
from longtail.registry import Registry

SAMPLERS = Registry("sampler", reserved=("targets", "epochs", "num_samples"))
SamplerSpec = str | dict[str, Any]  # a sampler's name, or a mapping of its name and options
SAMPLER_STREAM = 0x5A3  # separates sampling from other streams seeded by (seed, epoch)


def epoch_rng(seed: int, epoch: int, stream: int, rank: int = 0) -> np.random.Generator:
    """The numpy generator of one epoch's randomness for one purpose (``stream``) on one rank."""
    return np.random.default_rng([seed, epoch, stream, rank])


class EpochSampler(ABC):
    """Dataset indices for one epoch, from labels ``targets``. ``order`` has at least ``num_samples`` indices;
    each rank keeps the first ``ceil(num_samples / world_size)`` of its shard (``longtail.data.loaders.Loader``)."""

    def __init__(self, targets: np.ndarray, num_samples: int | None = None) -> None:
        self.targets = np.asarray(targets, dtype=np.int64)
        self.num_samples = len(self.targets) if num_samples is None else int(num_samples)

    @abstractmethod
    def order(self, epoch: int, rng: np.random.Generator) -> np.ndarray:
        """The global order of the epoch (the same on every rank)."""

    def epoch_order(self, epoch: int, seed: int) -> np.ndarray:
        return self.order(epoch, epoch_rng(seed, epoch, SAMPLER_STREAM))


class SequentialSampler(EpochSampler):
    def order(self, epoch: int, rng: np.random.Generator) -> np.ndarray:
        return np.arange(len(self.targets))


class InstanceSampler(EpochSampler):
    def order(self, epoch: int, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(len(self.targets))


class RepeatedSampler(EpochSampler):
    """A random permutation with each index repeated ``repeats`` times in a row (repeated augmentation)."""

    def __init__(self, targets: np.ndarray, repeats: int, num_samples: int | None = None) -> None:
        super().__init__(targets, num_samples)
        self.repeats = repeats

    def order(self, epoch: int, rng: np.random.Generator) -> np.ndarray:
        copies = np.repeat(rng.permutation(len(self.targets)), self.repeats)
        return np.resize(copies, max(len(copies), self.num_samples))


class ClassAwareSampler(EpochSampler):
    """Draws classes with ``class_probabilities(epoch)``, then images uniformly within the class."""

    def __init__(self, targets: np.ndarray, num_samples: int | None = None) -> None:
        super().__init__(targets, num_samples)
        self.counts = np.bincount(self.targets)
        self.by_class = np.argsort(self.targets, kind="stable")
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])

    @abstractmethod
    def class_probabilities(self, epoch: int) -> np.ndarray: ...

    def order(self, epoch: int, rng: np.random.Generator) -> np.ndarray:
        classes = rng.choice(len(self.counts), size=self.num_samples, p=self.class_probabilities(epoch))
        within = (rng.random(self.num_samples) * self.counts[classes]).astype(np.int64)
        return self.by_class[self.starts[classes] + within]


class PowerSampler(ClassAwareSampler):
    """``p_c ∝ n_c ** power`` over the classes present: 0 is class-balanced, 0.5 square-root."""

    def __init__(self, targets: np.ndarray, power: float, num_samples: int | None = None) -> None:
        super().__init__(targets, num_samples)
        weights = np.where(self.counts > 0, self.counts.astype(np.float64) ** power, 0.0)
        self.probabilities = weights / weights.sum()

    def class_probabilities(self, epoch: int) -> np.ndarray:
        return self.probabilities


class ProgressiveSampler(ClassAwareSampler):
    def __init__(self, targets: np.ndarray, epochs: int, num_samples: int | None = None) -> None:
        super().__init__(targets, num_samples)
        self.epochs = epochs
        self.instance = self.counts / self.counts.sum()
        present = self.counts > 0
        self.balanced = present / present.sum()

    def class_probabilities(self, epoch: int) -> np.ndarray:
        progress = min(epoch / max(self.epochs - 1, 1), 1.0)
        return (1.0 - progress) * self.instance + progress * self.balanced


@SAMPLERS.register("instance")
def instance_sampler(targets: np.ndarray, epochs: int | None = None, num_samples: int | None = None) -> EpochSampler:
    return InstanceSampler(targets, num_samples)


@SAMPLERS.register("class-balanced")
def class_balanced_sampler(
    targets: np.ndarray, epochs: int | None = None, num_samples: int | None = None
) -> EpochSampler:
    return PowerSampler(targets, 0.0, num_samples)


@SAMPLERS.register("square-root")
def square_root_sampler(targets: np.ndarray, epochs: int | None = None, num_samples: int | None = None) -> EpochSampler:
    return PowerSampler(targets, 0.5, num_samples)


@SAMPLERS.register("progressive")
def progressive_sampler(targets: np.ndarray, epochs: int | None = None, num_samples: int | None = None) -> EpochSampler:
    if not epochs or epochs < 1:
        raise LongtailError("Sampler 'progressive' needs the number of training epochs: pass epochs=<T>.")
    return ProgressiveSampler(targets, epochs, num_samples)


@SAMPLERS.register("repeated")
def repeated_sampler(
    targets: np.ndarray, epochs: int | None = None, num_samples: int | None = None, repeats: int = 3
) -> EpochSampler:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise LongtailError(
            f"Sampler 'repeated' needs repeats to be a whole number >= 1, got {repeats!r}; e.g. "
            "data.sampler={name: repeated, repeats: 3}."
        )
    return RepeatedSampler(targets, repeats, num_samples)


LABEL_FREE_SAMPLERS = ("instance", "repeated")  # samplers whose order never depends on the labels


def sampler_name(spec: SamplerSpec) -> str | None:
    """The registered name of a sampler spec (a name, or a mapping with a ``name``)."""
    return spec if isinstance(spec, str) else dict(spec).get("name")


def create_sampler(
    spec: SamplerSpec, targets: np.ndarray, epochs: int | None = None, num_samples: int | None = None
) -> EpochSampler:
    """The training sampler ``spec`` names: a registered name, or a mapping of ``name`` and the sampler's
    options (e.g. ``{'name': 'repeated', 'repeats': 3}``)."""
    name, options = sampler_options(spec)
    SAMPLERS.check_options(name, options)
    return SAMPLERS.create(name, targets, epochs=epochs, num_samples=num_samples, **options)


def sampler_options(spec: SamplerSpec) -> tuple[str, dict[str, Any]]:
    """The name and the options of a sampler spec (a name, or a mapping of ``name`` and options)."""
    if isinstance(spec, str):
        return spec, {}
    options = dict(spec)
    name = options.pop("name", None)
    if not isinstance(name, str):
        raise LongtailError(
            f"A sampler given as a mapping needs a 'name', e.g. {{name: repeated, repeats: 3}}; got {spec!r}."
        )
    return name, options


def shard(order: np.ndarray, rank: int, world_size: int, pad: bool = True) -> np.ndarray:
    """This rank's part of a global ``order``; with ``pad`` the order is first repeated cyclically to a
    multiple of ``world_size`` so that every rank gets the same number of indices."""
    if not 0 <= rank < world_size:
        raise LongtailError(f"rank must be in [0, world_size={world_size}), got {rank}.")
    if pad and len(order) % world_size:
        order = np.resize(order, -(-len(order) // world_size) * world_size)
    return order[rank::world_size]
