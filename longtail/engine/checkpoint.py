"""Checkpoints written atomically, and a model started from another run's or a file's weights
(``model.init_checkpoint``). Reading a checkpoint back into its model is ``longtail.methods.runs``.

A run directory holds ``checkpoint.pt`` (the state after the last finished epoch: model, optimiser,
scheduler, grad scaler, EMA, stage and epoch, best selection score; rewritten every epoch) and
``best.pt`` (the evaluation weights of the epoch with the best validation top-1 in the last stage, or the
best ``Method.selection_score`` where the method has one).
Randomness needs no saved state: every epoch reseeds from (seed, epoch, rank) and the loader draws its
order and augmentations from the same triple, so a resumed epoch replays exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from longtail.errors import LongtailError
from longtail.evaluation.report import atomic_write
from longtail.methods.runs import load_checkpoint, read_torch_file, some_names

MIN_INITIAL_FRACTION = 0.5  # of the model's parameter values that model.init_checkpoint must supply


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash leaves either the old or the new file, never half of one."""
    atomic_write(path, lambda file: torch.save(state, file), mode="wb")


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
        found = f": {some_names(loaded)}" if loaded else ""
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
