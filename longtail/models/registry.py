"""The model registry: ``create(name, num_classes=..., **kw)`` builds any registered model (timm-style)."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from longtail.errors import LongtailError
from longtail.registry import Registry

MODELS = Registry("model")
register_model = MODELS.register


def create(
    name: str,
    num_classes: int,
    activation: str | None = None,
    activation_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name``; ``activation`` (e.g. 'aglu') replaces every activation of the model, with
    ``activation_options`` (e.g. ``per_channel``, ``lambda_grad``) passed to ``replace_activations``."""
    factory = MODELS.get(name)
    _check_kwargs(name, factory, kwargs)
    if activation_options and activation is None:
        raise LongtailError("activation_options are given but no activation; set model.activation (e.g. aglu).")
    model = factory(num_classes=num_classes, **kwargs)
    if activation is not None:
        from longtail.models.activations import replace_activations

        replace_activations(model, activation, **(activation_options or {}))
    return model


def list_models() -> list[str]:
    return MODELS.names()


def _check_kwargs(name: str, factory: Any, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = sorted(set(params) - {"num_classes"})
        raise LongtailError(
            f"Model '{name}' has no option(s) {', '.join(unknown)}. Valid options: {', '.join(valid)}."
        )
