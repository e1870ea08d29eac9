"""Per-image meta-information for MetaFormer (Diao et al., arXiv 2203.02751): encodings, readers, and the
meta-information of a dataset's splits.

Spatio-temporal encoding (7 numbers, the ``'spatiotemporal'`` group, cut (4, 3) by the model):
    temporal = [sin(2 pi m / 12), cos(2 pi m / 12), sin(2 pi h / 24), cos(2 pi h / 24)]
    spatial  = [cos(phi) cos(lambda), cos(phi) sin(lambda), sin(phi)]
with m the month (1-12), h the hour (0-23), phi / lambda the latitude / longitude in radians. As in the
official code (data/dataset_fg.py), anything missing or unreadable is zero: no month -> the four
temporal numbers are 0, no hour (e.g. iNat 2017 dates carry none) -> the two hour numbers are 0, no
valid latitude and longitude pair -> the three spatial numbers are 0. Zeros are also what the model
sees for masked meta, so missing meta and masked meta mean the same thing.

Deliberate differences from the official readers: a latitude or longitude of exactly 0 is a valid
coordinate here (the official ``if latitude and longitude`` treats it as missing); a date without a
time still gives its month (the official iNat 2018 pattern needs the time and otherwise zeros all
four); coordinates outside [-90, 90] / [-180, 180] count as missing.

Readers:
* ``read_inaturalist(annotation_json, locations_json=None)``: the iNaturalist format (2017/2018/2021):
  ``images`` (id, file_name, and for 2021 date / latitude / longitude), ``annotations`` (image_id,
  category_id), optionally the 2017/2018 ``*_locations.json`` list (id, date, lat, lon).
* ``read_meta_file(path)``: a side file for any dataset, keyed by image path (.csv, .json or .npz);
  ``MetaTable.align(paths, root)`` puts its groups in a dataset's sample order (unknown images: zeros).

Splits (``create_datasets(..., meta_file=..., meta_locations=...)``, for any dataset of image files):
``meta_file`` is one file or a list of files, each an iNaturalist annotation JSON (a dict with an ``images``
list: its date and location fields, or those of the matching ``meta_locations`` file, make the
'spatiotemporal' group; ``read_inaturalist``) or a side file keyed by image path (CSV, JSON or NPZ;
``read_meta_file``). The files are merged (e.g. iNat's train and val JSONs) and each split gets every group
in its own sample order. Images are keyed by their path relative to the data root (``train/ant/1.jpg`` for an
imagefolder-lt tree, whose splits would otherwise share keys) or, when no key of that form is in the files,
relative to the split's image folder (iNaturalist's ``train_val2018/...``); images the files do not list get
zeros (the paper's missing meta).
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longtail.data.containers import ImageFiles, InMemoryImages
from longtail.errors import LongtailError

SPATIOTEMPORAL = "spatiotemporal"
SPATIOTEMPORAL_DIMS = (4, 3)
DEFAULT_GROUP = "attributes"
PATH_COLUMNS = ("path", "file_name", "image")
_DATE = re.compile(r"\s*(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{1,2}))?")
_SPATIOTEMPORAL_FIELDS = {"date", "month", "hour", "latitude", "lat", "longitude", "lon"}


def encode_spatiotemporal(
    month: Any, hour: Any, latitude: Any, longitude: Any
) -> np.ndarray:
    """(N,) arrays (NaN = missing) -> (N, 7) float32 [temporal (4), spatial (3)]; missing parts are 0."""
    month, hour, latitude, longitude = (np.asarray(v, dtype=np.float64).reshape(-1) for v in
                                        (month, hour, latitude, longitude))
    month = np.where((month >= 1) & (month <= 12), month, np.nan)
    hour = np.where((hour >= 0) & (hour < 24), hour, np.nan)
    located = (np.abs(latitude) <= 90) & (np.abs(longitude) <= 180)
    phi, lam = np.radians(latitude), np.radians(longitude)
    columns = [
        np.sin(2 * np.pi * month / 12), np.cos(2 * np.pi * month / 12),
        np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24),
        np.where(located, np.cos(phi) * np.cos(lam), np.nan),
        np.where(located, np.cos(phi) * np.sin(lam), np.nan),
        np.where(located, np.sin(phi), np.nan),
    ]
    return np.nan_to_num(np.stack(columns, axis=1), nan=0.0).astype(np.float32)


def parse_date(text: Any) -> tuple[float, float]:
    """(month, hour) of 'YYYY-MM-DD[ HH:MM[:SS][+TZ]]' (also 'T' as separator); NaN where absent."""
    match = _DATE.match(text) if isinstance(text, str) else None
    if match is None:
        return math.nan, math.nan
    hour = match.group(4)
    return float(match.group(2)), (float(hour) if hour is not None else math.nan)


def to_float(value: Any) -> float:
    """A finite float, or NaN for None, '', NaN/inf and anything that is not a number."""
    if isinstance(value, bool):
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def spatiotemporal_from_records(records: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """Records with any of date / month / hour / latitude (lat) / longitude (lon) -> (N, 7) float32.

    ``month`` and ``hour`` fields, when valid, take precedence over those parsed from ``date``.
    """
    rows = []
    for record in records:
        month, hour = parse_date(record.get("date"))
        month = _first_valid(record.get("month"), month)
        hour = _first_valid(record.get("hour"), hour)
        latitude = to_float(record.get("latitude", record.get("lat")))
        longitude = to_float(record.get("longitude", record.get("lon")))
        rows.append((month, hour, latitude, longitude))
    if not rows:
        return np.zeros((0, 7), dtype=np.float32)
    return encode_spatiotemporal(*np.asarray(rows, dtype=np.float64).T)


def _first_valid(value: Any, fallback: float) -> float:
    number = to_float(value)
    return fallback if math.isnan(number) else number


@dataclass
class InatRecords:
    """One iNaturalist split: per image its file name, id, category id (-1 = none) and 7-d meta."""

    file_names: list[str]
    image_ids: np.ndarray
    category_ids: np.ndarray
    spatiotemporal: np.ndarray

    def __len__(self) -> int:
        return len(self.file_names)

    def meta(self) -> dict[str, np.ndarray]:
        """The meta groups by name, as the model takes them."""
        return {SPATIOTEMPORAL: self.spatiotemporal}


def read_inaturalist(annotations: str | Path, locations: str | Path | None = None) -> InatRecords:
    """Read an iNaturalist JSON split (and the 2017/2018 locations file, if given) into per-image arrays.

    Images keep the file's order; categories are joined by ``image_id`` (iNat category ids are already
    0-based class indices). Location records are joined by image ``id`` and fill date / lat / lon.
    """
    data = _load_json(annotations)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise LongtailError(f"{annotations} is not an iNaturalist annotation file: it needs an 'images' list.")
    images = data["images"]
    category_of = {a.get("image_id"): a.get("category_id") for a in data.get("annotations") or []}
    location_of = _locations_by_id(locations) if locations is not None else {}
    records = [{**image, **location_of.get(image.get("id"), {})} for image in images]
    return InatRecords(
        file_names=[str(image.get("file_name", "")) for image in images],
        image_ids=np.array([_int_or(image.get("id"), -1) for image in images], dtype=np.int64),
        category_ids=np.array([_int_or(category_of.get(image.get("id")), -1) for image in images], dtype=np.int64),
        spatiotemporal=spatiotemporal_from_records(records),
    )


def _locations_by_id(path: str | Path) -> dict[Any, dict[str, Any]]:
    data = _load_json(path)
    if not isinstance(data, list):
        raise LongtailError(f"{path} is not an iNaturalist locations file: it must be a list of records with 'id'.")
    return {
        record["id"]: {k: v for k, v in record.items() if k in _SPATIOTEMPORAL_FIELDS}
        for record in data
        if isinstance(record, dict) and "id" in record
    }


def _int_or(value: Any, default: int) -> int:
    number = to_float(value)
    return default if math.isnan(number) else int(number)


def _load_json(path: str | Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as error:
        raise LongtailError(f"Meta file {path} does not exist.") from error
    except json.JSONDecodeError as error:
        raise LongtailError(f"Meta file {path} is not valid JSON: {error}.") from error


@dataclass
class MetaTable:
    """Meta groups (each (N, ...) float32) for images keyed by their (relative, '/'-separated) paths."""

    paths: list[str]
    groups: dict[str, np.ndarray]

    def align(self, paths: Sequence[str | Path], root: str | Path | None = None) -> dict[str, np.ndarray]:
        """The groups in the order of ``paths`` (made relative to ``root``); images not in the table get zeros."""
        row_of = {key: i for i, key in enumerate(self.paths)}
        keys = [_path_key(p, root) for p in paths]
        rows = np.array([row_of.get(key, -1) for key in keys], dtype=np.int64)
        found = rows >= 0
        if len(keys) and not found.any():
            raise LongtailError(
                f"None of the {len(keys)} images is in the meta file: dataset paths look like '{keys[0]}', "
                f"meta file paths like '{self.paths[0] if self.paths else ''}'. Key the file by paths relative "
                "to the dataset root, or pass that root."
            )
        if not found.all():
            warnings.warn(f"{int((~found).sum())} of {len(keys)} images have no meta entry; their meta is zero.")
        aligned = {}
        for name, values in self.groups.items():
            out = np.zeros((len(keys), *values.shape[1:]), dtype=np.float32)
            out[found] = values[rows[found]]
            aligned[name] = out
        return aligned


def read_meta_file(path: str | Path) -> MetaTable:
    """A meta side file keyed by image path: .csv, .json or .npz.

    * CSV: a header with a ``path`` column (or ``file_name`` / ``image``). Columns date, month, hour,
      latitude/lat, longitude/lon make the 'spatiotemporal' group; a column ``group:name`` goes to
      ``group``; any other column to 'attributes'. Empty or non-numeric cells are 0.
    * JSON: ``{path: record}`` or a list of records with ``path``; spatio-temporal fields as in CSV,
      every other key is a group whose value is a number or a (nested) list of numbers (keys that are
      never numeric, such as notes, are ignored).
    * NPZ: an array ``paths`` and one (N, ...) array per group.
    Values of the wrong shape, non-numbers, NaN and inf become zeros.
    """
    path = Path(path)
    readers = {".csv": _read_csv, ".json": _read_json, ".npz": _read_npz}
    if path.suffix.lower() not in readers:
        raise LongtailError(f"Meta file {path} must end in .csv, .json or .npz.")
    if not path.exists():
        raise LongtailError(f"Meta file {path} does not exist.")
    return readers[path.suffix.lower()](path)


def _read_csv(path: Path) -> MetaTable:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    path_column = next((c for c in PATH_COLUMNS if c in columns), None)
    if path_column is None:
        raise LongtailError(f"Meta file {path} needs a header with a 'path' column, got columns {columns}.")
    paths = [_normalise(row[path_column]) for row in rows]
    groups: dict[str, list[str]] = {}
    for column in columns:
        if column != path_column and column not in _SPATIOTEMPORAL_FIELDS:
            group = column.split(":", 1)[0] if ":" in column else DEFAULT_GROUP
            groups.setdefault(group, []).append(column)
    arrays = {
        name: np.nan_to_num(np.array([[to_float(row[c]) for c in cols] for row in rows], dtype=np.float64))
        .astype(np.float32)
        for name, cols in groups.items()
    }
    if _SPATIOTEMPORAL_FIELDS & set(columns):
        arrays[SPATIOTEMPORAL] = spatiotemporal_from_records(rows)
    return MetaTable(paths, arrays)


def _read_json(path: Path) -> MetaTable:
    data = _load_json(path)
    if isinstance(data, dict):
        items = [(key, record) for key, record in data.items()]
    elif isinstance(data, list):
        items = [(record.get("path"), record) for record in data if isinstance(record, dict)]
    else:
        raise LongtailError(f"Meta file {path} must hold a dict keyed by image path or a list of records.")
    if any(not isinstance(key, str) for key, _ in items):
        raise LongtailError(f"Every record of meta file {path} needs a 'path' string.")
    records = [record if isinstance(record, dict) else {} for _, record in items]
    group_names = sorted({k for r in records for k in r} - _SPATIOTEMPORAL_FIELDS - {"path"})
    groups = {name: _stack_values([r.get(name) for r in records]) for name in group_names}
    groups = {name: values for name, values in groups.items() if values is not None}
    if any(_SPATIOTEMPORAL_FIELDS & set(r) for r in records):
        groups[SPATIOTEMPORAL] = spatiotemporal_from_records(records)
    return MetaTable([_normalise(key) for key, _ in items], groups)


def _stack_values(values: list[Any]) -> np.ndarray | None:
    """Values of one group -> (N, *shape) float32, shape of the first readable value, bad ones 0; None if none."""
    arrays = [_as_array(v) for v in values]
    shape = next((a.shape for a in arrays if a is not None), None)
    if shape is None:
        return None
    out = np.zeros((len(values), *shape), dtype=np.float32)
    for i, array in enumerate(arrays):
        if array is not None and array.shape == shape:
            out[i] = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def _as_array(value: Any) -> np.ndarray | None:
    if value is None or isinstance(value, (str, dict, bool)):
        return None
    try:
        return np.atleast_1d(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        return None


def _read_npz(path: Path) -> MetaTable:
    with np.load(path, allow_pickle=False) as data:
        if "paths" not in data.files:
            raise LongtailError(f"Meta file {path} needs an array 'paths' beside the group arrays.")
        paths = [_normalise(str(p)) for p in data["paths"]]
        groups = {
            name: np.nan_to_num(data[name].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            for name in data.files
            if name != "paths"
        }
    wrong = [name for name, values in groups.items() if values.shape[0] != len(paths)]
    if wrong:
        raise LongtailError(f"Meta file {path}: arrays {wrong} need one row per path ({len(paths)}).")
    return MetaTable(paths, groups)


def _normalise(path: str) -> str:
    return Path(path.strip()).as_posix()


def _path_key(path: str | Path, root: str | Path | None) -> str:
    path = Path(path)
    if root is not None:
        try:
            path = path.relative_to(root)
        except ValueError:
            pass
    return path.as_posix()


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
