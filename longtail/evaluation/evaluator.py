"""A run's evaluation, for the trainer, the CLI and the API: every head's logits over a split (sharded under
DDP), post-hoc corrections, metrics of every head, the summary and table, results.json and the per-class plot.

The method is a duck type (``PredictingMethod``): the evaluator calls its ``predict`` and ``extra_metrics``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from longtail.config import RunConfig
from longtail.data import create_loader
from longtail.distributed import DistContext, all_gather_rows
from longtail.evaluation.metrics import evaluate_heads
from longtail.evaluation.plot import plot_per_class_accuracy
from longtail.evaluation.posthoc import posthoc_iif, posthoc_logit_adjust
from longtail.evaluation.predictions import LogitCollector, Predictions
from longtail.evaluation.report import format_shot_table, write_results
from longtail.models.base import eval_mode
from longtail.models.heads import tau_normalized
from longtail.models.output import ModelOutput
from longtail.precision import PRECISIONS, effective_precision

SUMMARY_KEYS = ("top1", "top5", "many", "medium", "few")
OPTIONAL_SUMMARY_KEYS = ("head", "mid", "tail")  # DeiT-LT's rank groups, from ``Method.extra_metrics``
PER_IMAGE_KEYS = "per_image_keys"  # names of the main head's per-image averages, e.g. ['experts', 'gmacs']


class PredictingMethod(Protocol):
    """What the evaluator needs of a method (``longtail.methods.base.Method`` has it)."""

    def predict(
        self, model: nn.Module, images: torch.Tensor, meta: dict[str, torch.Tensor] | None = None
    ) -> ModelOutput: ...

    def extra_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]: ...


class Evaluator:
    """Predicts with ``method.predict`` over a dataset in file order and scores every head.

    Heads are ``main`` (``output.logits``), ``expert_<k>``, ``<name>`` for ``output.aux['<name>_logits']``
    (``no_meta`` for a model given meta-information), and the post-hoc corrections asked for in
    ``config.eval``: ``tau_norm``, ``logit_adjusted`` and ``iif``. Each head's metrics include the method's
    ``extra_metrics``. Every (B,) entry ``aux['<name>_per_image']`` (RIDE's ``experts_per_image``,
    ``gmacs_per_image``) is averaged over the split into the main head's metrics as ``<name>``.
    """

    def __init__(
        self, config: RunConfig, method: PredictingMethod, info: Any, device: torch.device, context: DistContext
    ) -> None:
        self.config = config
        self.method = method
        self.info = info
        self.device = device
        self.context = context
        self.dtype = PRECISIONS[effective_precision(config.train.precision, device)]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def loader(self, dataset: Any) -> Any:
        data = self.config.data
        return create_loader(
            dataset,
            batch_size=data.eval_batch_size,
            train=False,
            augment="none",
            device=self.device,
            rank=self.context.rank,
            world_size=self.context.world_size,
            num_workers=data.num_workers,
            channels_last=self.config.train.channels_last,
        )

    def predictions(self, model: nn.Module, dataset: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every head's logits (N, C) on the CPU and the targets (N,), in dataset order."""
        found = self.collect(model, dataset)
        return found.heads, found.targets

    @torch.no_grad()
    def collect(self, model: nn.Module, dataset: Any) -> Predictions:
        """The heads, targets and per-image numbers of ``model`` on ``dataset``, on the CPU, in dataset order.

        Under DDP each process predicts its shard; the rows are gathered and put back in dataset order by
        ``batch.indices``.
        """
        collector = LogitCollector()
        with eval_mode(model):
            for batch in self.loader(dataset):
                with self.autocast():
                    if batch.meta:
                        output = self.method.predict(model, batch.images, batch.meta)
                    else:
                        output = self.method.predict(model, batch.images)
                collector.add(output, batch.targets, batch.indices)
        order = self._gather(collector.indices())
        size = len(dataset)
        return collector.predictions().map(lambda rows: _in_order(self._gather(rows), order, size))

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        return all_gather_rows(rows, self.context).cpu()

    def evaluate(self, model: nn.Module, dataset: Any) -> dict[str, dict[str, Any]]:
        """Metrics of every head of ``model`` on ``dataset``, ``main`` first; the main head's include the
        split's average of every per-image number (and their names under ``PER_IMAGE_KEYS``)."""
        found = self.collect(model, dataset)
        heads = {**found.heads, **self._posthoc(model, dataset, found.heads["main"])}
        many, few = self.info.shot_thresholds
        results = evaluate_heads(heads, found.targets, self.info.train_counts, many=many, few=few)
        results = {name: {**metrics, **self.method.extra_metrics(metrics)} for name, metrics in results.items()}
        if found.per_image:
            averages = {name: values.mean().item() for name, values in found.per_image.items()}
            results["main"].update(averages, **{PER_IMAGE_KEYS: sorted(averages)})
        return results

    def _posthoc(self, model: nn.Module, dataset: Any, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        settings = self.config.eval
        variants: dict[str, torch.Tensor] = {}
        if settings.tau_norm is not None:
            variants["tau_norm"] = self.predictions(tau_normalized(model, settings.tau_norm), dataset)[0]["main"]
        if settings.logit_adjust_tau is not None:
            variants["logit_adjusted"] = posthoc_logit_adjust(logits, self.info.train_counts, settings.logit_adjust_tau)
        if settings.iif:
            variants["iif"] = posthoc_iif(logits, self.info.train_counts)
        return variants


def per_image_averages(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The per-image averages among one head's metrics (only the main head has them)."""
    return {name: metrics[name] for name in metrics.get(PER_IMAGE_KEYS, ())}


def _in_order(rows: torch.Tensor, order: torch.Tensor, size: int) -> torch.Tensor:
    out = rows.new_zeros((size, *rows.shape[1:]))
    out[order] = rows
    return out


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The headline numbers of every head (for summary.json), with the main head's per-image averages."""
    return {
        head: {
            **{key: metrics[key] for key in SUMMARY_KEYS + OPTIONAL_SUMMARY_KEYS if key in metrics},
            **per_image_averages(metrics),
        }
        for head, metrics in results.items()
    }


def table_rows(prefix: str, results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows of the All / Many / Medium / Few table: the main head as ``prefix``, the others after it."""
    return {(prefix if head == "main" else f"{prefix} {head}"): metrics for head, metrics in results.items()}


def format_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """The All / Many / Medium / Few table of ``rows`` (``format_shot_table``), with a column for each
    per-image average any row has ('-' where a row has none)."""
    table = format_shot_table(rows)
    averages = [per_image_averages(metrics) for metrics in rows.values()]
    names = sorted({name for row in averages for name in row})
    if not names:
        return table
    cells = [names, *([f"{row[name]:.4g}" if name in row else "-" for name in names] for row in averages)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(names))]
    lines = table.splitlines()
    width = max(len(line) for line in lines)
    return "\n".join(
        "  ".join([line.ljust(width), *(cell.rjust(w) for cell, w in zip(extra, widths))])
        for line, extra in zip(lines, cells, strict=True)
    )


def write_split_report(folder: Path, results: dict[str, dict[str, Any]], info: Any, extra: dict[str, Any]) -> Path:
    """``folder/results.json`` (the main head's metrics, the other heads under ``heads``) and
    ``folder/per_class.png``; returns the plot's path."""
    main = results["main"]
    others = {name: metrics for name, metrics in results.items() if name != "main"}
    write_results(folder / "results.json", main, {**extra, "heads": others})
    many, few = info.shot_thresholds
    title = f"{info.name}: {extra['weights']} weights, {extra['split']} split"
    return plot_per_class_accuracy(folder / "per_class.png", main["per_class"], info.train_counts, many, few, title)
