"""Label-free clustering of a fixed feature matrix: k-means, and self-labelling with transport pseudo-labels.

Self-labelling (the P²OT / SP²OT training recipe reduced to fixed features): a cosine head
``z = s · normalize(x) normalize(W)ᵀ`` (s = ``logit_scale``) on frozen features ``x``. Each epoch draws two
views of every sample (Gaussian noise and dropout on the features), computes the logits of the whole set
(the memory bank), and solves the transport for each view: balanced Sinkhorn (``'sinkhorn'``, equal
clusters, SeLa / SwAV), P²OT (``'p2ot'``) or SP²OT (``'sp2ot'``, with the k-NN graph of the clean
features). The pseudo-labels are the rows of ``N·Q`` (they sum to each sample's transported mass, so the
cross-entropy weighs samples by it: this is the confident-sample selection). The head is trained by
swapped prediction, ``½ [CE(z_a, Q_b) + CE(z_b, Q_a)]`` (``swapped=False``: ``CE(z_a, Q_a)``), with soft,
unnormalised targets. ``rho`` ramps from ``rho_start`` to ``rho_end`` over the epochs, either
``exp(-5 (1 - t/T)²)`` (``'sigmoid'``, the papers' default) or linearly. Clusters = argmax of the final
head's logits on the clean features. The features are first centred and scaled to unit mean variance per
dimension (one global factor), so the view noise is relative to their spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import Tensor

from longtail.clustering.ppot import P2OTSolver
from longtail.clustering.sppot import SP2OTSolver, knn_similarity
from longtail.errors import LongtailError, unknown_name_error

TRANSPORTS = ("sinkhorn", "p2ot", "sp2ot")
METHODS = ("kmeans",) + TRANSPORTS
RAMPS = ("sigmoid", "linear")


def rho_ramp(progress: float, start: float = 0.1, end: float = 1.0, kind: str = "sigmoid") -> float:
    """``rho`` at training progress ``t/T`` in [0, 1]: sigmoid ramp ``exp(-5 (1 - t/T)²)`` or linear."""
    if kind not in RAMPS:
        raise unknown_name_error("rho ramp", kind, RAMPS)
    progress = min(max(progress, 0.0), 1.0)
    weight = math.exp(-5.0 * (1.0 - progress) ** 2) if kind == "sigmoid" else progress
    return start + (end - start) * weight


def kmeans_clusters(features: Tensor | np.ndarray, num_clusters: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """k-means (scikit-learn) cluster ids (N,)."""
    points = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
    return KMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed).fit_predict(points).astype(np.int64)


@dataclass
class SelfLabelConfig:
    """Settings of :func:`self_label_clusters` (transport ``'sinkhorn'``, ``'p2ot'`` or ``'sp2ot'``)."""

    transport: str = "p2ot"
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-2
    logit_scale: float = 10.0
    rho_start: float = 0.1
    rho_end: float = 1.0
    rho_ramp: str = "sigmoid"
    swapped: bool = True
    view_noise: float = 0.1
    view_dropout: float = 0.1
    epsilon: float = 0.1
    lam: float = 1.0
    knn: int = 20
    sigma: float = 2.0
    sp2ot_options: dict = field(default_factory=lambda: {"max_iter": 10, "inner_tol": 1e-6})
    seed: int = 0


@dataclass
class SelfLabelResult:
    """Cluster ids (N,), final logits (N, K) and the per-epoch mean training loss."""

    clusters: np.ndarray
    logits: Tensor
    losses: list[float]


class _CosineHead(torch.nn.Module):
    def __init__(self, dim: int, num_clusters: int, scale: float) -> None:
        super().__init__()
        self.prototypes = torch.nn.Parameter(torch.randn(num_clusters, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, features: Tensor) -> Tensor:
        return self.scale * F.normalize(features, dim=1) @ F.normalize(self.prototypes, dim=1).T


def _transport_solver(config: SelfLabelConfig, features: Tensor):
    """A callable ``(logits, rho) -> plan (N, K)`` for the configured transport."""
    if config.transport == "sinkhorn":
        solver = P2OTSolver(1.0, epsilon=config.epsilon, semi_relaxed=False)
        return lambda logits, rho: solver(logits)
    if config.transport == "p2ot":
        solver = P2OTSolver(config.rho_start, epsilon=config.epsilon, lam=config.lam)

        def solve_p2ot(logits: Tensor, rho: float) -> Tensor:
            solver.rho = rho
            return solver(logits)

        return solve_p2ot
    if config.transport == "sp2ot":
        graph = knn_similarity(features, k=config.knn, sigma=config.sigma)
        solver = SP2OTSolver(config.rho_start, epsilon=config.epsilon, lam=config.lam, **config.sp2ot_options)

        def solve_sp2ot(logits: Tensor, rho: float) -> Tensor:
            solver.rho = rho
            return solver(logits, graph)

        return solve_sp2ot
    raise unknown_name_error("transport", config.transport, TRANSPORTS)


def _view(features: Tensor, config: SelfLabelConfig, generator: torch.Generator) -> Tensor:
    noise = torch.randn(features.shape, generator=generator, dtype=features.dtype) * config.view_noise
    keep = torch.rand(features.shape, generator=generator, dtype=features.dtype) >= config.view_dropout
    return (features + noise) * keep


def _soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def self_label_clusters(features: Tensor | np.ndarray, num_clusters: int,
                        config: SelfLabelConfig | None = None) -> SelfLabelResult:
    """Cluster fixed ``features`` (N, D) by self-labelling a cosine head (see the module docstring)."""
    config = config or SelfLabelConfig()
    points = torch.as_tensor(np.asarray(features, dtype=np.float32) if not isinstance(features, Tensor)
                             else features.detach().float().cpu())
    if points.dim() != 2 or points.shape[0] < num_clusters:
        raise LongtailError(f"features must be (N, D) with N >= {num_clusters} clusters; got {tuple(points.shape)}.")
    points = points - points.mean(dim=0)
    points = points / points.pow(2).sum(dim=1).mean().sqrt().clamp_min(1e-12) * math.sqrt(points.shape[1])
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    head = _CosineHead(points.shape[1], num_clusters, config.logit_scale)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr)
    transport = _transport_solver(config, points)
    num_rows = points.shape[0]
    losses = []
    for epoch in range(config.epochs):
        rho = rho_ramp(epoch / max(config.epochs - 1, 1), config.rho_start, config.rho_end, config.rho_ramp)
        view_a, view_b = _view(points, config, generator), _view(points, config, generator)
        with torch.no_grad():
            plan_a = transport(head(view_a), rho).float()
            plan_b = transport(head(view_b), rho).float() if config.swapped else plan_a
        epoch_loss = 0.0
        for batch in torch.randperm(num_rows, generator=generator).split(config.batch_size):
            if config.swapped:
                loss = 0.5 * (_soft_cross_entropy(head(view_a[batch]), plan_b[batch])
                              + _soft_cross_entropy(head(view_b[batch]), plan_a[batch]))
            else:
                loss = _soft_cross_entropy(head(view_a[batch]), plan_a[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() * len(batch)
        losses.append(epoch_loss / num_rows)
    with torch.no_grad():
        logits = head(points)
    return SelfLabelResult(logits.argmax(dim=1).numpy().astype(np.int64), logits, losses)


def cluster_features(features: Tensor | np.ndarray, num_clusters: int, method: str, seed: int = 0,
                     **options) -> np.ndarray:
    """Cluster ids (N,) by ``method`` in ``METHODS``; ``options`` go to :class:`SelfLabelConfig`."""
    if method == "kmeans":
        return kmeans_clusters(features, num_clusters, seed=seed)
    if method not in TRANSPORTS:
        raise unknown_name_error("clustering method", method, METHODS)
    config = SelfLabelConfig(transport=method, seed=seed, **options)
    return self_label_clusters(features, num_clusters, config).clusters
