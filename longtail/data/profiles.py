"""Long-tailed class-count profiles and the within-class selection of the kept images.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from longtail.errors import LongtailError, unknown_name_error

PROFILES = ("exp", "step")
SELECTIONS = ("shuffle", "first")


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
