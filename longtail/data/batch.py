"""The batch every loader yields and every method consumes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class Batch:
    """A training or evaluation batch.

    ``images`` (B, 3, H, W) float, normalised: the (weak) view. ``strong`` is the second, strongly
    augmented view of the same images when the loader makes two views. ``targets`` (B,) int64,
    ``indices`` (B,) the dataset indices (memory banks, clustering). ``meta`` holds per-image
    meta-information tensors by group name (MetaFormer).
    """

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    strong: torch.Tensor | None = None
    meta: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.targets.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            images=move(self.images),
            targets=move(self.targets),
            indices=move(self.indices),
            strong=move(self.strong),
            meta={k: move(v) for k, v in self.meta.items()},
        )
