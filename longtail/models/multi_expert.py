"""Generic multi-expert network: a shared trunk followed by K expert branches, each with its own head.

For an input x: s = trunk(x); for expert k: f_k = GAP(branch_k(s)) (pooled feature, (B, D)),
z_k = head_k(f_k) (logits, (B, C)). The prediction is the mean of the experts, z̄ = (1/K) Σ_k z_k, and the
feature is (1/K) Σ_k f_k; ``ModelOutput.expert_logits`` / ``expert_features`` stack z_k / f_k as (K, B, ·).
The trunk output may be anything the branches accept (a tensor for RIDE, a pair of feature maps for SHIKE).

The experts are an ``ExpertSet``: ``ExpertBranches`` (one module per expert, built from a list of branches) or
a model's own batched set that evaluates the experts in one pass (``ride_resnet32``); either maps s and a
``slice`` of experts to their pooled features (n, B, D).

``forward(x, num_experts=k)`` evaluates only the first k experts (RIDE's expert-assignment router);
``forward_trunk`` / ``forward_expert`` evaluate the parts one at a time (routed inference on subsets).

Per-expert logit adjustment (MDCS's Diversity Loss, usable by any method): ẑ_k = z_k + λ_k · log n, with n the
training class counts and λ = ``logit_adjust_exponents`` (one per expert). It is applied where a loss asks
(``model.adjusted_expert_logits(z, n)`` or ``adjust_expert_logits``); ``forward`` always returns the raw z_k,
so the test-time prediction stays the mean of the raw logits.

Optional second head set (``retrain_heads``; SHIKE's stage-2 balanced re-training): after
``select_heads('retrain')`` the forward pass, ``head_modules()`` and ``replace_heads`` use those heads instead
of ``heads``. The selection is not part of the state dict: a training stage sets it each time it starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from longtail.errors import LongtailError
from longtail.models.base import Network
from longtail.models.output import ModelOutput

HEAD_SETS = ("main", "retrain")


def adjust_expert_logits(
    expert_logits: torch.Tensor, class_counts: Sequence[float] | torch.Tensor, exponents: Sequence[float]
) -> torch.Tensor:
    """ẑ_k = z_k + λ_k · log n for expert_logits (K, B, C), class_counts n (C,), exponents λ (K,)."""
    num_experts = expert_logits.shape[0]
    if len(exponents) != num_experts:
        raise LongtailError(
            f"{len(exponents)} logit-adjustment exponents for {num_experts} experts; give one per expert."
        )
    counts = torch.as_tensor(class_counts)
    if counts.shape != expert_logits.shape[-1:]:
        raise LongtailError(
            f"class_counts has shape {tuple(counts.shape)}, the logits have {expert_logits.shape[-1]} classes."
        )
    # Checked only for host counts: a check on device counts would synchronise every training step.
    if counts.device.type == "cpu" and bool((counts <= 0).any()):
        raise LongtailError("Logit adjustment needs every class count > 0 (log n); a class has no training image.")
    counts = counts.to(device=expert_logits.device, dtype=expert_logits.dtype)
    lambdas = torch.as_tensor(exponents, dtype=expert_logits.dtype, device=expert_logits.device)
    return expert_logits + lambdas.view(-1, 1, 1) * counts.log()


class ExpertSet(nn.Module):
    """K experts reading the trunk output: ``forward(shared, experts)`` -> pooled features (n, B, D) of the
    experts ``experts.start`` … ``experts.stop - 1``."""

    num_experts: int


class ExpertBranches(ExpertSet, nn.ModuleList):
    """One module per expert (``self[k]``), each followed by global average pooling."""

    def __init__(self, branches: Sequence[nn.Module]) -> None:
        ExpertSet.__init__(self)
        nn.ModuleList.__init__(self, branches)

    @property
    def num_experts(self) -> int:
        return len(self)

    def forward(self, shared: Any, experts: slice) -> torch.Tensor:
        return torch.stack([torch.flatten(F.adaptive_avg_pool2d(branch(shared), 1), 1) for branch in self[experts]])


class MultiExpertNetwork(Network):
    """``trunk`` shared by the experts; expert k = branch k + global average pool + ``heads[k]``. ``branches``
    is a list of per-expert modules or an ``ExpertSet``."""

    def __init__(
        self,
        trunk: nn.Module,
        branches: Sequence[nn.Module] | ExpertSet,
        heads: Sequence[nn.Module],
        retrain_heads: Sequence[nn.Module] | None = None,
        logit_adjust_exponents: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        experts = branches if isinstance(branches, ExpertSet) else ExpertBranches(branches)
        count = experts.num_experts
        if count < 1 or len(heads) != count:
            raise LongtailError(f"Need at least one expert and one head per expert, got {count} and {len(heads)}.")
        if retrain_heads is not None and len(retrain_heads) != count:
            raise LongtailError(f"Need one re-training head per expert, got {len(retrain_heads)}.")
        if logit_adjust_exponents is not None and len(logit_adjust_exponents) != count:
            raise LongtailError(
                f"logit_adjust_exponents has {len(logit_adjust_exponents)} values for {count} experts; "
                "give one per expert (MDCS: [-0.5, 1, 2.5])."
            )
        self.trunk = trunk
        self.experts = experts
        self.heads = nn.ModuleList(heads)
        self.retrain_heads = nn.ModuleList(retrain_heads) if retrain_heads is not None else None
        self.logit_adjust_exponents = (
            None if logit_adjust_exponents is None else tuple(float(value) for value in logit_adjust_exponents)
        )
        self.head_set = "main"

    @property
    def num_experts(self) -> int:
        return self.experts.num_experts

    def select_heads(self, head_set: str) -> None:
        """Use the 'main' heads or the 'retrain' heads from now on."""
        if head_set not in HEAD_SETS:
            raise LongtailError(f"Head set must be one of {', '.join(HEAD_SETS)}, got {head_set!r}.")
        if head_set == "retrain" and self.retrain_heads is None:
            raise LongtailError("This model was built without re-training heads (build it with retrain_heads=True).")
        self.head_set = head_set

    def active_heads(self) -> nn.ModuleList:
        return self.retrain_heads if self.head_set == "retrain" else self.heads

    def head_modules(self) -> list[nn.Module]:
        return list(self.active_heads())

    def replace_heads(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        heads = self.active_heads()
        for index, head in enumerate(heads):
            heads[index] = fn(head)

    def forward_trunk(self, images: torch.Tensor) -> Any:
        return self.trunk(images)

    def forward_expert(self, shared: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, C), pooled features (B, D)) of expert ``index`` from the trunk output."""
        features = self.experts(shared, slice(index, index + 1))[0]
        return self.active_heads()[index](features), features

    def forward(self, images: torch.Tensor, num_experts: int | None = None) -> ModelOutput:
        used = self._check_num_experts(num_experts)
        expert_features = self.experts(self.forward_trunk(images), slice(0, used))
        heads = self.active_heads()
        expert_logits = torch.stack([heads[index](expert_features[index]) for index in range(used)])
        return ModelOutput(
            logits=expert_logits.mean(dim=0),
            features=expert_features.mean(dim=0),
            expert_logits=expert_logits,
            expert_features=expert_features,
        )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.experts(self.forward_trunk(images), slice(0, self.num_experts)).mean(dim=0)

    def adjusted_expert_logits(
        self, expert_logits: torch.Tensor, class_counts: Sequence[float] | torch.Tensor
    ) -> torch.Tensor:
        """ẑ_k = z_k + λ_k · log n with this model's ``logit_adjust_exponents`` (the first K' when only the
        first K' experts were evaluated)."""
        if self.logit_adjust_exponents is None:
            raise LongtailError(
                "Model built without logit_adjust_exponents; pass e.g. logit_adjust_exponents=[-0.5, 1, 2.5]."
            )
        exponents = self.logit_adjust_exponents[: expert_logits.shape[0]]
        return adjust_expert_logits(expert_logits, class_counts, exponents)

    def _check_num_experts(self, num_experts: int | None) -> int:
        if num_experts is None:
            return self.num_experts
        if not 1 <= num_experts <= self.num_experts:
            raise LongtailError(f"num_experts must be between 1 and {self.num_experts}, got {num_experts}.")
        return num_experts


class ExpertRouter(nn.Module):
    """RIDE's routers a_0 … a_{K−2} (``longtail.methods.ride``): ``forward(i, mean_logits, features)`` is a_i,
    (B,) logits of "expert i+1 is needed"."""

    def __init__(
        self, feature_dim: int, num_experts: int, top_k: int, hidden_dim: int = 16, shared_decision: bool = True
    ) -> None:
        super().__init__()
        if num_experts < 2:
            raise LongtailError(f"A router needs at least 2 experts to choose from, the model has {num_experts}.")
        self.top_k = top_k
        self.hidden = nn.ModuleList(
            nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.ReLU()) for _ in range(num_experts - 1)
        )
        decisions = 1 if shared_decision else num_experts - 1
        self.decision = nn.ModuleList(nn.Linear(hidden_dim + top_k, 1) for _ in range(decisions))

    @property
    def num_routers(self) -> int:
        return len(self.hidden)

    def forward(self, index: int, mean_logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden[index](F.normalize(features, dim=-1))
        top = mean_logits.topk(self.top_k, dim=-1).values.to(hidden.dtype)
        decision = self.decision[index if len(self.decision) > 1 else 0]
        return decision(torch.cat((top, hidden), dim=-1)).squeeze(-1)
