"""What a model predicts over a split: every head a ``ModelOutput`` carries (``output_heads``), its per-image
numbers (``per_image_values``), and their collection batch by batch (``LogitCollector``) into ``Predictions``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from longtail.errors import LongtailError
from longtail.evaluation.metrics import TrainCounts, evaluate_heads

if TYPE_CHECKING:  # for annotations only: importing longtail.models loads every model (and timm)
    from longtail.models.output import ModelOutput

PER_IMAGE_SUFFIX = "_per_image"


@dataclass
class Predictions:
    """One pass over a split: every head's logits (N, C), the targets (N,) and every per-image number (N,)
    the method reported as ``output.aux['<name>_per_image']``."""

    heads: dict[str, torch.Tensor]
    targets: torch.Tensor
    per_image: dict[str, torch.Tensor]

    def map(self, rows: Callable[[torch.Tensor], torch.Tensor]) -> Predictions:
        """``rows`` applied to every tensor: the heads, then the targets, then the per-image numbers."""
        return Predictions(
            heads={name: rows(logits) for name, logits in self.heads.items()},
            targets=rows(self.targets),
            per_image={name: rows(values) for name, values in self.per_image.items()},
        )


def output_heads(output: ModelOutput) -> dict[str, torch.Tensor]:
    """Every prediction a ModelOutput carries: ``main`` (``output.logits``), ``expert_<k>`` for each expert, and
    ``<name>`` for each (B, C) entry ``<name>_logits`` of ``output.aux`` (DeiT's ``cls`` and ``dist``)."""
    heads = {"main": output.logits}
    if output.expert_logits is not None:
        heads.update({f"expert_{k}": logits for k, logits in enumerate(output.expert_logits)})
    for key, value in output.aux.items():
        if key.endswith("_logits") and value.shape == output.logits.shape:
            heads[key.removesuffix("_logits")] = value
    return heads


def per_image_values(output: ModelOutput) -> dict[str, torch.Tensor]:
    """``<name>`` -> the (B,) tensor ``output.aux['<name>_per_image']``, for every such entry."""
    batch = output.logits.shape[0]
    return {
        key.removesuffix(PER_IMAGE_SUFFIX): value
        for key, value in output.aux.items()
        if key.endswith(PER_IMAGE_SUFFIX) and isinstance(value, torch.Tensor) and value.shape == (batch,)
    }


class LogitCollector:
    """Gathers every head's logits (float32), every per-image number, the targets and, where given, the dataset
    indices of an evaluation pass, batch by batch (kept on the model's device, in the order added)."""

    def __init__(self) -> None:
        self._heads: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._per_image: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._targets: list[torch.Tensor] = []
        self._indices: list[torch.Tensor] = []

    def add(self, output: ModelOutput, targets: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """One batch: the model's ``output``, its ``targets`` (B,) and its dataset ``indices`` (B,)."""
        for name, logits in output_heads(output).items():
            self._heads[name].append(logits.detach().float())
        for name, values in per_image_values(output).items():
            self._per_image[name].append(values.detach().float())
        self._targets.append(targets.detach())
        if indices is not None:
            self._indices.append(indices)

    def predictions(self) -> Predictions:
        """Everything collected, the batches concatenated in the order they were added."""
        return Predictions(
            heads={name: torch.cat(chunks) for name, chunks in self._heads.items()},
            targets=torch.cat(self._targets),
            per_image={name: torch.cat(chunks) for name, chunks in self._per_image.items()},
        )

    def indices(self) -> torch.Tensor:
        """The dataset indices given with the batches, concatenated."""
        return torch.cat(self._indices)

    def evaluate(
        self, train_counts: TrainCounts, many: float | None = None, few: float | None = None
    ) -> dict[str, dict[str, Any]]:
        """``evaluate_heads`` of everything collected."""
        if not self._targets:
            raise LongtailError("No predictions were collected: the evaluation set is empty.")
        found = self.predictions()
        return evaluate_heads(found.heads, found.targets, train_counts, many, few)
