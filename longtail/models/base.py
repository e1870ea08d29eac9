"""Base classes shared by every model, and loading of local pretrained weights (never downloaded)."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from longtail.errors import LongtailError
from longtail.models.output import ModelOutput


class Network(nn.Module, ABC):
    """A longtail model: ``forward(x) -> ModelOutput``, ``forward_features(x) -> (B, D)`` pooled features,
    ``head_modules()`` (the classifier(s), for cRT / head re-training), ``replace_heads(fn)`` and
    ``set_epoch(epoch)``."""

    @abstractmethod
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D), the input of the head(s)."""

    @abstractmethod
    def head_modules(self) -> list[nn.Module]:
        """The classifier head(s) used by ``forward``."""

    @abstractmethod
    def replace_heads(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        """Replace every head used by ``forward`` by ``fn(head)`` (e.g. tau-normalisation, LWS)."""

    def set_epoch(self, epoch: int) -> None:
        """Before each training epoch (0-based within its stage), from ``Method.start_epoch``; a model whose
        training forward follows a schedule (MetaFG's meta masking) overrides it."""


class SingleHeadNetwork(Network):
    """A feature extractor followed by one head, ``self.head``."""

    head: nn.Module

    def forward(self, images: torch.Tensor) -> ModelOutput:
        features = self.forward_features(images)
        return ModelOutput(logits=self.head(features), features=features)

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def replace_heads(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        self.head = fn(self.head)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file; unwraps ``{'state_dict': ...}`` / ``{'model': ...}`` and strips the
    ``module.`` prefix that DataParallel/DDP checkpoints carry."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LongtailError(f"Pretrained weights not found at {path}; pass pretrained_path= a local state-dict file.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_best"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise LongtailError(f"{path} does not hold a state dict (found {type(state).__name__}).")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``; every parameter and buffer of ``module`` must be present with its shape."""
    own = module.state_dict()
    missing = sorted(key for key in own if key not in state)
    mismatched = sorted(key for key in own if key in state and state[key].shape != own[key].shape)
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if mismatched:
            problems.append(f"wrong shape {', '.join(mismatched[:5])}{' ...' if len(mismatched) > 5 else ''}")
        raise LongtailError(f"Pretrained weights {source} do not fit the model: {'; '.join(problems)}.")
    module.load_state_dict({key: state[key] for key in own})


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode inside the block; every module's previous train/eval flag after it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.train(training)
