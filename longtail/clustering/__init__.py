"""Deep imbalanced clustering: P²OT / SP²OT transport solvers, clustering metrics and a label-free harness.

- :mod:`.ppot`: the P²OT solver (``P2OTSolver``, ``partial_transport``, ``p2ot_plan``, ``sinkhorn_plan``).
- :mod:`.sppot`: SP²OT (``SP2OTSolver``) and its sparse k-NN semantic graph (``knn_similarity``, ``restrict``).
- :mod:`.metrics`: accuracy after Hungarian matching, NMI, ARI, macro-F1, head / medium / tail.
- :mod:`.baselines`: k-means and self-labelling of fixed features with Sinkhorn, P²OT or SP²OT pseudo-labels.
"""

from longtail.clustering.baselines import (
    METHODS,
    SelfLabelConfig,
    cluster_features,
    kmeans_clusters,
    rho_ramp,
    self_label_clusters,
)
from longtail.clustering.metrics import cluster_accuracy, clustering_metrics, hungarian_mapping
from longtail.clustering.ppot import (
    P2OTSolver,
    ScalingState,
    TransportResult,
    cost_from_logits,
    p2ot_plan,
    partial_transport,
    sinkhorn_plan,
)
from longtail.clustering.sppot import SP2OTSolver, knn_similarity, restrict

__all__ = [
    "METHODS",
    "P2OTSolver",
    "SP2OTSolver",
    "ScalingState",
    "SelfLabelConfig",
    "TransportResult",
    "cluster_accuracy",
    "cluster_features",
    "clustering_metrics",
    "cost_from_logits",
    "hungarian_mapping",
    "kmeans_clusters",
    "knn_similarity",
    "p2ot_plan",
    "partial_transport",
    "restrict",
    "rho_ramp",
    "self_label_clusters",
    "sinkhorn_plan",
]
