"""Checkpoints: written atomically, read back into a model for evaluation, prediction or as a teacher.

A run directory holds ``checkpoint.pt`` (the state after the last finished epoch: model, optimiser,
scheduler, grad scaler, EMA, stage and epoch, best selection score; rewritten every epoch) and
``best.pt`` (the evaluation weights of the epoch with the best validation top-1 in the last stage, or the
best ``Method.selection_score`` where the method has one).
Randomness needs no saved state: every epoch reseeds from (seed, epoch, rank) and the loader draws its
order and augmentations from the same triple, so a resumed epoch replays exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from longtail.config import RunConfig, from_dict
from longtail.errors import LongtailError
from longtail.evaluation.report import atomic_write

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
MIN_INITIAL_FRACTION = 0.5  # of the model's parameter values that model.init_checkpoint must supply


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash leaves either the old or the new file, never half of one."""
    atomic_write(path, lambda file: torch.save(state, file), mode="wb")


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


def info_to_dict(info: Any) -> dict[str, Any]:
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


def info_from_dict(data: dict[str, Any]) -> Any:
    from longtail.data import DatasetInfo

    fields = {field.name for field in dataclasses.fields(DatasetInfo)}
    return DatasetInfo(**{key: value for key, value in data.items() if key in fields})


@dataclasses.dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint, with what is needed to evaluate it or to predict with it."""

    model: nn.Module
    method: Any
    config: RunConfig
    info: Any
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
    return TrainedModel(model=model.to(device).eval(), method=method, config=config, info=info, state=state)


def _build_model(config: RunConfig, info: Any, stage: int) -> tuple[Any, nn.Module]:
    """The method and its model as they were after stage ``stage`` (modules that stages add included)."""
    from longtail.methods.base import create_method

    method = create_method(config, info)
    torch.manual_seed(config.train.seed)
    model = method.build_model()
    for prepared in method.stages()[: stage + 1]:
        method.prepare_stage(prepared, model)
    return method, model


def _evaluation_weights(state: dict[str, Any], config: RunConfig) -> dict[str, torch.Tensor]:
    ema = state.get("ema") if config.train.ema_eval else None
    return ema or state["model"]


def _fits_own_config(state: dict[str, Any], info: Any) -> bool:
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
        f"{len(names)} {label} ({_some(names)})"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
        if names
    ]
    return ", ".join(parts) or None


def _some(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def load_initial_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Start ``model`` from the weights at ``path`` (``model.init_checkpoint``): a longtail run directory or
    checkpoint (its EMA weights when it kept them), or a file holding a state dict (or ``{'model': ...}`` /
    ``{'state_dict': ...}``). Tensors whose name or shape does not match (a classifier for other classes) are
    skipped and their names returned. A file that supplies under half of the model's parameter values (buffers
    such as BatchNorm's batch counters do not count) was saved from another model: an error."""
    path = Path(path).expanduser()
    if path.is_dir():
        loaded: Any = load_checkpoint(path)
    elif path.is_file():
        loaded = read_torch_file(path, "state dict (model.init_checkpoint)")
    else:
        raise LongtailError(f"model.init_checkpoint {path} does not exist; give a run directory or a .pt file.")
    if isinstance(loaded, dict) and "config" in loaded and "model" in loaded:
        weights = loaded.get("ema") or loaded["model"]
    else:
        weights = _state_dict_in(loaded, path)
    own = model.state_dict()
    matching = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    _check_enough_parameters(model, set(matching), path)
    model.load_state_dict(matching, strict=False)
    return sorted(set(own) - set(matching))


def _check_enough_parameters(model: nn.Module, matching: set[str], path: Path) -> None:
    parameters = dict(model.named_parameters())
    loaded = [name for name in parameters if name in matching]
    total = sum(p.numel() for p in parameters.values())
    fraction = sum(parameters[name].numel() for name in loaded) / max(total, 1)
    if fraction < MIN_INITIAL_FRACTION:
        found = f": {_some(loaded)}" if loaded else ""
        raise LongtailError(
            f"model.init_checkpoint {path} was saved from another model: only {len(loaded)} of the "
            f"{len(parameters)} parameter tensors of '{type(model).__name__}' ({100 * fraction:.1f}% of its weights) "
            f"match it by name and shape{found}. Give a checkpoint of this model (or of one that shares its backbone)."
        )


def _state_dict_in(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise LongtailError(f"model.init_checkpoint {path} holds no state dict of tensors.")
    return {key.removeprefix("module."): value for key, value in loaded.items()}
