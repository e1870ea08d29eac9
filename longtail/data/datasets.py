"""Long-tailed datasets by name: ``create_datasets(name, ...) -> DatasetSplits(train, val, test, info)``.

Each dataset family (modules ``cifar``, ``lists``, ``folders``, ``digits``; imported by the package)
registers its builders into ``DATASETS``; they share ``long_tailed_splits``, which applies the profile,
carves the validation split and computes the shot groups. Data lives under one root: ``root=...``, else
``$LONGTAIL_DATA``, else the project's shared data folder (``../shared/data``), where ``cifar10-lt`` finds
``cifar10-jpeg``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longtail.data.files import ImageFiles
from longtail.data.memory import InMemoryImages
from longtail.data.profiles import PROFILES, SELECTIONS, check_imbalance, class_counts, select_per_class
from longtail.data.shots import default_thresholds, shot_groups
from longtail.data.splits import carve_validation
from longtail.errors import LongtailError, Setting, SettingError, unknown_name_error
from longtail.paths import shared_data_root
from longtail.registry import Registry, reject_unknown_options

DATASETS = Registry("dataset")
register_dataset = DATASETS.register

LongTailedDataset = InMemoryImages | ImageFiles

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """What models, losses and reports need to know about a dataset's classes and images."""

    name: str
    num_classes: int
    class_names: list[str]
    train_counts: list[int]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    shot_groups: dict[str, np.ndarray]
    shot_thresholds: tuple[float, float] = (100.0, 20.0)

    @property
    def num_train(self) -> int:
        return sum(self.train_counts)


@dataclass
class DatasetSplits:
    """``val`` is None when the dataset has no validation split (``val_per_class=0``)."""

    train: LongTailedDataset
    val: LongTailedDataset | None
    test: LongTailedDataset
    info: DatasetInfo


class DataNotFound(SettingError):
    """A dataset's files are not where the settings say."""


def default_data_root() -> Path:
    """``$LONGTAIL_DATA``, else the shared data folder beside the project (``../shared/data``)."""
    return Path(os.environ.get("LONGTAIL_DATA") or shared_data_root()).expanduser()


def existing_root(root: Path) -> Path:
    if not root.is_dir():
        origin = " (from $LONGTAIL_DATA)" if os.environ.get("LONGTAIL_DATA") and root == default_data_root() else ""
        raise DataNotFound(
            f"Data root '{root}'{origin} does not exist. Give ", Setting("root", "<folder>"),
            " or set LONGTAIL_DATA: the folder that holds your datasets."
        )
    return root


def create_datasets(
    name: str,
    root: str | Path | None = None,
    imbalance: float = 100.0,
    profile: str = "exp",
    selection: str = "shuffle",
    seed: int = 0,
    val_per_class: int | None = None,
    meta_file: str | Path | list[str | Path] | None = None,
    meta_locations: str | Path | list[str | Path] | None = None,
    **kwargs: Any,
) -> DatasetSplits:
    """The train / validation / test splits of long-tailed dataset ``name`` and its DatasetInfo.

    ``imbalance`` (IF = n_max / n_min) and ``profile`` ('exp' or 'step') shape datasets made long-tailed
    here (CIFAR, digits, ImageFolder trees); list-defined datasets (ImageNet-LT, Places-LT, iNaturalist)
    are long-tailed by their lists and ignore them. ``selection`` picks the kept images ('shuffle':
    LDAM-DRW/RIDE with numpy seed ``seed``; 'first': SHIKE). ``val_per_class``: images per class carved
    from the training data for validation (see ``longtail.data.splits``); None means the dataset's
    official validation list where it has one (ImageNet-LT, Places-LT) and no validation split otherwise.
    ``meta_file`` (and, for iNaturalist JSONs, ``meta_locations``; paths relative to the data root or the
    working directory) attaches per-image meta-information to every split (``longtail.data.meta_splits``).
    Other keyword arguments go to the dataset's builder (e.g. ``download``, ``image_root``, ``image_size``).
    """
    builder = DATASETS.get(name)
    check_imbalance(imbalance)
    if profile not in PROFILES:
        raise unknown_name_error("profile", profile, PROFILES)
    if selection not in SELECTIONS:
        raise unknown_name_error("selection", selection, SELECTIONS)
    check_dataset_options(name, kwargs)
    if val_per_class is not None and val_per_class < 0:
        raise LongtailError(f"val_per_class must be >= 0, got {val_per_class}.")
    if meta_locations is not None and meta_file is None:
        raise LongtailError("meta_locations is given without meta_file; set meta_file to the annotation JSON(s).")
    root_path = Path(root).expanduser() if root is not None else default_data_root()
    splits = builder(
        root_path,
        imbalance=imbalance,
        profile=profile,
        selection=selection,
        seed=seed,
        val_per_class=val_per_class,
        **kwargs,
    )
    if meta_file is not None:
        from longtail.data.meta_splits import attach_meta, read_meta_tables

        attach_meta(splits, read_meta_tables(meta_file, meta_locations, root_path), root_path)
    return splits


# Options of ``create_datasets`` itself that a config gives in ``data.args`` beside the builder's own.
META_OPTIONS = ("meta_file", "meta_locations")


def check_dataset_options(name: str, options: Iterable[str], owner: str | None = None) -> None:
    """Raise a LongtailError naming the ``options`` that dataset ``name`` does not take, suggesting the closest.
    A builder's ``**common`` receives the settings every dataset shares (``imbalance``, ``seed``...), which are
    not options, so only its named parameters (less ``root``) and the meta-information files are valid."""
    parameters = inspect.signature(DATASETS.get(name)).parameters.values()
    valid = [p.name for p in parameters if p.name != "root" and p.kind is not p.VAR_KEYWORD] + list(META_OPTIONS)
    reject_unknown_options(owner or f"Dataset '{name}'", options, valid)


def long_tailed_splits(
    name: str,
    train_pool: LongTailedDataset,
    test: LongTailedDataset,
    *,
    imbalance: float,
    profile: str,
    selection: str,
    seed: int,
    val_per_class: int | None,
    official_val: LongTailedDataset | None = None,
    n_max: int | None = None,
    apply_profile: bool = True,
) -> DatasetSplits:
    """Make ``train_pool`` (the source's whole training split) long-tailed and carve validation from it.

    ``n_max`` defaults to the smallest class of the pool, so every class can supply its count.
    """
    targets = train_pool.targets
    num_classes = train_pool.num_classes
    if apply_profile:
        available = np.bincount(targets, minlength=num_classes)
        counts = class_counts(n_max or int(available.min()), num_classes, imbalance, profile)
        kept, spare = select_per_class(targets, counts, selection, seed)
    else:
        kept, spare = np.arange(len(targets)), np.empty(0, dtype=np.int64)
    val = official_val
    if val_per_class is not None:
        kept, val_positions = carve_validation(targets, kept, spare, val_per_class, seed)
        val = train_pool.subset(val_positions) if len(val_positions) else None
    train = train_pool.subset(kept)
    return DatasetSplits(train, val, test, describe(name, train))


def describe(name: str, train: LongTailedDataset) -> DatasetInfo:
    counts = np.bincount(train.targets, minlength=train.num_classes)
    many, few = default_thresholds(int(counts.max()))
    return DatasetInfo(
        name=name,
        num_classes=train.num_classes,
        class_names=list(train.class_names),
        train_counts=[int(c) for c in counts],
        image_size=train.image_size,
        mean=_triple(train.mean),
        std=_triple(train.std),
        shot_groups=shot_groups(counts, many, few),
        shot_thresholds=(many, few),
    )


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c
