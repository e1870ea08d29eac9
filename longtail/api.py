"""The Python API: resolve a recipe and train it, load a trained run, build its datasets, evaluate it and
predict with it.

Everything here is exported from ``longtail``::

    import longtail

    config = longtail.load_config("digits-ce", ["budget=10"])  # a recipe name or YAML file, and overrides
    summary = longtail.train(config, "runs/digits-ce")           # the summary `longtail train` prints from
    run = longtail.load_run("runs/digits-ride/20250101-120000")  # a run directory or a .pt checkpoint
    results = longtail.evaluate_run(run, split="test")            # every head's metrics
    print(results["main"]["top1"], results["main"]["few"])
    for prediction in longtail.predict(run, ["digit.png"]):
        print(prediction.label, prediction.top)

``longtail.evaluation.evaluate(logits, targets, info)`` scores logits computed elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from longtail.config import RunConfig
from longtail.data import DatasetSplits, create_datasets
from longtail.data.loaders import load_image
from longtail.distributed import DistContext
from longtail.engine import trainer
from longtail.errors import LongtailError
from longtail.evaluation.evaluator import Evaluator
from longtail.methods.context import create_datasets_for
from longtail.methods.recipes import resolve
from longtail.methods.runs import TrainedModel, load_trained_model

SPLITS = ("train", "val", "test")
ImageInput = str | Path | Image.Image


@dataclass(frozen=True)
class Prediction:
    """One image's class probabilities (C,) and its ``top`` classes as (name, probability), best first."""

    probabilities: torch.Tensor
    top: list[tuple[str, float]]

    @property
    def label(self) -> str:
        """The name of the most probable class."""
        return self.top[0][0]


def load_config(recipe: str, overrides: Sequence[str] = ()) -> RunConfig:
    """The run settings of ``recipe`` (a shipped recipe's name, or a YAML file) with ``key=value`` overrides
    (``budget=E`` compresses the schedule), every option checked against what it configures."""
    return resolve(recipe, list(overrides))


def train(config: RunConfig, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` as ``longtail train`` does (an unfinished run there is resumed when
    ``resume``) and return its summary: the last and best epochs' metrics of every head."""
    return trainer.train(config, run_dir, resume=resume)


def load_run(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """The model of a run directory (its last weights, ``checkpoint.pt``) or of a checkpoint file such as
    ``RUN/best.pt``, in eval mode, with its method, config and ``DatasetInfo`` (``.info``)."""
    return load_trained_model(Path(path), device)


def run_datasets(run: TrainedModel) -> DatasetSplits:
    """The train / val / test splits the run was trained and evaluated on (its ``data`` settings; the data
    is read from the run's ``data.root``, else ``$LONGTAIL_DATA``)."""
    return create_datasets_for(run.config)


def evaluate_run(run: TrainedModel, split: str = "test", dataset: Any = None) -> dict[str, dict[str, Any]]:
    """Metrics of every head of ``run`` (``main`` first; RIDE's experts, DeiT-LT's ``cls`` / ``dist``, the
    post-hoc corrections of the run's ``eval`` settings) on ``dataset``, by default the run's own ``split``.
    Each head's metrics are those of ``longtail.evaluation.evaluate`` with the dataset's shot thresholds."""
    if dataset is None:
        dataset = _split(run, split)
    device = next(run.model.parameters()).device
    return Evaluator(run.config, run.method, run.info, device, DistContext()).evaluate(run.model, dataset)


def predict(run: TrainedModel, images: Sequence[ImageInput] | torch.Tensor, top: int = 5) -> list[Prediction]:
    """The class probabilities of image files or PIL images (preprocessed as the run's evaluation images), or
    of a preprocessed float batch (N, 3, S, S); each with its ``top`` classes."""
    if top < 1:
        raise LongtailError(f"top must be at least 1, got {top}.")
    batch = images if isinstance(images, torch.Tensor) else torch.stack([load_image(i, run.info) for i in images])
    device = next(run.model.parameters()).device
    with torch.no_grad():
        logits = run.method.predict(run.model, batch.to(device)).logits
    probabilities = logits.float().softmax(dim=1).cpu()
    best = probabilities.topk(min(top, run.info.num_classes), dim=1)
    names = run.info.class_names
    return [
        Prediction(row, [(names[c], p) for c, p in zip(classes.tolist(), values.tolist())])
        for row, values, classes in zip(probabilities, best.values, best.indices)
    ]


def _split(run: TrainedModel, split: str) -> Any:
    if split not in SPLITS:
        raise LongtailError(f"Unknown split '{split}'; choose one of {', '.join(SPLITS)}.")
    dataset = getattr(run_datasets(run), split)
    if dataset is None:
        raise LongtailError(f"{run.config.data.name} has no {split} split in this run's settings; use 'test'.")
    return dataset


__all__ = [
    "Prediction",
    "create_datasets",
    "evaluate_run",
    "load_config",
    "load_run",
    "predict",
    "run_datasets",
    "train",
]
