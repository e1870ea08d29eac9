"""Meta-information for the splits of any dataset of image files (MetaFormer): ``create_datasets(...,
meta_file=..., meta_locations=...)``.

``meta_file`` is one file or a list of files, each an iNaturalist annotation JSON (a dict with an ``images``
list: its date and location fields, or those of the matching ``meta_locations`` file, make the
'spatiotemporal' group; ``longtail.data.meta.read_inaturalist``) or a side file keyed by image path (CSV,
JSON or NPZ; ``read_meta_file``). The files are merged (e.g. iNat's train and val JSONs) and each split gets
every group in its own sample order. Images are keyed by their path relative to the data root (``train/ant/1.jpg``
for an imagefolder-lt tree, whose splits would otherwise share keys) or, when no key of that form is in the
files, relative to the split's image folder (iNaturalist's ``train_val2018/...``); images the files do not list
get zeros (the paper's missing meta).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longtail.data.files import ImageFiles
from longtail.data.memory import InMemoryImages
from longtail.data.meta import MetaTable, read_inaturalist, read_meta_file
from longtail.errors import LongtailError


def read_meta_tables(
    files: str | Path | Sequence[str | Path], locations: str | Path | Sequence[str | Path] | None, root: Path
) -> MetaTable:
    """One table of every ``files`` entry (iNaturalist JSON or side file), paths resolved against ``root``."""
    files = _as_list(files)
    locations = _as_list(locations) if locations is not None else [None] * len(files)
    if len(locations) != len(files):
        raise LongtailError(
            f"meta_locations needs one locations file per meta_file ({len(files)}), got {len(locations)}."
        )
    tables = [
        _read_one(_resolve(file, root), None if location is None else _resolve(location, root))
        for file, location in zip(files, locations)
    ]
    return _merge(tables)


def attach_meta(splits: Any, table: MetaTable, root: Path) -> None:
    """Put the table's groups, aligned to each split's images, into ``split.meta`` (float32 tensors). A split
    none of whose images the files list gets zeros and a warning; when no split matches, the keys are wrong."""
    listed = set(table.paths)
    named = {"train": splits.train, "val": splits.val, "test": splits.test}
    keyed = {name: _keys(split, root, listed) for name, split in named.items() if split is not None}
    if not any(listed.intersection(keys) for keys in keyed.values()):
        table.align(keyed["train"])  # raises, showing both forms of path
    for name, keys in keyed.items():
        if not listed.intersection(keys):
            warnings.warn(f"No image of the {name} split is in the meta files; its meta is zero.")
        aligned = table.align(keys) if listed.intersection(keys) else _zeros(table, len(keys))
        named[name].meta.update({group: torch.from_numpy(values) for group, values in aligned.items()})


def _keys(split: Any, root: Path, listed: set[str]) -> list[str]:
    image_root, relative = image_paths(split)
    keys = [_path_key(image_root / path, root) for path in relative]
    return keys if listed.intersection(keys) else [Path(path).as_posix() for path in relative]


def _zeros(table: MetaTable, size: int) -> dict[str, np.ndarray]:
    return {name: np.zeros((size, *values.shape[1:]), dtype=np.float32) for name, values in table.groups.items()}


def image_paths(dataset: Any) -> tuple[Path, list[str]]:
    """A dataset's image folder and its samples' paths relative to it, in sample order."""
    if isinstance(dataset, ImageFiles):
        return dataset.image_root, [str(path) for path in dataset.relative_paths]
    store = getattr(dataset, "store", None)
    if isinstance(dataset, InMemoryImages) and hasattr(store, "relative_paths"):
        return Path(store.root), [store.relative_paths[i] for i in dataset.source_indices]
    raise LongtailError(
        f"meta_file needs a dataset of image files (list datasets, imagefolder-lt); {type(dataset).__name__} "
        "has no image paths to key the meta-information by."
    )


def _path_key(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _resolve(path: str | Path, root: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() or path.exists() else root / path


def _read_one(path: Path, locations: Path | None) -> MetaTable:
    if _is_inaturalist(path):
        records = read_inaturalist(path, locations)
        return MetaTable(records.file_names, records.meta())
    if locations is not None:
        raise LongtailError(f"meta_locations applies to iNaturalist annotation files; {path} is not one.")
    return read_meta_file(path)


def _is_inaturalist(path: Path) -> bool:
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with open(path, encoding="utf-8") as file:
        try:
            data = json.load(file)
        except json.JSONDecodeError:
            return False
    return isinstance(data, dict) and isinstance(data.get("images"), list)


def _merge(tables: list[MetaTable]) -> MetaTable:
    if len(tables) == 1:
        return tables[0]
    names = set(tables[0].groups)
    if any(set(table.groups) != names for table in tables):
        raise LongtailError(
            f"The meta files have different groups: {[sorted(table.groups) for table in tables]}; give files "
            "with the same groups."
        )
    paths = [path for table in tables for path in table.paths]
    groups = {name: np.concatenate([table.groups[name] for table in tables]) for name in names}
    return MetaTable(paths, groups)
