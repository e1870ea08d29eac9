"""The model registry: ``create(name, num_classes=..., **kw)`` builds any registered model (timm-style)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from longtail.errors import LongtailError
from longtail.models.activations import replace_activations
from longtail.registry import Registry

MODELS = Registry("model", reserved=("num_classes",))
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
    MODELS.check_options(name, kwargs)
    if activation_options and activation is None:
        raise LongtailError("activation_options are given but no activation; set model.activation (e.g. aglu).")
    model = factory(num_classes=num_classes, **kwargs)
    if activation is not None:
        replace_activations(model, activation, **(activation_options or {}))
    return model


def list_models() -> list[str]:
    return MODELS.names()


def register_variant(name: str, builder: Callable[..., nn.Module], doc: str, **fixed: Any) -> Callable[..., nn.Module]:
    """Register model ``name``: ``builder`` called with the ``fixed`` keyword arguments. Its options (what
    ``create`` checks) are ``builder``'s parameters without the fixed ones, and so are the epoch-valued ones
    that ``builder`` declares (``epoch_args``, which ``budget=E`` scales)."""

    def factory(**options: Any) -> nn.Module:
        return builder(**fixed, **options)

    signature = inspect.signature(builder)
    factory.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name not in fixed],
        return_annotation=builder.__name__ if isinstance(builder, type) else signature.return_annotation,
    )
    factory.__name__ = name
    factory.__doc__ = doc
    factory.__module__ = builder.__module__
    declared = getattr(builder, "epoch_args", ())
    factory.epoch_args = tuple(arg for arg in declared if arg not in fixed)  # type: ignore[attr-defined]
    return register_model(name)(factory)
