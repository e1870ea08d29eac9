"""Pack CIFAR-10-LT for a machine without ``../shared``: one archive (about 10 MB) of the images its IF 100
splits read, which unpacks into the layout the ``cifar10-lt`` dataset reads unchanged
(``cifar10-jpeg/{train,test}/<class>/NNNN.jpg``). ``benchmarks/gpu_sweep.py`` unpacks it on the GPU machine.

    python benchmarks/pack_gpu_data.py                  # ../shared/data -> .gpu/data.tar.gz, seed 0
    mkdir -p /tmp/pack && tar xzf .gpu/data.tar.gz -C /tmp/pack && LONGTAIL_DATA=/tmp/pack longtail train ...

The long-tailed selection shuffles each class among all 5,000 of its training images, and the validation split
is drawn from the images the profile leaves out, so both depend on the whole file list: the pack keeps every
file name. The files that some split of the packed seeds reads (``shuffle`` and ``first`` selections, the
validation sizes given) are copied byte for byte; every other training file holds one small grey JPEG. The test
set is copied whole. A seed that was not packed would train on grey images: ``cifar10-lt-pack.json`` in the
archive records what was packed, and the sweep checks it.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from longtail.data.containers import DecodedFileStore
from longtail.data.datasets import create_datasets
from longtail.data.shaping import SELECTIONS
from longtail.errors import LongtailError
from longtail.paths import PROJECT_ROOT, shared_data_root

MANIFEST = "cifar10-lt-pack.json"
TREE = "cifar10-jpeg"
PLACEHOLDER_GREY = 128


def placeholder_jpeg() -> bytes:
    """A flat grey 32x32 JPEG (about 160 bytes): decodes like any CIFAR file, carries no image."""
    buffer = io.BytesIO()
    Image.new("L", (32, 32), PLACEHOLDER_GREY).save(buffer, "JPEG", quality=50, optimize=True)
    return buffer.getvalue()


def _file_store(images: Any, source: Path) -> DecodedFileStore:
    store = images.store
    if not isinstance(store, DecodedFileStore):
        raise LongtailError(f"'{source}' holds CIFAR-10 as pickles; the pack copies the JPEG tree '{source / TREE}'.")
    return store


class _Archive:
    """A .tar.gz written member by member from bytes; counts the bytes it holds."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tar = tarfile.open(path, "w:gz")
        self.mtime = int(time.time())
        self.placeholder = placeholder_jpeg()
        self.bytes = 0

    def add(self, name: str, data: bytes) -> None:
        member = tarfile.TarInfo(name)
        member.size, member.mtime, member.mode = len(data), self.mtime, 0o644
        self.tar.addfile(member, io.BytesIO(data))
        self.bytes += len(data)

    def add_files(self, store: DecodedFileStore, folder: str, keep: set[int] | None = None) -> None:
        """Every file of ``store`` under ``folder``: those at ``keep`` (all by default) as they are, the others
        the placeholder."""
        for position, relative in enumerate(store.relative_paths):
            kept = keep is None or position in keep
            self.add(f"{folder}/{relative}", (store.root / relative).read_bytes() if kept else self.placeholder)


def pack(
    source: Path, archive: Path, imbalance: float = 100, seeds: Sequence[int] = (0,), val_per_class: Sequence[int] = (20,)
) -> dict[str, Any]:
    """Write the CIFAR-10-LT splits of ``seeds`` read from ``source`` (a data root holding ``cifar10-jpeg``) to
    ``archive``; return its manifest."""
    keep: set[int] = set()
    for selection in SELECTIONS:
        for seed in seeds:
            for per_class in val_per_class:
                splits = create_datasets(
                    "cifar10-lt", root=source, imbalance=imbalance, selection=selection, seed=seed,
                    val_per_class=per_class,
                )
                keep.update(splits.train.source_indices.tolist())
                if splits.val is not None:
                    keep.update(splits.val.source_indices.tolist())
    train, test = _file_store(splits.train, source), _file_store(splits.test, source)
    written = _Archive(archive)
    with written.tar:
        written.add_files(train, f"{TREE}/train", keep)
        written.add_files(test, f"{TREE}/test")
        manifest = {
            "dataset": "cifar10-lt",
            "imbalance": imbalance,
            "seeds": list(seeds),
            "selections": list(SELECTIONS),
            "val_per_class": list(val_per_class),
            "train_images": len(keep),
            "placeholders": len(train.relative_paths) - len(keep),
            "test_images": len(test.relative_paths),
            "bytes": written.bytes,
        }
        written.add(MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=shared_data_root(), help="data root holding cifar10-jpeg")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / ".gpu" / "data.tar.gz")
    parser.add_argument("--imbalance", type=float, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--val-per-class", type=int, nargs="+", default=[20], help="the recipes' data.val_per_class")
    args = parser.parse_args(argv)
    try:
        manifest = pack(args.source, args.out, args.imbalance, args.seeds, args.val_per_class)
    except LongtailError as error:
        raise SystemExit(f"error: {error}") from None
    print(
        f"{args.out}: {manifest['train_images']:,} training images of seeds {manifest['seeds']} "
        f"(+{manifest['placeholders']:,} placeholders) and {manifest['test_images']:,} test images; "
        f"{manifest['bytes'] / 2**20:.1f} MiB unpacked, {args.out.stat().st_size / 2**20:.1f} MiB packed"
    )


if __name__ == "__main__":
    main()
