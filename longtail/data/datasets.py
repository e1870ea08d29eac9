"""Long-tailed datasets by name: ``create_datasets(name, ...) -> DatasetSplits(train, val, test, info)``.

Each dataset family (modules ``small_images`` and ``folders_and_lists``; imported by the package) registers
its builders into ``DATASETS``; they share ``longtail.data.shaping.long_tailed_splits``, which applies the
profile, carves the validation split and computes the shot groups. Data lives under one root: ``root=...``,
else ``$LONGTAIL_DATA``, else the project's shared data folder (``../shared/data``), where ``cifar10-lt``
finds ``cifar10-jpeg``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from longtail.data.containers import DatasetSplits
from longtail.data.meta import attach_meta, read_meta_tables
from longtail.data.shaping import PROFILES, SELECTIONS, check_imbalance
from longtail.errors import LongtailError, Setting, SettingError, unknown_name_error
from longtail.paths import shared_data_root
from longtail.registry import Registry, reject_unknown_options

DATASETS = Registry("dataset")
register_dataset = DATASETS.register


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
    from the training data for validation (see ``longtail.data.shaping``); None means the dataset's
    official validation list where it has one (ImageNet-LT, Places-LT) and no validation split otherwise.
    ``meta_file`` (and, for iNaturalist JSONs, ``meta_locations``; paths relative to the data root or the
    working directory) attaches per-image meta-information to every split (``longtail.data.meta``).
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
