"""What every model of the library returns, so multi-expert and two-token models need no special cases."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    """Model outputs.

    ``logits`` (B, C) is the prediction used for evaluation (for multi-expert models the mean of the
    experts, for DeiT the mean of the CLS and DIST heads). ``features`` (B, D) are pooled features.
    ``expert_logits`` (K, B, C) and ``expert_features`` (K, B, D) are filled by multi-expert models.
    ``aux`` carries anything else a loss needs by name (e.g. ``cls_logits``, ``dist_logits``).
    """

    logits: torch.Tensor
    features: torch.Tensor | None = None
    expert_logits: torch.Tensor | None = None
    expert_features: torch.Tensor | None = None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_experts(self) -> int:
        return 1 if self.expert_logits is None else self.expert_logits.shape[0]
