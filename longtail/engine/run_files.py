"""The files a run writes in its folder, and how to remove exactly those: ``--force`` and a failed start clear a
run's own outputs and leave everything else in the folder (notes, data, other tools' files) where it was."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from longtail.methods.runs import BEST, CHECKPOINT, SUMMARY

CONFIG = "config.yaml"
LOG = "log.jsonl"
CLUSTERING = "clustering.json"  # written by `longtail cluster`
TENSORBOARD_DIR = "tensorboard"
REPORT_DIR = "report"

# Glob patterns, relative to the run folder; ``.*.tmp`` are the temporary files of atomic writes.
RUN_OUTPUTS = (
    CONFIG,
    CHECKPOINT,
    BEST,
    LOG,
    SUMMARY,
    CLUSTERING,
    ".*.tmp",
    f"{TENSORBOARD_DIR}/events.out.tfevents.*",
    f"{REPORT_DIR}/*/results.json",
    f"{REPORT_DIR}/*/*.npy",
    f"{REPORT_DIR}/*/per_class.png",
    f"{REPORT_DIR}/*/.*.tmp",
)


def run_outputs(run_dir: Path) -> list[Path]:
    """The files in ``run_dir`` that a run wrote."""
    return sorted({path for pattern in RUN_OUTPUTS for path in run_dir.glob(pattern) if path.is_file()})


def remove_run_outputs(run_dir: Path) -> None:
    """Delete the run's files and the sub-folders they leave empty; keep every other file and folder."""
    _remove(run_dir, run_outputs(run_dir))


class FailedStartCleanup:
    """Notes what a run folder holds before a start, so that a start failing before its first checkpoint can
    remove what it added: the run files it wrote and the folders it created, where they are left empty."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.created_from = _first_missing_folder(run_dir)
        self.existing = set(run_outputs(run_dir))

    def undo(self) -> None:
        if not self.run_dir.is_dir() or (self.run_dir / CHECKPOINT).is_file():
            return
        _remove(self.run_dir, set(run_outputs(self.run_dir)) - self.existing)
        if self.created_from is None:
            return
        for folder in (self.run_dir, *self.run_dir.parents):
            if any(folder.iterdir()):
                return
            folder.rmdir()
            if folder == self.created_from:
                return


def _remove(run_dir: Path, files: Iterable[Path]) -> None:
    """Delete ``files``, then the sub-folders of ``run_dir`` that held them where they are left empty."""
    folders = set()
    for path in files:
        path.unlink()
        folders.add(path.parent)
    for folder in sorted(folders, key=lambda folder: len(folder.parts), reverse=True):
        while folder != run_dir and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def _first_missing_folder(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet: what making it creates."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing
