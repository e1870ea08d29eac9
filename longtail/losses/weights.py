"""Per-class quantities shared by the long-tailed losses: class-balanced weights and LDAM margins."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _counts(counts: Sequence[int] | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(counts, dtype=dtype)


def effective_number_weights(
    counts: Sequence[int] | torch.Tensor, beta: float = 0.9999, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Class-balanced weights of Cui et al. (CVPR 2019): w_c = (1 - beta) / (1 - beta^n_c), scaled to sum to C."""
    n = _counts(counts, torch.float64)
    weights = (1.0 - beta) / (1.0 - torch.pow(beta, n))
    weights = weights * len(n) / weights.sum()
    return weights.to(dtype)


def ldam_margins(
    counts: Sequence[int] | torch.Tensor, max_m: float = 0.5, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """LDAM margins of Cao et al. (NeurIPS 2019): m_c proportional to n_c^(-1/4), the rarest class gets max_m."""
    n = _counts(counts, torch.float64)
    margins = n.pow(-0.25)
    margins = margins * (max_m / margins.max())
    return margins.to(dtype)
