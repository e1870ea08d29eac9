"""The Method interface: how a paper plugs into the one trainer (``longtail.engine.trainer``).

A method is a model + a loss + a list of stages + a training step. The base class is plain empirical risk
minimisation (registered as ``erm`` in ``longtail.methods.baselines``); a paper subclasses it, overrides
only what differs, and registers it by name with ``@register_method('name')``. A recipe names its method in
``method.name``; ``method.args`` are the keyword arguments of the subclass's ``__init__``.

Options and epochs: when a recipe resolves (``longtail.methods.recipes.resolve``), every key of ``method.args``,
``model.args``, ``loss.args`` (and a stage's), ``model.activation_options``, ``data.args`` and of sampler and
augmentation mappings is checked against the signature of the factory it goes to, so a misspelt option fails
before training. An option that counts epochs must be declared in the class attribute ``epoch_args`` of the
method, loss or model class that takes it (``epoch_args = ("drw_epoch",)``): ``budget=E`` scales exactly the
declared options with the schedule and leaves every other one as it is, whatever its name.

What the trainer calls, in order:

1. ``Method(config, info, **method.args)``, ``build_model()``, then ``setup(context)`` once with the run's
   ``RunContext`` (``longtail.methods.context``: config, device, rank and process count, the dataset splits,
   ``training_features(network)``), kept as ``self.context``; a method overrides it to load a teacher (calling
   ``super().setup(context)``). ``load_trained_model`` attaches a context for evaluation without ``setup``.
2. For each stage of ``stages()``: ``prepare_stage(stage, model)`` (re-initialise heads, add modules: it is
   replayed for every earlier stage when a run is resumed or a checkpoint is loaded, so what it adds to the
   model must depend only on the stage), ``trainable_parameters(stage, model)`` (everything else is frozen
   and put in eval mode), ``param_groups(stage, model, params)``, ``build_loss(stage.loss)``.
3. Before each epoch: ``start_epoch(model, criterion, epoch)`` (0-based within the stage); by default it gives
   the epoch to the loss (DRW) and to the model (``Network.set_epoch``, e.g. MetaFG's meta masking).
4. Every step: ``training_step(model, batch, criterion, step) -> (loss, output)``; ``step`` is a ``StepInfo``
   (the 0-based epoch within the stage, the optimiser step within the epoch, their counts, the progress
   through the stage), ``model`` may be wrapped by DDP / torch.compile (use ``unwrap(model)`` to reach
   attributes such as ``head_modules()``), the call runs under autocast.
5. Evaluation: ``predict(model, images[, meta]) -> ModelOutput`` (no grad, eval mode; ``meta`` only when the
   batch has meta-information). Reports score
   ``output.logits`` and, beside it, every expert of ``output.expert_logits`` and every (B, C) entry
   ``aux['<name>_logits']`` (``longtail.evaluation.metrics.output_heads``), e.g. DeiT's CLS and DIST heads.
   ``extra_metrics(metrics)`` adds method-specific numbers to each head's metrics (e.g. DeiT-LT's
   Head / Mid / Tail accuracies). Every (B,) entry ``aux['<name>_per_image']`` (RIDE's ``experts_per_image``)
   is averaged over the split and reported beside the main head's metrics as ``<name>``.
6. Selection: after each epoch, ``selection_score(record)`` of the epoch's log record (train loss and its
   parts as ``loss_<part>``, validation metrics as ``val_<metric>`` when validated) chooses ``best.pt``
   within the last stage, higher is better; None (the default) selects by validation top-1.

Models whose ``forward`` takes ``meta`` (MetaFG) get ``meta=batch.meta`` in the default ``training_step``
and ``predict``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import longtail.losses
import longtail.models
from longtail.config import LossConfig, OptimConfig, RunConfig, ScheduleConfig, stage_optim, stage_schedule
from longtail.errors import LongtailError, unknown_name_error
from longtail.methods.context import RunContext, StepInfo
from longtail.models.base import unwrap
from longtail.models.output import ModelOutput
from longtail.registry import Registry

METHODS = Registry("method", reserved=("config", "info"))
register_method = METHODS.register

PARAMETER_SELECTORS = ("all", "head")


@dataclass
class Stage:
    """One training stage, fully resolved: what to train, on what sampler, with which optimiser and loss.

    ``trainable`` names a parameter selector of the method ('all', 'head', or one a method adds in
    ``trainable_parameters``); ``reinit_head`` re-initialises the head(s) as a new model would before the
    stage (cRT, SHIKE's second stage).
    """

    name: str
    epochs: int
    optim: OptimConfig
    schedule: ScheduleConfig
    loss: LossConfig
    sampler: str | dict[str, Any]  # a sampler name, or a mapping of name and options
    batch_size: int
    trainable: str = "all"
    reinit_head: bool = False


class Method:
    """Empirical risk minimisation: ``loss(model(images), targets)`` with the recipe's model and loss."""

    selection_name = "selection_score"  # the summary's ``best_metric_name`` when ``selection_score`` is used
    epoch_args: tuple[str, ...] = ()  # the ``method.args`` that count epochs, which budget=E scales

    def __init__(self, config: RunConfig, info: Any) -> None:
        self.config = config
        self.info = info
        self._context: RunContext | None = None

    @property
    def context(self) -> RunContext:
        """The run this method takes part in (``setup``, or ``attach`` for evaluation)."""
        if self._context is None:
            raise LongtailError(
                f"Method '{self.config.method.name}' has no run context yet: the trainer gives it one in setup(), "
                "load_trained_model() for evaluation; call method.attach(RunContext(config, device)) first."
            )
        return self._context

    def attach(self, context: RunContext) -> None:
        """Give the method its run context without training set-up (evaluation of a saved run)."""
        self._context = context

    def build_model(self) -> nn.Module:
        model = self.config.model
        return longtail.models.create(
            model.name,
            num_classes=self.info.num_classes,
            activation=model.activation,
            activation_options=model.activation_options,
            **model.args,
        )

    def build_loss(self, loss: LossConfig) -> nn.Module:
        return longtail.losses.create(loss.name, class_counts=self.info.train_counts, **loss.args)

    def stages(self) -> list[Stage]:
        """The main stage (the run's schedule) followed by the recipe's ``stages``."""
        config = self.config
        main = Stage(
            name="train",
            epochs=config.schedule.epochs,
            optim=config.optim,
            schedule=config.schedule,
            loss=config.loss,
            sampler=config.data.sampler,
            batch_size=config.data.batch_size,
        )
        extra = [
            Stage(
                name=stage.name,
                epochs=stage.epochs,
                optim=stage_optim(config, index),
                schedule=stage_schedule(config, index),
                loss=stage.loss or config.loss,
                sampler=stage.sampler or config.data.sampler,
                batch_size=stage.batch_size or config.data.batch_size,
                trainable=stage.trainable,
                reinit_head=stage.reinit_head,
            )
            for index, stage in enumerate(config.stages)
        ]
        return [main, *extra]

    def setup(self, context: RunContext) -> None:
        """Once, after the model is built: keep the run context; an override loads what the method needs
        besides the model (e.g. a teacher) after calling this."""
        self.attach(context)

    def prepare_stage(self, stage: Stage, model: nn.Module) -> None:
        if stage.reinit_head:
            reinitialize_heads(model, self.build_model())

    def trainable_parameters(self, stage: Stage, model: nn.Module) -> list[nn.Parameter]:
        if stage.trainable == "all":
            return list(model.parameters())
        if stage.trainable == "head":
            return [p for head in model.head_modules() for p in head.parameters()]
        raise unknown_name_error("parameter selector", stage.trainable, PARAMETER_SELECTORS)

    def param_groups(self, stage: Stage, model: nn.Module, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        """Optimiser groups; parameters outside ``model.head_modules()`` get ``optim.backbone_lr_scale``."""
        if stage.optim.backbone_lr_scale == 1.0:
            return [{"params": params}]
        head_ids = {id(p) for head in model.head_modules() for p in head.parameters()}
        head = [p for p in params if id(p) in head_ids]
        backbone = [p for p in params if id(p) not in head_ids]
        groups = [{"params": head}, {"params": backbone, "lr_scale": stage.optim.backbone_lr_scale}]
        return [group for group in groups if group["params"]]

    def start_epoch(self, model: nn.Module, criterion: nn.Module, epoch: int) -> None:
        """Before each epoch of a stage (0-based within it): the loss's deferred re-weighting and the model's
        schedule (``Network.set_epoch``) follow the epoch."""
        criterion.set_epoch(epoch)
        unwrap(model).set_epoch(epoch)

    def training_step(
        self, model: nn.Module, batch: Any, criterion: nn.Module, step: StepInfo
    ) -> tuple[torch.Tensor, ModelOutput]:
        output = self.forward(model, batch.images, batch.meta)
        return criterion(output, batch.targets), output

    def predict(
        self, model: nn.Module, images: torch.Tensor, meta: dict[str, torch.Tensor] | None = None
    ) -> ModelOutput:
        """The model's output; for a model that takes meta-information and is given some, also its logits
        without it as ``aux['no_meta_logits']`` (reported as the ``no_meta`` head)."""
        output = self.forward(model, images, meta)
        if meta and accepts_meta(model):
            output.aux["no_meta_logits"] = model(images).logits
        return output

    def exportable_logits(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The logits of ``predict`` from images alone, computed without data-dependent shapes or decisions
        taken in Python, so that ONNX, TorchScript tracing and ``torch.export`` record them
        (``longtail export``)."""
        return self.predict(model, images).logits

    def forward(self, model: nn.Module, images: torch.Tensor, meta: dict[str, torch.Tensor] | None) -> ModelOutput:
        """``model(images, meta=meta)`` for models that take meta-information and are given some, else
        ``model(images)``."""
        if meta and accepts_meta(model):
            return model(images, meta=meta)
        return model(images)

    def extra_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Method-specific numbers computed from one head's ``evaluate`` result, merged into it."""
        return {}

    def selection_score(self, record: dict[str, Any]) -> float | None:
        """The score (higher is better) by which the trainer chooses the best epoch from the epoch's log
        ``record``, or None to choose by validation top-1. A method scores every record of a stage or none
        (the two are not comparable)."""
        return None


_ACCEPTS_META: dict[type, bool] = {}


def accepts_meta(model: nn.Module) -> bool:
    """Whether the (unwrapped) model's ``forward`` has a ``meta`` parameter; inspected once per class."""
    cls = type(unwrap(model))
    if cls not in _ACCEPTS_META:
        _ACCEPTS_META[cls] = "meta" in inspect.signature(cls.forward).parameters
    return _ACCEPTS_META[cls]


def both_views(batch: Any, method_name: str) -> torch.Tensor:
    """The weak and strong views of a two-view batch stacked into one (2B, 3, H, W) forward input."""
    if batch.strong is None:
        raise LongtailError(f"Method '{method_name}' needs two-view batches (Batch.strong): set data.two_views=true.")
    return torch.cat([batch.images, batch.strong])


@torch.no_grad()
def reinitialize_heads(model: nn.Module, fresh: nn.Module) -> None:
    """Give ``model``'s heads the initial weights of the same heads in ``fresh``, a newly built model."""
    for head, new_head in zip(model.head_modules(), fresh.head_modules(), strict=True):
        head.load_state_dict(new_head.state_dict())


def create_method(config: RunConfig, info: Any) -> Method:
    """The method named by ``config.method.name``, built with ``config.method.args``."""
    import_method_modules()
    METHODS.check_options(config.method.name, config.method.args)
    return METHODS.create(config.method.name, config, info, **config.method.args)


def import_method_modules() -> None:
    """Import every module of ``longtail.methods`` so that all methods are registered."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")
