"""SP²OT: the sparse k-NN semantic graph and the MM solver against the official code's fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch

from longtail.clustering.ppot import P2OTSolver
from longtail.clustering.sppot import SP2OTSolver, knn_similarity, restrict
from longtail.errors import LongtailError

STEM = "sppot_mmot_N128_K10"
RHOS = [0.1, 0.5, 1.0]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def case_info(golden_manifest):
    return golden_manifest[STEM]


@pytest.fixture(scope="module")
def fixture(load_golden):
    return load_golden(STEM)


@pytest.mark.shared
def test_graph_matches_official_row_wise_topk(fixture, case_info):
    params = case_info["similarity_params"]
    graph = knn_similarity(fixture["features"], k=params["topk_similarity"], sigma=params["kernel_param"])
    assert scipy.sparse.issparse(graph)
    dense = graph.toarray()
    np.testing.assert_array_equal(dense > 0, fixture["S_dataset"] > 0)
    np.testing.assert_allclose(dense, fixture["S_dataset"], rtol=1e-6, atol=1e-7)
    subgraph = restrict(graph, fixture["data_idxs"])
    assert scipy.sparse.issparse(subgraph)
    np.testing.assert_allclose(subgraph.toarray(), fixture["S"], rtol=1e-6, atol=1e-7)


def test_graph_is_sparse_topk_without_self_loops_and_not_symmetric():
    features = torch.randn(300, 16)
    graph = knn_similarity(features, k=5, sigma=1.0)
    assert graph.nnz == 300 * 5
    assert graph.diagonal().sum() == 0
    assert (np.diff(graph.indptr) == 5).all()
    assert (graph != graph.T).nnz > 0
    distances = torch.cdist(features.double(), features.double()) ** 2
    row = 7
    expected = torch.exp(-distances[row] / (2 * 16)).numpy()
    expected[row] = 0
    top = np.sort(expected)[-5:]
    np.testing.assert_allclose(np.sort(graph.getrow(row).data), top, rtol=1e-10)


def test_graph_rejects_too_few_points():
    with pytest.raises(LongtailError):
        knn_similarity(np.zeros((5, 3)), k=5)


@pytest.mark.shared
@pytest.mark.parametrize("rho", RHOS)
def test_mm_plan_and_iterations_match_official(rho, fixture, case_info):
    case = case_info["cases"][f"rho{rho}"]
    solver = SP2OTSolver(rho, accelerate=False)
    assert solver.structure_lambda(128) == pytest.approx(case["lam1"])
    result = solver.solve(torch.from_numpy(fixture["logits"]), fixture["S"])
    plan = result.plan.numpy()
    np.testing.assert_allclose(plan, fixture[f"Q_rho{rho}_f64"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(plan, fixture[f"Q_rho{rho}"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(plan.sum(1), fixture[f"Q_rho{rho}_rowsum_f64"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(plan.sum(0), fixture[f"Q_rho{rho}_colsum_f64"], rtol=0, atol=1e-8)
    assert result.mm_iterations == case["mm_iterations_f64"]
    assert abs(result.inner_iterations - case["sk_iterations_total_f64"]) <= 50
    assert result.objective == pytest.approx(case["objective_f64"], abs=1e-9)
    assert plan.sum() / 128 == pytest.approx(rho, abs=1e-6)


@pytest.mark.shared
@pytest.mark.parametrize("rho", RHOS)
def test_accelerated_mm_plan_matches_official_in_a_fifth_of_the_inner_iterations(rho, fixture, case_info):
    case = case_info["cases"][f"rho{rho}"]
    result = SP2OTSolver(rho).solve(torch.from_numpy(fixture["logits"]), fixture["S"])
    np.testing.assert_allclose(result.plan.numpy(), fixture[f"Q_rho{rho}_f64"], rtol=0, atol=5e-8)
    assert result.mm_iterations == case["mm_iterations_f64"]
    assert result.objective == pytest.approx(case["objective_f64"], abs=1e-9)
    # inner_tol = 1e-10 lies below the rounding of b, so the official inner loops run to their cap; the
    # accelerated ones stop once the change of b stalls at rounding level
    assert result.inner_iterations < case["sk_iterations_total_f64"] / 5


@pytest.mark.shared
def test_mm_plan_from_our_own_graph_is_close(fixture):
    graph = restrict(knn_similarity(fixture["features"], k=20, sigma=2.0), fixture["data_idxs"])
    plan = SP2OTSolver(0.5).solve(torch.from_numpy(fixture["logits"]), graph).plan.numpy()
    np.testing.assert_allclose(plan, fixture["Q_rho0.5_f64"], rtol=0, atol=1e-6)


def _problem(num_rows=96, num_cols=6):
    features = torch.randn(num_rows, 8)
    return torch.randn(num_rows, num_cols, dtype=torch.float64) * 2, knn_similarity(features, k=10)


def test_sparse_dense_and_torch_sparse_similarities_agree():
    logits, graph = _problem()
    dense = torch.from_numpy(graph.toarray())
    plans = [SP2OTSolver(0.4).solve(logits, similarity).plan for similarity in (graph, dense, dense.to_sparse())]
    for plan in plans[1:]:
        torch.testing.assert_close(plan, plans[0], rtol=0, atol=1e-12)


def test_rho_one_is_stabilised_p2ot():
    logits, graph = _problem()
    sp2ot = SP2OTSolver(1.0).solve(logits, graph)
    p2ot = P2OTSolver(1.0, tol=1e-10, stabilize=True).solve(logits)
    torch.testing.assert_close(sp2ot.plan, p2ot.plan, rtol=0, atol=1e-10)


def test_structure_weight_scales_with_rows_and_fades_with_rho():
    solver = SP2OTSolver(0.25)
    assert solver.structure_lambda(5120) == pytest.approx(750.0)
    assert solver.structure_lambda(512) == pytest.approx(75.0)
    assert SP2OTSolver(0.25, reference_rows=None).structure_lambda(512) == pytest.approx(750.0)
    assert SP2OTSolver(0.25, fix_structure_weight=True).structure_lambda(5120) == pytest.approx(1000.0)


def test_semantic_graph_pulls_neighbours_into_the_same_cluster():
    logits, graph = _problem()
    with_graph = SP2OTSolver(0.5, structure_weight=20_000.0).solve(logits, graph).plan
    without = SP2OTSolver(0.5, structure_weight=0.0).solve(logits, graph).plan
    agreement = [float((plan @ plan.T * torch.from_numpy(graph.toarray())).sum()) for plan in (with_graph, without)]
    assert agreement[0] > agreement[1]


def test_mismatched_similarity_shape_raises():
    logits, graph = _problem()
    with pytest.raises(LongtailError, match="restrict"):
        SP2OTSolver(0.5).solve(logits[:50], graph)


def test_accelerated_and_plain_inner_solves_give_the_same_plan():
    logits, graph = _problem()
    plain = SP2OTSolver(0.3, accelerate=False).solve(logits, graph)
    accelerated = SP2OTSolver(0.3).solve(logits, graph)
    torch.testing.assert_close(accelerated.plan, plain.plan, rtol=0, atol=1e-8)
    assert accelerated.inner_iterations < plain.inner_iterations
