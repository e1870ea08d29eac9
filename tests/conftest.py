"""Shared fixtures. Tests that need ../shared skip when it is absent, unless LONGTAIL_REQUIRE_SHARED=1
(set by .ci/run), which turns those skips into failures so CI always runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.paths import golden_root, shared_data_root

REQUIRE_SHARED = os.environ.get("LONGTAIL_REQUIRE_SHARED", "") not in ("", "0")


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        reason = f"{what} not found at {path} (set LONGTAIL_SHARED to the shared folder)"
        if REQUIRE_SHARED:
            pytest.fail(reason + "; LONGTAIL_REQUIRE_SHARED=1 forbids skipping")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real datasets)."""
    return _need(shared_data_root(), "shared data")


@pytest.fixture(scope="session")
def golden() -> Path:
    """``../shared/golden`` (numbers from the papers' official code)."""
    return _need(golden_root(), "golden fixtures")


@pytest.fixture(scope="session")
def load_golden(golden):
    """``load_golden('ride_K3_B16_C10')`` -> dict of numpy arrays."""

    def load(stem: str) -> dict[str, np.ndarray]:
        with np.load(_need(golden / f"{stem}.npz", f"golden fixture {stem}")) as data:
            return {k: data[k] for k in data.files}

    return load


@pytest.fixture(scope="session")
def golden_manifest(golden) -> dict:
    """``../shared/golden/manifest.json``: the parameters of every golden fixture, by stem."""
    return json.loads((golden / "manifest.json").read_text())


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def one_thread():
    """One torch thread: tiny models gain nothing from a second, and OpenMP threads spin badly on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_digits_run() -> list[str]:
    """Overrides that turn a digits recipe into a run of seconds: one epoch of 8x8 images, 2 validation
    images per class."""
    return [
        "schedule.epochs=1",
        "data.imbalance=100",
        "data.val_per_class=2",
        "data.batch_size=32",
        "data.args.image_size=8",
        "train.progress=false",
    ]
