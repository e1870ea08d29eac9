"""Where the project's shared, read-only data lives (real datasets, golden fixtures)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_root() -> Path:
    """``$LONGTAIL_SHARED``, by default ``../shared`` beside the project checkout."""
    return Path(os.environ.get("LONGTAIL_SHARED", PROJECT_ROOT.parent / "shared")).expanduser()


def shared_data_root() -> Path:
    return shared_root() / "data"


def golden_root() -> Path:
    return shared_root() / "golden"
