"""What the engine and the methods share about runs: the checkpoint file (its name, its dataset facts as plain
values, reading it back into its model for evaluation, prediction, export or as a teacher). The engine imports
the methods, so this lives here.

A run directory holds ``checkpoint.pt`` (the state after the last finished epoch) and ``best.pt`` (the selected
evaluation weights); ``longtail.engine.checkpoint`` writes them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from longtail.config import RunConfig, from_dict
from longtail.data import DatasetInfo
from longtail.errors import LongtailError
from longtail.methods.base import Method, create_method
from longtail.methods.context import RunContext

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
SUMMARY = "summary.json"  # written once the last stage has finished and been evaluated


def read_torch_file(path: Path, what: str) -> Any:
    """The tensors and plain values saved in ``path`` (never arbitrary pickled objects), or a LongtailError that
    calls the file an unreadable ``what``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (any unpickling failure means the same thing to the user)
        raise LongtailError(f"{path} is not a readable {what}: {_unreadable_reason(path)}.") from None


def _unreadable_reason(path: Path) -> str:
    with open(path, "rb") as file:
        head = file.read(4)
    if head == b"PK\x03\x04":  # torch.save's zip archive
        return "the file is truncated or damaged"
    if head[:1] == b"\x80":  # a bare pickle
        return "it holds pickled Python objects other than tensors and plain values, which longtail does not load"
    return "it is not a file written by torch.save"


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise LongtailError(f"No checkpoint at {path}; give a run directory or a .pt file written by `longtail train`.")
    state = read_torch_file(path, "longtail checkpoint")
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise LongtailError(f"{path} is not a longtail checkpoint (it lacks the config or the model weights).")
    return state


def info_to_dict(info: DatasetInfo) -> dict[str, Any]:
    """The dataset facts a checkpoint needs to rebuild the model and name its classes, as plain types."""
    return {key: _plain(value) for key, value in dataclasses.asdict(info).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def info_from_dict(data: dict[str, Any]) -> DatasetInfo:
    fields = {field.name for field in dataclasses.fields(DatasetInfo)}
    return DatasetInfo(**{key: value for key, value in data.items() if key in fields})


@dataclasses.dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint, with what is needed to evaluate it or to predict with it."""

    model: nn.Module
    method: Method
    config: RunConfig
    info: DatasetInfo
    state: dict[str, Any]


def load_trained_model(
    path: str | Path, device: torch.device | str = "cpu", config: RunConfig | None = None
) -> TrainedModel:
    """The model of a run directory or checkpoint file, in eval mode (EMA weights when the run kept them and
    ``train.ema_eval`` is on).

    Every stage up to the checkpoint's is prepared first, so modules that a stage adds exist before the
    weights are loaded. Any longtail checkpoint can serve as a teacher this way. ``config`` replaces the
    checkpoint's (evaluation-time settings such as RIDE's ``method.args.router_threshold``); its model must
    fit the stored weights.
    """
    state = load_checkpoint(Path(path))
    overridden = config is not None
    config = config if overridden else from_dict(state["config"])
    info = info_from_dict(state["info"])
    method, model = _build_model(config, info, state["stage"])
    weights = _evaluation_weights(state, config)
    mismatch = weights_mismatch(model, weights)
    if mismatch:
        if overridden and _fits_own_config(state, info):
            raise LongtailError(f"The weights in {path} do not fit the model of the changed settings ({mismatch}). "
                                "Change only settings that leave the model as it was trained.")
        raise LongtailError(f"The weights in {path} do not fit the model its config describes ({mismatch}): the "
                            "checkpoint was edited, or written by a version of longtail whose model differs. Use that "
                            "version, or train again.")
    model.load_state_dict(weights)
    method.attach(RunContext(config, torch.device(device)))
    return TrainedModel(model=model.to(device).eval(), method=method, config=config, info=info, state=state)


def load_teacher(path: str | Path, device: torch.device | str) -> TrainedModel:
    """A finished run (or any checkpoint file) as a frozen teacher: a run folder still training is refused,
    since its checkpoint holds the weights of some epoch, not the trained model."""
    folder = Path(path)
    if folder.is_dir() and (folder / CHECKPOINT).is_file() and not (folder / SUMMARY).is_file():
        raise LongtailError(
            f"The teacher run '{path}' has not finished training (it has no {SUMMARY}). Finish it with "
            f"`longtail train --run-dir {path} --resume`, or name its {CHECKPOINT} as the teacher to distil from "
            "it as it is."
        )
    return load_trained_model(path, device)


def _build_model(config: RunConfig, info: DatasetInfo, stage: int) -> tuple[Method, nn.Module]:
    """The method and its model as they were after stage ``stage`` (modules that stages add included)."""
    method = create_method(config, info)
    torch.manual_seed(config.train.seed)
    model = method.build_model()
    for prepared in method.stages()[: stage + 1]:
        method.prepare_stage(prepared, model)
    return method, model


def _evaluation_weights(state: dict[str, Any], config: RunConfig) -> dict[str, torch.Tensor]:
    ema = state.get("ema") if config.train.ema_eval else None
    return ema or state["model"]


def _fits_own_config(state: dict[str, Any], info: DatasetInfo) -> bool:
    config = from_dict(state["config"])
    _, model = _build_model(config, info, state["stage"])
    return weights_mismatch(model, _evaluation_weights(state, config)) is None


def weights_mismatch(model: nn.Module, weights: dict[str, torch.Tensor]) -> str | None:
    """How ``weights`` fail to fit ``model`` exactly (missing, unexpected and reshaped tensors), or None."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    reshaped = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    parts = [
        f"{len(names)} {label} ({some_names(names)})"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
        if names
    ]
    return ", ".join(parts) or None


def some_names(names: list[str], shown: int = 4) -> str:
    """The first ``shown`` of ``names``, and how many more there are."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
