"""Per-class quantities shared by the long-tailed losses: class-balanced weights, LDAM margins, class priors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from longtail.errors import LongtailError


def _counts(counts: Sequence[int] | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(counts, dtype=dtype)


def check_class_counts(counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``counts`` as a float64 tensor; a LongtailError unless it is a non-empty 1-D list of positive numbers."""
    n = torch.as_tensor(counts, dtype=torch.float64).cpu()
    if n.dim() != 1 or n.numel() == 0:
        raise LongtailError(
            f"class_counts must be a non-empty list with one training count per class, got shape {tuple(n.shape)}."
        )
    if not bool((n > 0).all()):
        empty = torch.nonzero(n <= 0).flatten().tolist()
        raise LongtailError(
            f"class_counts must be positive, but classes {empty[:10]} have no training images; "
            "remove those classes from the dataset or give every class at least one image."
        )
    return n


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


def log_class_prior(counts: Sequence[int] | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log pi_c with pi_c = n_c / sum_k n_k, the training label distribution."""
    n = _counts(counts, torch.float64)
    return (n / n.sum()).log().to(dtype)
