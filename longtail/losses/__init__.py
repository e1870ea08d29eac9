"""Losses by name: ``longtail.losses.create(name, class_counts=..., **kw)``.

Baseline losses live in this package; each paper's loss lives in its method module
(``longtail.methods.<paper>``) and registers into the same ``LOSSES`` registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from longtail.registry import Registry

LOSSES = Registry("loss")
register_loss = LOSSES.register


def create(name: str, class_counts: Sequence[int], **kwargs: Any) -> nn.Module:
    """Build loss ``name`` for a training set with ``class_counts`` images per class."""
    import longtail.methods  # noqa: F401  (registers the methods' losses)

    return LOSSES.create(name, class_counts=class_counts, **kwargs)


__all__ = ["LOSSES", "create", "register_loss"]
