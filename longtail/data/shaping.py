"""Long-tail shaping: class-count profiles, the images kept per class, a validation split and the shot groups.

``long_tailed_splits`` applies them to a source's whole training split: it keeps the profile's images of
each class, carves the validation split from the training data and describes the result (``DatasetInfo``,
with the shot groups of its training counts).

Profiles (Cao et al., LDAM-DRW, 2019; the RIDE/MDCS code's ``get_img_num_per_cls``), with the imbalance
factor ``IF = n_max / n_min`` and classes ``i = 0..C-1``:

- ``exp``:  ``n_i = int(n_max * (1/IF) ** (i / (C - 1.0)))``, Python float64 evaluated in exactly this order
  and truncated, which reproduces the official counts bit for bit (CIFAR-10-LT IF100: 12,406 images).
- ``step``: the first ``C // 2`` classes keep ``int(n_max)``, the others ``int(n_max / IF)``. (For odd C the
  official code leaves the last class out; here it joins the tail.)

Selection of the ``n_i`` images kept from class ``i``:

- ``shuffle`` (LDAM-DRW, RIDE, MDCS): ``np.random.seed(seed)`` then, for each class in ascending order,
  shuffle the class's indices and keep the first ``n_i``. A private ``RandomState(seed)`` draws the same
  stream as the legacy global seed without touching numpy's global state.
- ``first`` (SHIKE): the first ``n_i`` images of each class in file order.

Validation: a class-balanced, seeded split carved from the training data. For each class ``c`` and
``k = val_per_class``:

1. Validation images come first from the class's *spare* training images: those of the source's training
   split that the long-tailed profile left out. The long-tailed training set then stays exactly the
   published one (e.g. CIFAR-10-LT's 12,406 images) wherever a class has spare images.
2. When a class has fewer than ``k`` spare images (the head class, or list-defined datasets such as
   iNaturalist that have none), the rest is taken from its long-tailed training images, but never more
   than half of them: the class keeps at least ``ceil(n_c / 2)`` training images, so no class is emptied
   and a 1-image class keeps its image.

The choice is a function of ``seed`` only (its own numpy stream, independent of the profile's).

Shot groups, the field's convention (Liu et al., OLTR, 2019): many-shot classes have more than ``many`` =
100 training images, few-shot classes fewer than ``few`` = 20, medium-shot the rest (20..100 inclusive).
Tiny datasets (``n_max`` < 500, e.g. digits-lt) would put every class in one group, so their thresholds
are scaled to ``n_max`` with the ratios of CIFAR-100-LT (``n_max`` = 500): ``many = n_max / 5`` and
``few = n_max / 25``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from longtail.data.containers import DatasetInfo, DatasetSplits, LongTailedDataset
from longtail.errors import LongtailError, unknown_name_error

PROFILES = ("exp", "step")
SELECTIONS = ("shuffle", "first")
VALIDATION_STREAM = 0x7A1  # separates the validation draw from other streams seeded by the same seed
MANY_SHOT = 100
FEW_SHOT = 20
REFERENCE_N_MAX = 500


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
    """The DatasetInfo of dataset ``name`` whose training split is ``train``: its counts and shot groups."""
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


def check_imbalance(imbalance: float) -> float:
    """``imbalance`` as a float, or a LongtailError when it is not a finite number >= 1."""
    try:
        value = float(imbalance)
    except (TypeError, ValueError):
        raise LongtailError(f"Imbalance factor must be a number >= 1 (n_max / n_min), got {imbalance!r}.") from None
    if not math.isfinite(value) or value < 1:
        raise LongtailError(
            f"Imbalance factor must be >= 1 (it is n_max / n_min; 1 means balanced), got {imbalance!r}. "
            "Use for example --imbalance 100."
        )
    return value


def class_counts(n_max: float, num_classes: int, imbalance: float, profile: str = "exp") -> list[int]:
    """Images per class ``[n_0, ..., n_{C-1}]`` (head first) of a long-tailed ``profile``."""
    imbalance = check_imbalance(imbalance)
    if profile not in PROFILES:
        raise unknown_name_error("profile", profile, PROFILES)
    imb_factor = 1.0 / imbalance
    if profile == "step":
        head = num_classes // 2
        return [int(n_max)] * head + [int(n_max * imb_factor)] * (num_classes - head)
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * imb_factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def select_per_class(
    targets: np.ndarray, counts: Sequence[int], selection: str = "shuffle", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices kept per the profile ``counts`` and the indices left out, both grouped by ascending class.

    The kept indices are in the order of the official long-tailed dataset (class 0's images first).
    """
    if selection not in SELECTIONS:
        raise unknown_name_error("selection", selection, SELECTIONS)
    targets = np.asarray(targets)
    rng = np.random.RandomState(seed)
    kept, left_out = [], []
    for label, count in enumerate(counts):
        members = np.flatnonzero(targets == label)
        if count > len(members):
            raise LongtailError(
                f"Class {label} has {len(members)} images but the profile asks for {count}; "
                "lower n_max or the imbalance factor."
            )
        if selection == "shuffle":
            rng.shuffle(members)
        kept.append(members[:count])
        left_out.append(members[count:])
    return np.concatenate(kept).astype(np.int64), np.concatenate(left_out).astype(np.int64)


def carve_validation(
    targets: np.ndarray, train: np.ndarray, spare: np.ndarray, val_per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` indices into ``targets``: ``val`` holds up to ``val_per_class`` images per class.

    ``train`` keeps its order minus the images moved to validation; ``val`` is grouped by class.
    """
    if val_per_class <= 0:
        return train, np.empty(0, dtype=np.int64)
    rng = np.random.default_rng([seed, VALIDATION_STREAM])
    train_labels, spare_labels = targets[train], targets[spare]
    moved, val = [], []
    for label in np.unique(np.concatenate([train_labels, spare_labels])):
        from_spare = rng.permutation(spare[spare_labels == label])[:val_per_class]
        class_train = train[train_labels == label]
        shortfall = min(val_per_class - len(from_spare), len(class_train) // 2)
        from_train = rng.choice(class_train, size=max(shortfall, 0), replace=False)
        moved.append(from_train)
        val.append(np.concatenate([from_spare, np.sort(from_train)]))
    kept = train[~np.isin(train, np.concatenate(moved))]
    return kept, np.concatenate(val).astype(np.int64)


def default_thresholds(n_max: int) -> tuple[float, float]:
    """``(many, few)``: 100 / 20, or the same fractions of ``n_max`` when ``n_max`` < 500."""
    if n_max >= REFERENCE_N_MAX:
        return float(MANY_SHOT), float(FEW_SHOT)
    scale = n_max / REFERENCE_N_MAX
    return MANY_SHOT * scale, FEW_SHOT * scale


def shot_groups(
    train_counts: Sequence[int], many: float = MANY_SHOT, few: float = FEW_SHOT
) -> dict[str, np.ndarray]:
    """Class indices of each group: ``many`` (n > many), ``medium`` (few <= n <= many), ``few`` (n < few)."""
    counts = np.asarray(train_counts)
    return {
        "many": np.flatnonzero(counts > many),
        "medium": np.flatnonzero((counts >= few) & (counts <= many)),
        "few": np.flatnonzero(counts < few),
    }
