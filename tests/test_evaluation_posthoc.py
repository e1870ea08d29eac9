"""Post-hoc tau-normalisation, logit adjustment and the choice of tau."""

from __future__ import annotations

import math

import pytest
import torch

from longtail.errors import LongtailError
from longtail.evaluation import posthoc_logit_adjust, select_tau, tau_normalized_weight


def test_tau_normalisation_by_hand():
    weight = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)  # row norms 5 and 2
    torch.testing.assert_close(tau_normalized_weight(weight, 0.0), weight)
    torch.testing.assert_close(
        tau_normalized_weight(weight, 1.0), torch.tensor([[0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        tau_normalized_weight(weight, 0.5),
        torch.tensor([[3 / math.sqrt(5), 4 / math.sqrt(5)], [0.0, 2 / math.sqrt(2)]], dtype=torch.float64),
    )


def test_tau_normalisation_of_conv_weights_and_zero_rows():
    weight = torch.randn(4, 3, 2, 2)
    weight[1] = 0
    normalized = tau_normalized_weight(weight, 1.0)
    norms = normalized.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms[[0, 2, 3]], torch.ones(3))
    assert torch.equal(normalized[1], weight[1])


def test_posthoc_adjustment_is_exported_here():
    logits = torch.zeros(1, 2)
    adjusted = posthoc_logit_adjust(logits, [9, 1], tau=2.0)
    torch.testing.assert_close(adjusted, torch.tensor([[-2 * math.log(0.9), -2 * math.log(0.1)]]))


def test_select_tau_finds_the_adjustment_that_balances_a_biased_classifier():
    # Features are perfectly informative, but the head is biased towards class 0 by log(100).
    targets = torch.arange(4).repeat_interleave(25)
    clean = torch.nn.functional.one_hot(targets, 4).float()
    counts = [1000, 100, 10, 10]
    biased = clean + torch.log(torch.tensor(counts, dtype=torch.float32) / sum(counts))
    best, scores = select_tau(lambda tau: posthoc_logit_adjust(biased, counts, tau), targets, taus=[0.0, 1.0, 2.0])
    assert scores[0.0] < 1.0 and scores[1.0] == 1.0
    assert best == 1.0


def test_select_tau_needs_a_grid():
    with pytest.raises(LongtailError, match="at least one tau"):
        select_tau(lambda tau: torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), taus=[])
