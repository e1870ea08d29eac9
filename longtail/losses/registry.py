"""The loss registry, in its own module so that loss modules can register without importing the package."""

from __future__ import annotations

from longtail.registry import Registry

LOSSES = Registry("loss", reserved=("class_counts",))
register_loss = LOSSES.register
