"""Clustering metrics against hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail.clustering.metrics import (
    cluster_accuracy,
    clustering_metrics,
    contingency_matrix,
    hungarian_mapping,
    shot_groups_by_size,
)
from longtail.errors import LongtailError

TARGETS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])


def test_permuted_labels_are_perfect():
    permutation = np.array([2, 3, 0, 1])
    metrics = clustering_metrics(permutation[TARGETS], TARGETS)
    for name in ("acc", "mean_class_acc", "nmi", "ari", "macro_f1", "head", "medium", "tail"):
        assert metrics[name] == pytest.approx(1.0), name
    np.testing.assert_array_equal(metrics["mapping"][permutation], np.arange(4))


def test_hand_computed_example():
    # clusters 7 and 5 swap the ids of classes 0 and 1; cluster 5 also takes one sample of class 0; cluster 9
    # holds class 2 and the class-3 sample.
    clusters = np.array([7, 7, 7, 5, 5, 5, 5, 9, 9, 9])
    metrics = clustering_metrics(clusters, TARGETS, train_counts=[40, 30, 20, 10])
    np.testing.assert_array_equal(metrics["mapping"][[5, 7, 9]], [1, 0, 2])
    assert metrics["acc"] == pytest.approx(8 / 10)
    np.testing.assert_allclose(metrics["per_class"], [3 / 4, 1.0, 1.0, 0.0])
    assert metrics["mean_class_acc"] == pytest.approx((0.75 + 1 + 1 + 0) / 4)
    # 4 classes: head = the int(1.2) = 1 largest, tail = the 1 smallest, medium = the two in between
    assert metrics["head"] == pytest.approx(0.75)
    assert metrics["medium"] == pytest.approx(1.0)
    assert metrics["tail"] == pytest.approx(0.0)
    # F1 per class: c0 P=1 R=3/4 -> 6/7; c1 P=3/4 R=1 -> 6/7; c2 P=2/3 R=1 -> 4/5; c3 0
    assert metrics["macro_f1"] == pytest.approx((6 / 7 + 6 / 7 + 4 / 5 + 0) / 4)
    assert 0 < metrics["nmi"] < 1 and 0 < metrics["ari"] < 1


def test_more_clusters_than_classes_leaves_extra_clusters_unmatched():
    clusters = np.array([0, 0, 0, 4, 1, 1, 1, 2, 2, 3])
    mapping = hungarian_mapping(clusters, TARGETS)
    assert (mapping == -1).sum() == 1
    assert mapping[4] == -1
    assert cluster_accuracy(clusters, TARGETS) == pytest.approx(9 / 10)


def test_fewer_clusters_than_classes():
    clusters = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert cluster_accuracy(clusters, TARGETS) == pytest.approx(7 / 10)
    metrics = clustering_metrics(clusters, TARGETS)
    np.testing.assert_allclose(metrics["per_class"], [1, 1, 0, 0])


def test_contingency_counts_and_torch_inputs():
    counts = contingency_matrix(torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0]))
    np.testing.assert_array_equal(counts, [[0, 1], [1, 1]])


def test_shot_groups_follow_training_size_and_cover_all_classes():
    groups = shot_groups_by_size(10, train_counts=[5, 50, 500, 1, 2, 3, 4, 6, 7, 8])
    np.testing.assert_array_equal(groups["head"], [2, 1, 9])
    np.testing.assert_array_equal(groups["tail"], [5, 4, 3])
    assert sorted(np.concatenate(list(groups.values())).tolist()) == list(range(10))
    np.testing.assert_array_equal(shot_groups_by_size(10)["medium"], [3, 4, 5, 6])


def test_absent_classes_are_ignored_in_means():
    metrics = clustering_metrics(np.array([0, 0, 1]), np.array([0, 0, 1]), num_classes=4)
    assert np.isnan(metrics["per_class"][2:]).all()
    assert metrics["mean_class_acc"] == pytest.approx(1.0)


@pytest.mark.parametrize("clusters, targets", [([0, 1], [0]), ([0.5, 1.0], [0, 1]), ([-1, 0], [0, 1])])
def test_bad_inputs_raise(clusters, targets):
    with pytest.raises(LongtailError):
        clustering_metrics(np.array(clusters), np.array(targets))
