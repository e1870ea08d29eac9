"""The one training loop of the library. A method (``longtail.methods.base.Method``) supplies the model,
the loss, the stages and the training step; this module supplies everything else: optimiser and per-step
schedule, gradient accumulation, mixed precision, SAM, EMA, DDP, exact resumption, logs, checkpoints and the
final report.

Gradient accumulation (``train.accumulate_steps = N``): the loader's batches are micro-batches, and N of them make
one optimiser step. Each micro-batch's loss is divided by the size of its group (N, or fewer for the last group
of an epoch, which is stepped too), so the accumulated gradient is the mean over the group's images, as one
batch of all of them would give with equal micro-batches. DDP all-reduces only on a group's last micro-batch
(``no_sync`` before it). Clipping, the optimiser, the grad scaler, the lr schedule (counted in optimiser steps)
and the EMA act once per group; SAM perturbs along the group's accumulated gradient and re-runs the group's
micro-batches there. Epochs end on a group boundary, so the per-epoch checkpoints resume exactly.

Per stage: freeze what the stage does not train, build optimiser / scheduler / loss / loader; per epoch:
reseed from (seed, epoch, rank), train, validate, checkpoint. At the end the last weights and the best
ones (within the last stage, by ``Method.selection_score`` of the epoch's log record where the method gives
one, e.g. P²OT's label-free loss, else by validation top-1) are evaluated on the validation and the test
split; the test split is never used to choose anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from longtail.config import RunConfig, differing_keys, dump, from_dict
from longtail.data import create_loader
from longtail.data.augment import AugmentSpec
from longtail.distributed import all_reduce_sum, barrier, init_distributed, shutdown_distributed
from longtail.engine import checkpoint as ckpt
from longtail.engine.host_memory import keep_freed_memory
from longtail.engine.optim import SAM, build_optimizer, build_scheduler, check_schedule, frozen_batchnorm_stats
from longtail.engine.run_files import (
    CONFIG,
    LOG,
    REPORT_DIR,
    SUMMARY,
    TENSORBOARD_DIR,
    FailedStartCleanup,
    remove_run_outputs,
)
from longtail.errors import LongtailError
from longtail.evaluation.evaluator import Evaluator, format_table, summarize, table_rows, write_split_report
from longtail.evaluation.metrics import evaluate
from longtail.methods import runs
from longtail.methods.base import Method, Stage, create_method
from longtail.methods.context import RunContext, StepInfo, create_datasets_for
from longtail.methods.recipes import check_factory_options
from longtail.losses import Loss
from longtail.models.base import Network
from longtail.precision import AUTO_PRECISION, PRECISIONS, effective_precision

STAGE_SEED_STREAM = 1_000_003  # separates the seeds of stage set-up from those of epochs
VALIDATION_METRIC = "val_top1"


def train(config: RunConfig, run_dir: str | Path, resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Train ``config`` in ``run_dir`` and return the summary of the final report.

    An unfinished run in ``run_dir`` is resumed (its config must equal ``config``); ``resume=True``
    requires one. A finished run there is an error unless ``force``, which starts over: it deletes the files
    a run writes there and keeps any others. A start that fails before its first checkpoint leaves the folder
    as it found it; Ctrl-C raises a KeyboardInterrupt that says how to continue.
    """
    run_dir = Path(run_dir)
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone writes the run folder
    cleanup = FailedStartCleanup(run_dir) if is_main else None
    trainer = None
    try:
        trainer = Trainer(config, run_dir, resume=resume, force=force)
        return trainer.fit()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_message(run_dir)) from None
    finally:
        if trainer is not None:
            trainer.close()
        if cleanup is not None:
            cleanup.undo()


