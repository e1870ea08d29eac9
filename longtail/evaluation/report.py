"""Evaluation reports: ``results.json`` (written atomically) and the All / Many / Medium / Few text table."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Arrays larger than this (a confusion matrix of more than 100 classes) go to a .npy file beside results.json.
MAX_INLINE_VALUES = 10_000
SIDECAR_KEY = "npy"
SHOTS = ("many", "medium", "few")


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename makes it the file, so a power cut cannot leave half
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _to_json(value: Any, path: Path, key: str) -> Any:
    """JSON-compatible copy of ``value``: arrays to lists (large ones to .npy sidecars), NaN/inf to None."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.size > MAX_INLINE_VALUES:
        sidecar = path.with_name(f"{path.stem}.{key}.npy")
        atomic_write(sidecar, lambda file: np.save(file, value), mode="wb")
        return {SIDECAR_KEY: sidecar.name}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _to_json(v, path, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, path, key) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"Cannot write {type(value).__name__} at '{key}' to JSON.")


def write_results(
    path: str | os.PathLike, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``{**extra, "metrics": metrics}`` to ``path`` (e.g. run_dir/results.json) atomically.

    numpy arrays and tensors become lists; NaN becomes null; arrays with more than 10,000 values are saved as
    ``<stem>.<key>.npy`` beside the file and referenced as ``{"npy": name}`` (``read_results`` loads them back).
    """
    path = Path(path)
    extra = dict(extra or {})
    if "metrics" in extra:
        raise ValueError("extra must not contain the key 'metrics'")
    payload = _to_json({**extra, "metrics": metrics}, path, "")
    atomic_write(path, lambda file: json.dump(payload, file, indent=2, allow_nan=False))
    return path


def _load_sidecars(value: Any, folder: Path) -> Any:
    if isinstance(value, dict):
        if set(value) == {SIDECAR_KEY}:
            return np.load(folder / value[SIDECAR_KEY])
        return {k: _load_sidecars(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_load_sidecars(v, folder) for v in value]
    return value


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """The dictionary written by ``write_results``, with .npy sidecars loaded as numpy arrays."""
    path = Path(path)
    return _load_sidecars(json.loads(path.read_text()), path.parent)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}"


def _aligned(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join([row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])])
        for row in table
    ]
    return "\n".join(line.rstrip() for line in lines)


def format_shot_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """The All / Many / Medium / Few top-1 table (in %) of ``rows``: name -> metrics from ``evaluate``.

    The header gives the number of classes of each group, taken from the first row.
    """
    if not rows:
        return ""
    sizes = next(iter(rows.values())).get("shot_sizes", {})
    header = ["", "All"] + [f"{shot.capitalize()} ({sizes.get(shot, '?')})" for shot in SHOTS]
    body = [[name, *(_percent(metrics[key]) for key in ("top1", *SHOTS))] for name, metrics in rows.items()]
    return _aligned([header, *body])
