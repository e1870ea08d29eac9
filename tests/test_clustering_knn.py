"""The exact blocked k-NN search behind SP²OT's semantic graph, against scikit-learn and a brute reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors
from torch.profiler import ProfilerActivity, profile

from longtail.clustering import sppot
from longtail.clustering.sppot import knn_similarity, nearest_neighbours

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_reference(points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All float64 squared distances from differences, self excluded, ordered by (distance, index)."""
    exact = points.to(torch.float64)
    squared = (exact[:, None] - exact[None]).square().sum(2)
    squared.fill_diagonal_(torch.inf)
    order = squared.sort(dim=1, stable=True).indices[:, :k]
    return squared.gather(1, order), order


@pytest.mark.parametrize(
    ("num_points", "dim", "k", "dtype"),
    [
        (500, 16, 20, torch.float32),
        (333, 64, 7, torch.float64),
        (41, 3, 40, torch.float32),
        (1000, 128, 20, torch.float32),
    ],
)
def test_neighbours_match_scikit_learn(num_points, dim, k, dtype):
    points = torch.randn(num_points, dim, dtype=dtype) * 3 + 1
    squared, neighbours = nearest_neighbours(points, k)
    distances, expected = NearestNeighbors(n_neighbors=k).fit(points.double().numpy()).kneighbors()
    assert squared.dtype == torch.float64 and neighbours.dtype == torch.int64
    np.testing.assert_array_equal(np.sort(neighbours.numpy(), axis=1), np.sort(expected, axis=1))
    np.testing.assert_array_equal(neighbours.numpy(), expected)  # no ties in random data: the same order
    np.testing.assert_allclose(squared.sqrt().numpy(), distances, rtol=0, atol=1e-10)


def test_duplicate_points_tie_to_the_smaller_index_and_agree_with_scikit_learn_elsewhere():
    base = torch.randn(80, 8)
    points = base[torch.randint(0, 80, (240,))]  # three copies of a point on average, some many more
    k = 6
    squared, neighbours = nearest_neighbours(points, k)
    expected_squared, expected = brute_reference(points, k)
    torch.testing.assert_close(neighbours, expected, rtol=0, atol=0)
    torch.testing.assert_close(squared, expected_squared, rtol=0, atol=0)
    distances, sklearn_neighbours = NearestNeighbors(n_neighbors=k).fit(points.double().numpy()).kneighbors()
    np.testing.assert_allclose(squared.sqrt().numpy(), distances, rtol=0, atol=1e-10)
    all_squared = torch.cdist(points.double(), points.double()).square().fill_diagonal_(torch.inf)
    next_squared = all_squared.sort(dim=1).values[:, k]
    no_tie_at_k = (next_squared - squared[:, -1]).numpy() > 1e-9
    assert no_tie_at_k.any()
    np.testing.assert_array_equal(
        np.sort(neighbours.numpy()[no_tie_at_k], axis=1), np.sort(sklearn_neighbours[no_tie_at_k], axis=1)
    )


@pytest.mark.parametrize("k", [1, 5, 30])
def test_massive_ties_on_an_integer_grid_are_resolved_exactly(k):
    points = torch.randint(0, 3, (300, 3)).float()
    points[:60] = 0.0  # 60 identical points: more ties at the k-th place than spare candidates
    squared, neighbours = nearest_neighbours(points, k)
    expected_squared, expected = brute_reference(points, k)
    torch.testing.assert_close(neighbours, expected, rtol=0, atol=0)
    torch.testing.assert_close(squared, expected_squared, rtol=0, atol=0)


@pytest.mark.parametrize(("offset", "spread"), [(10.0, 0.01), (1000.0, 1.0)])
def test_far_apart_clusters_beyond_float32_screening_accuracy_are_still_exact(offset, spread):
    # two clusters at -offset and +offset: centring does not shrink the norms, and the float32 screen's
    # cancellation error is about as large as the gaps between neighbours
    points = spread * torch.randn(400, 16, dtype=torch.float64)
    points[::2] += offset
    points[1::2] -= offset
    squared, neighbours = nearest_neighbours(points, 10)
    expected_squared, expected = brute_reference(points, 10)
    torch.testing.assert_close(neighbours, expected, rtol=0, atol=0)
    torch.testing.assert_close(squared, expected_squared, rtol=0, atol=0)


def test_every_allocation_of_the_search_stays_within_the_memory_bound():
    points = torch.randn(500, 8)  # the float64 copy (32 kB) and the outputs (40 kB) fit the budget too
    budget = 64 * 1024
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        squared, neighbours = nearest_neighbours(points, 10, max_block_bytes=budget)
    events = profiler.events()
    assert sum(event.name == "aten::mm" for event in events) > 10  # many blocks
    assert max(event.cpu_memory_usage for event in events) <= budget
    expected_squared, expected = brute_reference(points, 10)
    torch.testing.assert_close(neighbours, expected, rtol=0, atol=0)
    torch.testing.assert_close(squared, expected_squared, rtol=0, atol=1e-12)


def test_a_budget_below_one_row_still_searches_one_row_at_a_time():
    points = torch.randn(50, 4)
    squared, neighbours = nearest_neighbours(points, 3, max_block_bytes=1)
    torch.testing.assert_close(neighbours, brute_reference(points, 3)[1], rtol=0, atol=0)


@pytest.fixture
def bf16_cpu_matmul():
    previous = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    yield
    torch.backends.mkldnn.matmul.fp32_precision = previous


@pytest.mark.usefixtures("bf16_cpu_matmul")
def test_screen_is_float64_when_float32_products_are_not_ieee(monkeypatch):
    dtypes = []
    screen_scores = sppot._screen_scores
    monkeypatch.setattr(sppot, "_screen_scores", lambda q, c, out: dtypes.append(q.dtype) or screen_scores(q, c, out))
    points = torch.randn(400, 32)
    squared, neighbours = nearest_neighbours(points, 12)
    assert set(dtypes) == {torch.float64}
    torch.testing.assert_close(neighbours, brute_reference(points, 12)[1], rtol=0, atol=0)


def test_graph_equals_the_scikit_learn_graph():
    features = np.random.default_rng(0).normal(size=(400, 24)).astype(np.float32)
    graph = knn_similarity(features, k=15, sigma=2.0)
    distances, neighbours = NearestNeighbors(n_neighbors=15).fit(features.astype(np.float64)).kneighbors()
    expected = np.zeros((400, 400))
    np.put_along_axis(expected, neighbours, np.exp(-(distances**2) / (2 * 4.0 * 24)), axis=1)
    np.testing.assert_allclose(graph.toarray(), expected, rtol=1e-12, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_search_equals_the_cpu_search():
    points = torch.randn(3000, 64)
    squared, neighbours = nearest_neighbours(points, 20)
    cuda_squared, cuda_neighbours = nearest_neighbours(points.cuda(), 20)
    assert cuda_neighbours.device.type == "cuda"
    torch.testing.assert_close(cuda_neighbours.cpu(), neighbours, rtol=0, atol=0)
    torch.testing.assert_close(cuda_squared.cpu(), squared, rtol=0, atol=1e-12)