def interrupted_message(run_dir: Path) -> str:
    """What an interrupted run kept, and how to continue it."""
    checkpoint = run_dir / runs.CHECKPOINT
    if not checkpoint.is_file():
        return f"Training stopped before its first epoch ended; nothing was kept in {run_dir}."
    return (
        f"Training stopped; the last finished epoch is saved in {checkpoint}. Continue with the same command and "
        f"--run-dir {run_dir}, or `longtail train --run-dir {run_dir} --resume`."
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LongtailError("train.device is cuda but no CUDA device is available; use train.device=cpu.")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A seed that depends on every part (e.g. seed, epoch, rank), the same on every platform."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


@dataclass
class StageRun:
    """What the steps of one stage use."""

    stage: Stage
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    loader: Any
    step_model: nn.Module
    steps_per_epoch: int  # optimiser steps
    ema: Any = None
    sam: SAM | None = None


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, resume: bool = False, force: bool = False) -> None:
        check_factory_options(config)  # a config not from ``resolve`` (a resumed run's, the API's) too, before any data
        self.config = config
        self.run_dir = run_dir
        device = resolve_device(config.train.device)
        self.distributed = init_distributed(device.type)
        if device.type == "cuda":
            if self.distributed.enabled:
                device = torch.device("cuda", self.distributed.local_rank)
            elif device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        self.device = device
        if device.type == "cpu":
            keep_freed_memory()
        self.autocast_dtype = self._check_precision()
        self.resume_state = self._prepare_run_dir(resume, force)
        self._set_determinism()
        seed_everything(config.train.seed)
        self.splits = create_datasets_for(config)
        self.info = self.splits.info
        self.method: Method = create_method(config, self.info)
        self.model = checked_network(self.method.build_model(), config).to(self.device)
        if config.model.init_checkpoint is not None:
            self._load_initial_weights(config.model.init_checkpoint)
        if config.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method.setup(
            RunContext(config, self.device, self.splits, rank=self.distributed.rank, world_size=self.distributed.world_size)
        )
        self.stages = self.method.stages()
        self._check_stages()
        self.evaluator = Evaluator(config, self.method, self.info, self.device, self.distributed)
        self.ema: Any = None
        self.best: dict[str, Any] = no_best()
        self.log = RunLog(run_dir, enabled=self.distributed.is_main)
        if self.distributed.is_main:
            dump(config, run_dir / CONFIG)

    # ------------------------------------------------------------------ set-up

    def _load_initial_weights(self, path: str) -> None:
        fresh = ckpt.load_initial_weights(self.model, path)
        if fresh and self.distributed.is_main:
            shown = ", ".join(fresh[:6]) + (f" and {len(fresh) - 6} more" if len(fresh) > 6 else "")
            tqdm.write(f"model.init_checkpoint: {path} has no matching weights for {shown}; they start fresh.")

    def _check_precision(self) -> torch.dtype | None:
        choices = (*PRECISIONS, AUTO_PRECISION)
        if self.config.train.precision not in choices:
            raise LongtailError(
                f"train.precision must be one of {', '.join(choices)}, got '{self.config.train.precision}'."
            )
        precision = self.precision = effective_precision(self.config.train.precision, self.device)
        if precision == "fp16" and self.device.type != "cuda":
            raise LongtailError("train.precision=fp16 needs CUDA (it uses a grad scaler); use bf16 on the CPU.")
        if precision == "fp16" and self.config.optim.sam_rho > 0:
            raise LongtailError("SAM (optim.sam_rho > 0) does not support fp16; use train.precision=bf16 or fp32.")
        return PRECISIONS[precision]

    def _prepare_run_dir(self, resume: bool, force: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None for a fresh run; refuses finished or different runs."""
        path = self.run_dir / runs.CHECKPOINT
        if not path.is_file():
            if resume:
                raise LongtailError(f"Nothing to resume in {self.run_dir}: it holds no {runs.CHECKPOINT}.")
            self._make_run_dir(clear=False)
            return None
        if force:
            self._make_run_dir(clear=True)
            return None
        try:
            state = runs.load_checkpoint(path)
        except LongtailError as error:
            raise LongtailError(
                f"{error} Pass --force to delete the run's files in {self.run_dir} and train again there, or "
                "choose a new --run-dir."
            ) from None
        if state.get("finished"):
            raise LongtailError(
                f"{self.run_dir} already holds a finished run. Choose a new --run-dir, or pass --force to "
                "train again from scratch there (the run's files are deleted; other files are kept)."
            )
        differing = differing_keys(_with_current_defaults(state["config"]), self.config.to_dict())
        if differing:
            raise LongtailError(
                f"Cannot resume {self.run_dir}: the config differs from the checkpoint's in "
                f"{', '.join(differing)}. Resume with the same settings (`longtail train --run-dir "
                f"{self.run_dir} --resume` reuses them) or choose a new --run-dir."
            )
        return state

    def _make_run_dir(self, clear: bool) -> None:
        barrier(self.distributed)
        if self.distributed.is_main:
            if clear:
                remove_run_outputs(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
        barrier(self.distributed)

    def _set_determinism(self) -> None:
        deterministic = self.config.train.deterministic
        if deterministic and self.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = not deterministic

    def _check_stages(self) -> None:
        for index, stage in enumerate(self.stages):
            check_schedule(stage.schedule, f"stage {index} ('{stage.name}')")
            if stage.batch_size % self.distributed.world_size:
                raise LongtailError(
                    f"The batch size {stage.batch_size} of stage '{stage.name}' does not divide among "
                    f"{self.distributed.world_size} processes; make it a multiple of the process count."
                )

    def _train_loader(self, stage: Stage) -> Any:
        def spec(augment: Any) -> Any:
            return AugmentSpec(**augment) if isinstance(augment, dict) else augment

        data = self.config.data
        return create_loader(
            self.splits.train,
            batch_size=stage.batch_size // self.distributed.world_size,
            train=True,
            augment=spec(data.augment),
            strong_augment=spec(data.strong_augment),
            two_views=data.two_views,
            sampler=stage.sampler,
            seed=self.config.train.seed,
            device=self.device,
            rank=self.distributed.rank,
            world_size=self.distributed.world_size,
            num_workers=data.num_workers,
            epochs=stage.epochs,
            channels_last=self.config.train.channels_last,
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ training

    def fit(self) -> dict[str, Any]:
        """Train every stage (continuing a resumed run where its checkpoint left off), then report."""
        state = self.resume_state
        start_stage, start_epoch = (state["stage"], state["epoch"]) if state else (0, 0)
        if state is not None:
            self.best = state["best"]
            self.log.keep_epochs(sum(stage.epochs for stage in self.stages[:start_stage]) + start_epoch)
        offset = 0
        for index, stage in enumerate(self.stages):
            seed_everything(derived_seed(self.config.train.seed, STAGE_SEED_STREAM, index))
            self.method.prepare_stage(stage, self.model)
            if index == start_stage:
                self._run_stage(index, stage, offset, start_epoch, state)
            elif index > start_stage:
                self.best = no_best()
                self._run_stage(index, stage, offset, 0, None)
            offset += stage.epochs
        summary = self._final_report()
        self._save_checkpoint(len(self.stages) - 1, self.stages[-1].epochs, None, finished=True)
        return summary

    def _run_stage(self, index: int, stage: Stage, offset: int, first_epoch: int, resume: dict | None) -> None:
        run = self._build_stage(stage, resume)
        for epoch in range(first_epoch, stage.epochs):
            global_epoch = offset + epoch
            seed_everything(derived_seed(self.config.train.seed, global_epoch, self.distributed.rank))
            run.loader.set_epoch(global_epoch)
            self.method.start_epoch(self.model, run.criterion, epoch)
            record = {"stage": stage.name, "epoch": global_epoch + 1, "stage_epoch": epoch + 1}
            record.update(self._train_epoch(run, epoch, global_epoch))
            if self._should_validate(epoch, stage):
                record.update(self._validate())
            self._select(index, global_epoch, record)
            self.log.epoch(record)
            self._save_checkpoint(index, epoch + 1, run)

    def _build_stage(self, stage: Stage, resume: dict | None) -> StageRun:
        params = self._freeze_for(stage)
        optimizer = build_optimizer(self.method.param_groups(stage, self.model, params), stage.optim)
        loader = self._train_loader(stage)
        if len(loader) == 0:
            raise LongtailError(
                f"Stage '{stage.name}' has no full batch: its {len(self.splits.train)} training images are fewer than one "
                f"batch (full batches only, as the recipes' schedules count them). Lower data.batch_size (or the "
                f"stage's batch_size)."
            )
        steps_per_epoch = math.ceil(len(loader) / self.config.train.accumulate_steps)
        scheduler = build_scheduler(optimizer, stage.schedule, stage.optim.lr, steps_per_epoch)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ema = self._make_ema()
        if resume is not None:
            self._load_resumed_weights(self.model, resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            scaler.load_state_dict(resume["scaler"])
            if self.ema is not None:
                self._load_resumed_weights(self.ema.module, resume["ema"])
        return StageRun(
            stage=stage,
            params=params,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            criterion=checked_loss(self.method.build_loss(stage.loss), stage).to(self.device),
            loader=loader,
            step_model=self._wrap(self.model),
            steps_per_epoch=steps_per_epoch,
            ema=self.ema,
            sam=SAM(params, stage.optim.sam_rho) if stage.optim.sam_rho > 0 else None,
        )

    def _load_resumed_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        mismatch = runs.weights_mismatch(model, weights)
        if mismatch:
            raise LongtailError(
                f"Cannot resume {self.run_dir}: the weights in its checkpoint do not fit the model of its config "
                f"({mismatch}). Train again there with --force, or choose a new --run-dir."
            )
        model.load_state_dict(weights)

    def _freeze_for(self, stage: Stage) -> list[nn.Parameter]:
        """Make only the stage's parameters trainable and return them."""
        params = self.method.trainable_parameters(stage, self.model)
        trainable = {id(p) for p in params}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in trainable)
        return [p for p in params if p.requires_grad]

    def _make_ema(self) -> Any:
        if self.config.train.ema_decay <= 0:
            return None
        return ModelEmaV3(self.model, decay=self.config.train.ema_decay)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.distributed.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if self.config.train.compile:
            model = torch.compile(model)
        return model

    def _train_epoch(self, run: StageRun, epoch: int, global_epoch: int) -> dict[str, float]:
        self.model.train()
        for module in frozen_modules(self.model):
            module.eval()
        settings = self.config.train
        steps = len(run.loader)
        accumulate = settings.accumulate_steps
        group: list[Any] = []  # the micro-batches of the coming optimiser step, kept for SAM's second pass
        loss_sum = torch.zeros((), dtype=torch.float64)
        part_sums: dict[str, torch.Tensor] = {}
        seen = 0
        started = time.perf_counter()
        bar = tqdm(
            run.loader,
            total=steps,
            desc=f"{run.stage.name} {epoch + 1}/{run.stage.epochs}",
            disable=not (settings.progress and self.distributed.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        for step, batch in enumerate(bar):
            batch = batch.to(self.device, non_blocking=True)
            if settings.channels_last:
                batch = _channels_last(batch)
            group_start = step - step % accumulate
            group_size = min(accumulate, steps - group_start)
            last = step + 1 == group_start + group_size
            if run.sam is not None:
                group.append(batch)
            info = StepInfo(epoch, run.stage.epochs, step // accumulate, run.steps_per_epoch)
            try:
                value = self._accumulate(run, batch, info, step == group_start, group_size, last)
                if last:
                    self._optimisation_step(run, group, info)
                    group = []
            except NonFiniteLoss as error:
                raise LongtailError(
                    f"The loss became {error.value} at epoch {global_epoch + 1}, step {step + 1} (stage "
                    f"'{run.stage.name}'). Training stopped; the last good checkpoint is kept in {self.run_dir}. "
                    "Lower optim.lr, set optim.clip_grad, or use train.precision=fp32."
                ) from None
            seen += len(batch)
            loss_sum += value * len(batch)
            for name, part in run.criterion.parts.items():
                part_sums[name] = part_sums.get(name, 0.0) + part.detach().double().cpu() * len(batch)
            lr = run.optimizer.param_groups[0]["lr"]
            rate = seen * self.distributed.world_size / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}", refresh=False)
            if step % settings.log_every == 0:
                self.log.scalars({"train/loss": value, "train/lr": lr}, global_epoch * steps + step)
        bar.close()
        elapsed = time.perf_counter() - started
        names = sorted(part_sums)
        sums = torch.stack([loss_sum, *(part_sums[name] for name in names), torch.tensor(float(seen), dtype=torch.float64)])
        totals = all_reduce_sum(sums.to(self.device), self.distributed).cpu()
        stats = {"loss": (totals[0] / totals[-1]).item()}
        stats.update({f"loss_{name}": (totals[1 + i] / totals[-1]).item() for i, name in enumerate(names)})
        stats.update(lr=run.optimizer.param_groups[0]["lr"], images_per_s=totals[-1].item() / elapsed, epoch_s=elapsed)
        return stats

    def _accumulate(self, run: StageRun, batch: Any, info: StepInfo, first: bool, group_size: int, last: bool) -> float:
        """Add one micro-batch's gradient (of its loss / ``group_size``) to its group's, starting from zero when
        ``first``, all-reducing under DDP when ``last``; returns the loss value, refusing a non-finite one."""
        if first:
            run.optimizer.zero_grad(set_to_none=True)
        with gradient_sync(run.step_model, last):
            with self._autocast():
                loss, _ = self.method.training_step(run.step_model, batch, run.criterion, info)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLoss(value)
            run.scaler.scale(loss / group_size).backward()
        return value

    def _optimisation_step(self, run: StageRun, group: list[Any], info: StepInfo) -> None:
        """One update with the accumulated gradient; SAM first recomputes it at the perturbed weights from the
        ``group`` of micro-batches."""
        optimizer, scaler = run.optimizer, run.scaler
        if run.sam is not None:
            run.sam.perturb()
            optimizer.zero_grad(set_to_none=True)
            for index, batch in enumerate(group):
                with gradient_sync(run.step_model, index + 1 == len(group)):
                    with frozen_batchnorm_stats(self.model), self._autocast():
                        perturbed_loss, _ = self.method.training_step(run.step_model, batch, run.criterion, info)
                    (perturbed_loss / len(group)).backward()
            run.sam.restore()
        if run.stage.optim.clip_grad is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(run.params, run.stage.optim.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update(self.model)

    # ------------------------------------------------------------------ validation and checkpoints

    def _should_validate(self, epoch: int, stage: Stage) -> bool:
        every = self.config.train.eval_every
        return self.splits.val is not None and ((epoch + 1) % every == 0 or epoch + 1 == stage.epochs)

    def _eval_model(self) -> nn.Module:
        if self.ema is not None and self.config.train.ema_eval:
            return self.ema.module
        return self.model

    def _validate(self) -> dict[str, float]:
        heads, targets = self.evaluator.predictions(self._eval_model(), self.splits.val)
        many, few = self.info.shot_thresholds
        main = evaluate(heads["main"], targets, self.info.train_counts, many=many, few=few)
        return {f"val_{key}": main[key] for key in ("top1", "many", "medium", "few") if main[key] is not None}

    def _select(self, stage_index: int, global_epoch: int, record: dict[str, Any]) -> None:
        """Keep the epoch's evaluation weights as ``best.pt`` when its score beats the stage's best so far:
        the method's ``selection_score`` of ``record``, else the validation top-1 (none: nothing to select)."""
        score = self.method.selection_score(record)
        name = self.method.selection_name
        if score is None:
            score, name = record.get(VALIDATION_METRIC), VALIDATION_METRIC
        if score is None:
            return
        if self.best["metric"] is None or score > self.best["metric"]:
            self.best = {"metric": score, "name": name, "epoch": global_epoch + 1, "stage": stage_index}
            if self.distributed.is_main:
                model_state = self._eval_model().state_dict()
                ckpt.save_atomic(self._state(stage_index, model_state), self.run_dir / runs.BEST)

    def _state(self, stage: int, model_state: dict[str, torch.Tensor], **extra: Any) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "info": runs.info_to_dict(self.info),
            "stage": stage,
            "model": model_state,
            "best": dict(self.best),
            **extra,
        }

    def _save_checkpoint(self, stage: int, epoch: int, run: StageRun | None, finished: bool = False) -> None:
        """``checkpoint.pt`` after ``epoch`` epochs of ``stage``; ``run`` None keeps the training state."""
        if self.distributed.is_main:
            path = self.run_dir / runs.CHECKPOINT
            extra: dict[str, Any] = {"epoch": epoch, "finished": finished}
            if run is not None:
                extra.update(
                    optimizer=run.optimizer.state_dict(),
                    scheduler=run.scheduler.state_dict(),
                    scaler=run.scaler.state_dict(),
                    ema=run.ema.module.state_dict() if run.ema is not None else None,
                )
            else:
                previous = runs.load_checkpoint(path)
                extra.update({key: previous.get(key) for key in ("optimizer", "scheduler", "scaler", "ema")})
            ckpt.save_atomic(self._state(stage, self.model.state_dict(), **extra), path)
        barrier(self.distributed)

    # ------------------------------------------------------------------ final report

    def _final_report(self) -> dict[str, Any]:
        candidates = {"last": self._eval_model()}
        barrier(self.distributed)
        if (self.run_dir / runs.BEST).is_file():
            candidates["best"] = runs.load_trained_model(self.run_dir / runs.BEST, self.device).model
        epochs = {"last": sum(stage.epochs for stage in self.stages), "best": self.best["epoch"]}
        summary: dict[str, Any] = {
            "best_epoch": self.best["epoch"],
            "best_metric": self.best["metric"],
            "best_metric_name": self.best.get("name"),
        }
        rows: dict[str, dict[str, Any]] = {}
        plots: dict[str, str] = {}
        for which, model in candidates.items():
            for split, dataset in (("val", self.splits.val), ("test", self.splits.test)):
                if dataset is None:
                    continue
                results = self.evaluator.evaluate(model, dataset)
                rows.update(table_rows(f"{which} {split}", results))
                summary[f"{which}_{split}"] = summarize(results)
                if self.distributed.is_main:
                    extra = {"weights": which, "split": split, "epoch": epochs[which], "dataset": self.info.name}
                    folder = self.run_dir / REPORT_DIR / f"{which}_{split}"
                    plots[f"{which} {split}"] = str(write_split_report(folder, results, self.info, extra))
        summary.update(table=format_table(rows), plots=plots, expected=self.config.expected)
        if self.distributed.is_main:
            (self.run_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
        return summary

    def close(self) -> None:
        self.log.close()
        shutdown_distributed(self.distributed)


def checked_network(model: nn.Module, config: RunConfig) -> Network:
    """The method's model, refused with the fix when it is not a ``Network``: the trainer and the methods use
    ``head_modules``, ``replace_heads``, ``forward_features`` and ``set_epoch``."""
    if not isinstance(model, Network):
        raise LongtailError(
            f"Model '{config.model.name}' of method '{config.method.name}' is a {type(model).__name__}, not a "
            "longtail.models.base.Network: subclass Network (or SingleHeadNetwork, for one head) and implement "
            "forward_features and head_modules."
        )
    return model


def checked_loss(criterion: nn.Module, stage: Stage) -> Loss:
    """The stage's loss, refused with the fix when it is not a ``Loss``: the trainer gives it the epoch
    (``set_epoch``) and logs its ``parts``."""
    if not isinstance(criterion, Loss):
        raise LongtailError(
            f"Loss '{stage.loss.name}' of stage '{stage.name}' is a {type(criterion).__name__}, not a "
            "longtail.losses.Loss: subclass Loss (or LongtailLoss, which keeps the class counts)."
        )
    return criterion


def no_best() -> dict[str, Any]:
    """The selection state of a stage before its first scored epoch."""
    return {"metric": None, "name": None, "epoch": None, "stage": None}


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost submodules that have parameters but no trainable one. They run in eval mode during
    training, so a frozen backbone's BatchNorm statistics (and dropout) stay fixed as well."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            found.append(module)
            return
        for child in module.children():
            visit(child)

    visit(model)
    return found


def gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Where the forward and backward passes of a micro-batch run: DDP's ``no_sync`` unless ``sync`` (the
    all-reduce waits for the last micro-batch of an optimiser step); nothing for a model without DDP."""
    module = getattr(model, "_orig_mod", model)  # under torch.compile's wrapper
    if sync or not isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


def _channels_last(batch: Any) -> Any:
    strong = None if batch.strong is None else batch.strong.contiguous(memory_format=torch.channels_last)
    return replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last), strong=strong)


class RunLog:
    """``log.jsonl`` (one record per epoch), TensorBoard scalars and console lines; rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / LOG
        self.tensorboard_dir = run_dir / TENSORBOARD_DIR
        self._writer: Any = None

    def _tensorboard(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir))
        return self._writer

    def keep_epochs(self, epochs: int) -> None:
        """Drop the records of epochs after ``epochs`` (written before a crash, replayed on resume)."""
        if self.enabled and self.path.is_file():
            records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            kept = [record for record in records if record["epoch"] <= epochs]
            self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.enabled:
            writer = self._tensorboard()
            for name, value in values.items():
                writer.add_scalar(name, value, step)

    def epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")
        numbers = {f"epoch/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k != "epoch"}
        self.scalars(numbers, record["epoch"])
        tqdm.write("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _with_current_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the defaults of keys added to the schema since it was written (so that a
    run started before a new option existed can resume), or as saved if it no longer validates."""
    try:
        return from_dict(saved).to_dict()
    except LongtailError:
        return saved
