"""On-disk cache of decoded image arrays, so that a dataset is decoded once per machine.

Location: ``$LONGTAIL_CACHE``, else ``~/.cache/longtail``. Entries are ``.npy`` files named by a hash of
what produced them (source path, file sizes and times, decode parameters); a changed source gets a new
entry. Writes go to a temporary file in the same folder, renamed into place (atomic), so concurrent runs
never read a half-written entry. A cache folder that cannot be written only costs the speed-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def cache_root() -> Path:
    return Path(os.environ.get("LONGTAIL_CACHE", Path.home() / ".cache" / "longtail")).expanduser()


def cache_key(parts: Any) -> str:
    """A short stable hash of JSON-serialisable ``parts``."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cached_array(kind: str, parts: Any, build: Callable[[], np.ndarray]) -> np.ndarray:
    """The array cached under (``kind``, ``parts``), built with ``build()`` and stored on a miss.

    Hits are memory-mapped read-only: index them (which copies) before writing.
    """
    path = cache_root() / f"{kind}-{cache_key(parts)}.npy"
    if path.exists():
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged entry: rebuild it
    array = build()
    _store(path, array)
    return array


def _store(path: Path, array: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False) as f:
            temporary = Path(f.name)
            np.save(f, array)
        os.chmod(temporary, 0o644)  # readable like any cache file (temporary files are created 0600)
        os.replace(temporary, path)
    except OSError as error:
        warnings.warn(f"longtail: could not write the data cache {path} ({error}); set LONGTAIL_CACHE", stacklevel=3)
        if "temporary" in locals():
            temporary.unlink(missing_ok=True)
