"""A class-balanced, seeded validation split carved from the training data.

Rule, for each class ``c`` and ``k = val_per_class``:

1. Validation images come first from the class's *spare* training images: those of the source's training
   split that the long-tailed profile left out. The long-tailed training set then stays exactly the
   published one (e.g. CIFAR-10-LT's 12,406 images) wherever a class has spare images.
2. When a class has fewer than ``k`` spare images (the head class, or list-defined datasets such as
   iNaturalist that have none), the rest is taken from its long-tailed training images, but never more
   than half of them: the class keeps at least ``ceil(n_c / 2)`` training images, so no class is emptied
   and a 1-image class keeps its image.

The choice is a function of ``seed`` only (its own numpy stream, independent of the profile's).
"""

from __future__ import annotations

import numpy as np

VALIDATION_STREAM = 0x7A1  # separates the validation draw from other streams seeded by the same seed


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
