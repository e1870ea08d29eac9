"""Many / medium / few-shot class groups from the training counts.

The field's convention (Liu et al., OLTR, 2019): many-shot classes have more than ``many`` = 100 training
images, few-shot classes fewer than ``few`` = 20, medium-shot the rest (20..100 inclusive).

Tiny datasets (``n_max`` < 500, e.g. digits-lt) would put every class in one group, so their thresholds
are scaled to ``n_max`` with the ratios of CIFAR-100-LT (``n_max`` = 500): ``many = n_max / 5`` and
``few = n_max / 25``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MANY_SHOT = 100
FEW_SHOT = 20
REFERENCE_N_MAX = 500


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
