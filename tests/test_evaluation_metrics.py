"""Every metric of ``evaluate`` against a small example computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longtail.errors import LongtailError
from longtail.evaluation import LogitCollector, evaluate, evaluate_heads, expected_calibration_error, output_heads
from longtail.models.output import ModelOutput

# 6 classes: many = {0, 1} (> 100 images), medium = {2, 3} (20..100), few = {4, 5} (< 20).
TRAIN_COUNTS = [200, 150, 50, 30, 10, 5]
TARGETS = [0, 0, 1, 2, 3, 4, 5, 5]
# One probability row per sample: (predicted class, its probability, probability of the target if it differs).
# The remaining probability mass is split evenly over the other classes.
ROWS = [
    (0, 0.90, None),
    (1, 0.62, 0.20),
    (1, 0.82, None),
    (2, 0.95, None),
    (0, 0.50, 0.30),
    (4, 0.92, None),
    (5, 0.48, None),
    (3, 0.55, 0.05),  # the target (5) has the smallest probability: outside the top 5
]


def _probabilities() -> np.ndarray:
    probs = np.zeros((len(ROWS), 6))
    for i, (predicted, confidence, target_probability) in enumerate(ROWS):
        fixed = {predicted: confidence}
        if target_probability is not None:
            fixed[TARGETS[i]] = target_probability
        rest = [c for c in range(6) if c not in fixed]
        probs[i, rest] = (1.0 - sum(fixed.values())) / len(rest)
        for c, p in fixed.items():
            probs[i, c] = p
    return probs


@pytest.fixture(scope="module")
def metrics():
    return evaluate(np.log(_probabilities()), TARGETS, TRAIN_COUNTS, many=100, few=20)


def test_accuracies_by_hand(metrics):
    # correct: samples 0, 2, 3, 5, 6 -> 5 / 8; top-5 misses only sample 7.
    assert metrics["top1"] == pytest.approx(5 / 8)
    assert metrics["top5"] == pytest.approx(7 / 8)
    # per class: c0 1/2, c1 1/1, c2 1/1, c3 0/1, c4 1/1, c5 1/2
    np.testing.assert_allclose(metrics["per_class"], [0.5, 1.0, 1.0, 0.0, 1.0, 0.5])
    assert metrics["balanced_accuracy"] == pytest.approx(4 / 6)
    assert metrics["many"] == pytest.approx(0.75)
    assert metrics["medium"] == pytest.approx(0.5)
    assert metrics["few"] == pytest.approx(0.75)
    assert metrics["shot_sizes"] == {"many": 2, "medium": 2, "few": 2}


def test_macro_f1_by_hand(metrics):
    # F1 per class: c0 P=1/2 R=1/2 -> 1/2; c1 P=1/2 R=1 -> 2/3; c2 1; c3 0; c4 1; c5 P=1 R=1/2 -> 2/3.
    assert metrics["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 1 + 0 + 1 + 2 / 3) / 6)


def test_ece_by_hand(metrics):
    # bins of width 1/15: {0.90 ok, 0.92 ok} -> |1 - 0.91|; {0.50 wrong, 0.48 ok} -> |0.5 - 0.49|;
    # singletons 0.62 wrong, 0.82 ok, 0.95 ok, 0.55 wrong.
    expected = (2 * 0.09 + 2 * 0.01 + 0.62 + 0.18 + 0.05 + 0.55) / 8
    assert metrics["ece"] == pytest.approx(expected, abs=1e-12)


def test_nll_by_hand(metrics):
    target_probabilities = [0.90, 0.20, 0.82, 0.95, 0.30, 0.92, 0.48, 0.05]
    assert metrics["nll"] == pytest.approx(-sum(math.log(p) for p in target_probabilities) / 8, rel=1e-12)


def test_confusion_by_hand(metrics):
    expected = np.zeros((6, 6), dtype=np.int64)
    for target, prediction in zip(TARGETS, [0, 1, 1, 2, 0, 4, 5, 3]):
        expected[target, prediction] += 1
    np.testing.assert_array_equal(metrics["confusion"], expected)
    assert metrics["confusion"].sum() == metrics["num_samples"] == 8


def test_ece_bin_edges_belong_to_the_lower_bin():
    # Confidence 0.6 = 9/15 sits on an edge: it shares the bin (8/15, 9/15] with 0.55.
    probabilities = torch.tensor([[0.6, 0.4], [0.55, 0.45]], dtype=torch.float64)
    ece = expected_calibration_error(probabilities, torch.tensor([0, 1]))
    assert ece == pytest.approx(abs(0.5 - 0.575))


def test_empty_groups_are_none_and_top5_needs_five_classes():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    metrics = evaluate(logits, torch.tensor([0, 1]), [500, 400, 300])
    assert metrics["many"] == pytest.approx(0.5)
    assert metrics["medium"] is None and metrics["few"] is None
    assert metrics["top5"] is None
    assert np.isnan(metrics["per_class"][2]) and metrics["balanced_accuracy"] == pytest.approx(0.5)


def test_thresholds_are_configurable():
    logits = torch.eye(3)
    metrics = evaluate(logits, torch.arange(3), [50, 8, 2], many=10, few=4)
    assert metrics["shot_sizes"] == {"many": 1, "medium": 1, "few": 1}


def test_thresholds_default_to_the_datasets_own():
    from longtail.data import create_datasets

    info = create_datasets("digits-lt", imbalance=10, image_size=8).info
    logits = torch.randn(info.num_classes, info.num_classes)
    targets = torch.arange(info.num_classes)
    assert max(info.train_counts) < 500 and info.shot_thresholds != (100.0, 20.0)
    from_counts = evaluate(logits, targets, info.train_counts)
    from_info = evaluate(logits, targets, info)
    assert from_counts["thresholds"] == from_info["thresholds"] == dict(zip(("many", "few"), info.shot_thresholds))
    assert from_counts["shot_sizes"] == {name: len(classes) for name, classes in info.shot_groups.items()}


def test_bad_inputs_give_clear_errors():
    with pytest.raises(LongtailError, match="train_counts has 2 classes"):
        evaluate(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), [5, 5])
    with pytest.raises(LongtailError, match="class indices"):
        evaluate(torch.zeros(2, 3), torch.tensor([0, 3]), [5, 5, 5])
    with pytest.raises(LongtailError, match="N > 0"):
        evaluate(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), [5, 5, 5])


def test_heads_of_a_multi_expert_and_two_token_output():
    experts = torch.randn(3, 4, 6)
    output = ModelOutput(
        logits=experts.mean(0),
        expert_logits=experts,
        aux={"cls_logits": experts[0], "dist_logits": experts[1], "attention": torch.zeros(4, 2)},
    )
    heads = output_heads(output)
    assert list(heads) == ["main", "expert_0", "expert_1", "expert_2", "cls", "dist"]
    torch.testing.assert_close(heads["expert_2"], experts[2])
    collector = LogitCollector()
    targets = torch.tensor([0, 1, 2, 3])
    collector.add(output, targets)
    collector.add(output, targets)
    results = collector.evaluate(TRAIN_COUNTS)
    assert set(results) == set(heads)
    direct = evaluate_heads({"expert_1": torch.cat([experts[1]] * 2)}, torch.cat([targets] * 2), TRAIN_COUNTS)
    assert results["expert_1"]["top1"] == direct["expert_1"]["top1"]
    assert results["dist"]["nll"] == pytest.approx(direct["expert_1"]["nll"])
