"""The CIFAR-10-LT pack for the GPU machine (benchmarks/pack_gpu_data.py): unpacked and read through the
library's ``cifar10-lt`` dataset, it gives the same splits and images as ``../shared/data`` for the packed seed."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.data.containers import DatasetInfo
from longtail.data.datasets import create_datasets

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "pack_gpu_data.py"
spec = importlib.util.spec_from_file_location("pack_gpu_data", SCRIPT)
pack_gpu_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pack_gpu_data)

pytestmark = [pytest.mark.shared, pytest.mark.slow]
SAMPLE = 300


def described(info: DatasetInfo) -> tuple:
    return info.class_names, info.train_counts, info.mean, info.std, info.shot_thresholds


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """On a RAM file system where there is one: creating and deleting 60,000 small files is slow on some disks."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="longtail-pack-", dir=shm if shm.is_dir() else None))
    yield folder
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def pack(shared_data: Path, scratch: Path) -> Path:
    """The pack as the GPU machine sees it: the archive, unpacked as benchmarks/gpu_sweep.py unpacks it."""
    archive, unpacked = scratch / "data.tar.gz", scratch / "data"
    pack_gpu_data.pack(shared_data, archive, imbalance=100, seeds=[0], val_per_class=[20])
    unpacked.mkdir()
    subprocess.run(["tar", "xzf", str(archive), "-C", str(unpacked)], check=True)
    return unpacked


def test_the_manifest_counts_what_was_packed(pack: Path, scratch: Path) -> None:
    assert (scratch / "data.tar.gz").stat().st_size < 16 * 2**20
    manifest = json.loads((pack / pack_gpu_data.MANIFEST).read_text())
    assert manifest["seeds"] == [0] and manifest["selections"] == ["shuffle", "first"]
    assert manifest["train_images"] + manifest["placeholders"] == 50_000 and manifest["test_images"] == 10_000
    assert 12_406 < manifest["train_images"] < 25_000
    assert manifest["bytes"] < 40 * 2**20


@pytest.mark.parametrize("selection", ["shuffle", "first"])
def test_the_pack_gives_the_shared_splits_and_images(
    pack: Path, scratch: Path, shared_data: Path, selection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(imbalance=100, selection=selection, seed=0, val_per_class=20)
    shared = create_datasets("cifar10-lt", root=shared_data, **options)
    packed = create_datasets("cifar10-lt", root=pack, **options)
    assert len(shared.train) == 12_386 and len(shared.val) == 200  # 12,406 less the head class's 20
    assert described(packed.info) == described(shared.info)
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        ours, theirs = getattr(packed, split), getattr(shared, split)
        np.testing.assert_array_equal(ours.targets, theirs.targets)
        np.testing.assert_array_equal(ours.source_indices, theirs.source_indices)
        sample = rng.choice(len(theirs), size=min(SAMPLE, len(theirs)), replace=False)
        expected = theirs.images[sample]
        with monkeypatch.context() as patch:
            patch.setenv("LONGTAIL_CACHE", str(scratch / "cache"))  # the decoded pack: not worth keeping
            assert torch.equal(ours.images[sample], expected), split


def test_only_the_files_a_split_reads_hold_images(pack: Path, shared_data: Path) -> None:
    truck, per_class = 9, 5_000  # the rarest class: 50 training images per selection
    read = set()
    for selection in ("shuffle", "first"):
        splits = create_datasets(
            "cifar10-lt", root=shared_data, imbalance=100, selection=selection, seed=0, val_per_class=20
        )
        for split in (splits.train, splits.val):
            read |= set(split.source_indices[split.targets == truck].tolist())
    placeholder = pack_gpu_data.placeholder_jpeg()
    files = sorted((pack / pack_gpu_data.TREE / "train" / "truck").iterdir())
    assert len(files) == per_class
    holding_images = {truck * per_class + i for i, path in enumerate(files) if path.read_bytes() != placeholder}
    assert holding_images == read and len(read) <= 2 * (50 + 20)
