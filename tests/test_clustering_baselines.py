"""Clustering harness: rho ramp, k-means and the self-labelling loop with each transport."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from longtail.clustering.baselines import (
    SelfLabelConfig,
    cluster_features,
    kmeans_clusters,
    rho_ramp,
    self_label_clusters,
)
from longtail.clustering.metrics import cluster_accuracy
from longtail.errors import LongtailError

SIZES = [60, 30, 15]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(n_samples=SIZES, n_features=6, cluster_std=1.0, random_state=0)


def test_sigmoid_and_linear_ramps():
    assert rho_ramp(0.0) == pytest.approx(0.1 + 0.9 * math.exp(-5))
    assert rho_ramp(1.0) == pytest.approx(1.0)
    assert rho_ramp(0.5) == pytest.approx(0.1 + 0.9 * math.exp(-1.25))
    assert rho_ramp(0.25, kind="linear") == pytest.approx(0.325)
    with pytest.raises(LongtailError, match="linear"):
        rho_ramp(0.5, kind="lineer")


def test_kmeans_recovers_separated_blobs(blobs):
    features, targets = blobs
    assert cluster_accuracy(kmeans_clusters(features, 3), targets) == 1.0


def test_balanced_sinkhorn_makes_equal_clusters(blobs):
    features, _ = blobs
    result = self_label_clusters(features, 3, SelfLabelConfig(transport="sinkhorn", epochs=20))
    sizes = np.bincount(result.clusters, minlength=3)
    assert sizes.max() - sizes.min() <= 0.15 * len(features)
    assert result.losses[-1] < result.losses[0]


@pytest.mark.parametrize("transport, min_accuracy", [("p2ot", 0.75), ("sp2ot", 0.9)])
def test_partial_transport_self_labelling_finds_the_imbalanced_clusters(blobs, transport, min_accuracy):
    features, targets = blobs
    config = SelfLabelConfig(transport=transport, epochs=10, sp2ot_options={"max_iter": 3, "inner_tol": 1e-6})
    result = self_label_clusters(features, 3, config)
    assert result.logits.shape == (len(features), 3)
    assert cluster_accuracy(result.clusters, targets) >= min_accuracy


def test_self_labelling_is_reproducible(blobs):
    features, _ = blobs
    first = cluster_features(features, 3, "p2ot", seed=3, epochs=3)
    second = cluster_features(features, 3, "p2ot", seed=3, epochs=3)
    np.testing.assert_array_equal(first, second)


def test_unknown_method_suggests_the_closest():
    with pytest.raises(LongtailError, match="p2ot"):
        cluster_features(np.zeros((10, 2)), 2, "p2tt")
