"""Long-tailed profiles, within-class selection and shot groups against the official code's numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longtail.data.shaping import check_imbalance, class_counts, default_thresholds, select_per_class, shot_groups
from longtail.errors import LongtailError


def test_profiles_match_golden(golden):
    cases = json.loads((golden / "profiles_cifar_lt.json").read_text())
    assert len(cases) == 8
    for key, case in cases.items():
        counts = class_counts(case["n_max"], case["num_classes"], case["imbalance_ratio"], case["imb_type"])
        assert counts == case["counts"], key
        assert sum(counts) == case["total"], key


def test_known_totals():
    assert class_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert [sum(class_counts(500, 100, f)) for f in (100, 50, 10)] == [10847, 12608, 19573]


@pytest.mark.parametrize("stem, num_classes, n_max", [
    ("selection_cifar10_IF100_seed0", 10, 5000),
    ("selection_cifar100_IF100_seed0", 100, 500),
])
def test_shuffle_selection_matches_golden(load_golden, stem, num_classes, n_max):
    data = load_golden(stem)
    counts = class_counts(n_max, num_classes, 100)
    assert counts == data["counts"].tolist()
    for order in ("sorted", "shuffled"):
        kept, left_out = select_per_class(data[f"targets_{order}"], counts, "shuffle", seed=0)
        np.testing.assert_array_equal(kept, data[f"selected_indices_{order}"])
        np.testing.assert_array_equal(data[f"targets_{order}"][kept], data["new_targets"])
        assert len(kept) + len(left_out) == len(data[f"targets_{order}"])
        assert not np.intersect1d(kept, left_out).size
    kept, _ = select_per_class(data["targets_sorted"], counts, "shuffle", seed=0)
    np.testing.assert_array_equal(kept - np.repeat(np.arange(num_classes) * n_max, counts),
                                  data["selected_within_class_rank"])


def test_selection_leaves_numpy_global_state_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    select_per_class(np.repeat(np.arange(3), 10), [10, 5, 2], "shuffle", seed=0)
    assert np.random.rand() == expected


def test_first_selection_keeps_file_order():
    targets = np.array([1, 0, 1, 0, 1, 0, 1])
    kept, left_out = select_per_class(targets, [2, 1], "first")
    np.testing.assert_array_equal(kept, [1, 3, 0])
    np.testing.assert_array_equal(left_out, [5, 2, 4, 6])


def test_step_profile_and_balanced():
    assert class_counts(100, 4, 10, "step") == [100, 100, 10, 10]
    assert class_counts(100, 5, 10, "step") == [100, 100, 10, 10, 10]
    assert class_counts(7, 3, 1) == [7, 7, 7]


@pytest.mark.parametrize("bad", [0.5, 0, -3, float("nan"), "ten"])
def test_imbalance_below_one_is_rejected(bad):
    with pytest.raises(LongtailError, match="Imbalance factor"):
        check_imbalance(bad)


def test_unknown_profile_and_selection_suggest():
    with pytest.raises(LongtailError, match="Did you mean 'exp'"):
        class_counts(10, 3, 10, "expo")
    with pytest.raises(LongtailError, match="Did you mean 'first'"):
        select_per_class(np.zeros(3, int), [1], "firts")


def test_selection_cannot_exceed_a_class():
    with pytest.raises(LongtailError, match="Class 1 has 2 images"):
        select_per_class(np.array([0, 0, 0, 1, 1]), [3, 3])


def test_shot_groups_thresholds():
    groups = shot_groups([101, 100, 20, 19, 500, 5])
    np.testing.assert_array_equal(groups["many"], [0, 4])
    np.testing.assert_array_equal(groups["medium"], [1, 2])
    np.testing.assert_array_equal(groups["few"], [3, 5])
    assert default_thresholds(5000) == (100.0, 20.0)
    assert default_thresholds(124) == pytest.approx((24.8, 4.96))
