"""P²OT solver: golden parity with the official code (iteration counts with the acceleration off, plans with it
on), the mass constraint, agreement with POT, stability, and the accelerated solver's building blocks."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from longtail.clustering import ppot
from longtail.clustering.ppot import (
    P2OTSolver,
    ScalingState,
    cost_from_logits,
    p2ot_plan,
    partial_transport,
    sinkhorn_plan,
)
from longtail.clustering.scaling import AndersonMixer, build_kernel, scaling_pass
from longtail.errors import LongtailError

FIXTURES = ["ppot_N256_K10", "ppot_N512_K20"]
RHOS = [0.1, 0.5, 1.0]


pytestmark = pytest.mark.usefixtures("one_thread")


def _cost(data: dict, key: str = "logits") -> torch.Tensor:
    return cost_from_logits(torch.from_numpy(data[key]))


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("rho", RHOS)
def test_plan_b_and_iterations_match_official_float64(stem, rho, load_golden, golden_manifest):
    data, case = load_golden(stem), golden_manifest[stem]["cases"][f"rho{rho}"]
    result = partial_transport(_cost(data), rho, accelerate=False)
    plan = result.plan.numpy()
    np.testing.assert_allclose(plan, data[f"Q_rho{rho}_f64"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(plan.sum(1), data[f"Q_rho{rho}_rowsum_f64"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(plan.sum(0), data[f"Q_rho{rho}_colsum_f64"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(result.state.b.numpy(), data[f"b_rho{rho}_f64"], rtol=1e-10, atol=1e-12)
    assert result.iterations == case["iterations_f64"]
    assert result.error == pytest.approx(case.get("final_err_f64", result.error), rel=1e-6)


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("rho", RHOS)
def test_official_float32_marginals_reproduce_official_plans(stem, rho, load_golden, golden_manifest):
    data, case = load_golden(stem), golden_manifest[stem]["cases"][f"rho{rho}"]
    result = partial_transport(_cost(data), rho, marginals="official_f32", accelerate=False)
    np.testing.assert_allclose(result.plan.float().numpy(), data[f"Q_rho{rho}"], rtol=0, atol=1e-7)
    assert result.iterations == case["iterations_asis"]


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
def test_balanced_variant_matches_official(stem, load_golden, golden_manifest):
    data, case = load_golden(stem), golden_manifest[stem]["cases"]["pot_rho0.5"]
    exact = partial_transport(_cost(data), 0.5, semi_relaxed=False, accelerate=False)
    np.testing.assert_allclose(exact.plan.numpy(), data["Q_pot_rho0.5_f64"], rtol=0, atol=1e-10)
    assert exact.iterations == case["iterations_f64"]
    official = partial_transport(_cost(data), 0.5, semi_relaxed=False, marginals="official_f32", accelerate=False)
    np.testing.assert_allclose(official.plan.float().numpy(), data["Q_pot_rho0.5"], rtol=0, atol=1e-7)
    assert official.iterations == case["iterations_asis"] == 1000


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
def test_warm_start_on_second_view_matches_official(stem, load_golden, golden_manifest):
    data, case = load_golden(stem), golden_manifest[stem]["cases"]["warm_start_rho0.5"]
    solver = P2OTSolver(0.5, accelerate=False)
    solver.solve(torch.from_numpy(data["logits"]))
    warm = solver.solve(torch.from_numpy(data["logits_view2"]))
    np.testing.assert_allclose(warm.plan.numpy(), data["Q_warm_view2_rho0.5_f64"], rtol=0, atol=1e-10)
    assert warm.iterations == case["iterations_view2_warm_f64"]
    fresh = partial_transport(_cost(data, "logits_view2"), 0.5, accelerate=False)
    np.testing.assert_allclose(fresh.plan.numpy(), data["Q_fresh_view2_rho0.5_f64"], rtol=0, atol=1e-10)
    assert fresh.iterations == case["iterations_view2_fresh_f64"]


@pytest.mark.shared
def test_functional_form_warm_started_by_state_equals_solver(load_golden):
    data = load_golden("ppot_N256_K10")
    first = partial_transport(_cost(data), 0.5, accelerate=False)
    second = partial_transport(_cost(data, "logits_view2"), 0.5, state=first.state, accelerate=False)
    np.testing.assert_allclose(second.plan.numpy(), data["Q_warm_view2_rho0.5_f64"], rtol=0, atol=1e-10)


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
@pytest.mark.parametrize("rho", [0.5, 1.0])
def test_accelerated_plans_match_official_in_far_fewer_iterations(stem, rho, load_golden, golden_manifest):
    data, case = load_golden(stem), golden_manifest[stem]["cases"][f"rho{rho}"]
    result = partial_transport(_cost(data), rho)
    np.testing.assert_allclose(result.plan.numpy(), data[f"Q_rho{rho}_f64"], rtol=0, atol=1e-7)
    assert result.error < 1e-6 and result.iterations < case["iterations_f64"] / 4


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
def test_accelerated_plan_converges_where_official_stops_at_the_cap(stem, load_golden, golden_manifest):
    data = load_golden(stem)
    assert golden_manifest[stem]["cases"]["rho0.1"]["iterations_f64"] == 1000
    accelerated = partial_transport(_cost(data), 0.1)
    converged = partial_transport(_cost(data), 0.1, accelerate=False, tol=1e-13, max_iter=100_000).plan.numpy()
    official = data["Q_rho0.1_f64"]
    assert accelerated.error < 1e-6 and accelerated.iterations < 100
    assert np.abs(accelerated.plan.numpy() - converged).max() < np.abs(official - converged).max()
    np.testing.assert_allclose(accelerated.plan.numpy(), official, rtol=0, atol=5e-6)


@pytest.mark.shared
@pytest.mark.parametrize("stem", FIXTURES)
def test_accelerated_warm_start_matches_official_second_view(stem, load_golden):
    data = load_golden(stem)
    solver = P2OTSolver(0.5)
    solver.solve(torch.from_numpy(data["logits"]))
    warm = solver.solve(torch.from_numpy(data["logits_view2"]))
    np.testing.assert_allclose(warm.plan.numpy(), data["Q_warm_view2_rho0.5_f64"], rtol=0, atol=1e-7)


@pytest.mark.parametrize("rho", [0.05, 0.2, 0.5, 0.8, 1.0])
def test_transported_mass_equals_rho_and_rows_are_capped(rho):
    logits = torch.randn(300, 7, dtype=torch.float64) * 2
    plan = p2ot_plan(logits, rho, tol=1e-12, max_iter=50_000)
    assert plan.sum().item() / 300 == pytest.approx(rho, abs=1e-9)
    assert plan.min().item() >= 0
    assert plan.sum(1).max().item() <= 1 + 1e-9


def _random_cost(num_rows=200, num_cols=8):
    return cost_from_logits(torch.randn(num_rows, num_cols, dtype=torch.float64) * 2)


@pytest.mark.filterwarnings("ignore:If reg_type = entropy")
def test_rho_one_semi_relaxed_agrees_with_pot_unbalanced():
    cost = _random_cost()
    num_rows, num_cols = cost.shape
    ours = partial_transport(cost, 1.0, tol=1e-13, max_iter=100_000).plan.numpy()
    reference = ot.unbalanced.sinkhorn_unbalanced(
        np.full(num_rows, 1 / num_rows), np.full(num_cols, 1 / num_cols), cost.numpy(), reg=0.1,
        reg_m=(float("inf"), 1.0), reg_type="entropy", numItermax=100_000, stopThr=1e-14,
    )
    np.testing.assert_allclose(ours, num_rows * reference, rtol=0, atol=1e-10)


def test_balanced_agrees_with_pot_sinkhorn():
    cost = _random_cost()
    num_rows, num_cols = cost.shape
    ours = partial_transport(cost, 1.0, semi_relaxed=False, tol=1e-13, max_iter=100_000).plan.numpy()
    reference = ot.sinkhorn(np.full(num_rows, 1 / num_rows), np.full(num_cols, 1 / num_cols), cost.numpy(),
                            reg=0.1, numItermax=100_000, stopThr=1e-14)
    np.testing.assert_allclose(ours, num_rows * reference, rtol=0, atol=1e-10)


def test_partial_balanced_agrees_with_pot_sinkhorn_on_the_virtual_column():
    cost, rho = _random_cost(), 0.3
    num_rows, num_cols = cost.shape
    ours = partial_transport(cost, rho, semi_relaxed=False, tol=1e-13, max_iter=100_000).plan.numpy()
    column_target = np.r_[np.full(num_cols, rho / num_cols), 1 - rho]
    extended = np.c_[cost.numpy(), np.zeros(num_rows)]
    reference = ot.sinkhorn(np.full(num_rows, 1 / num_rows), column_target, extended, reg=0.1,
                            numItermax=100_000, stopThr=1e-14)
    np.testing.assert_allclose(ours, num_rows * reference[:, :num_cols], rtol=0, atol=1e-10)


def test_sinkhorn_plan_gives_equal_clusters():
    plan = sinkhorn_plan(torch.randn(120, 6, dtype=torch.float64), tol=1e-12, max_iter=10_000)
    np.testing.assert_allclose(plan.sum(0).numpy(), np.full(6, 20.0), atol=1e-8)
    np.testing.assert_allclose(plan.sum(1).numpy(), np.ones(120), atol=1e-8)


@pytest.mark.parametrize("dtype, epsilon", [(torch.float32, 0.1), (torch.float64, 0.02)])
def test_stabilised_solver_survives_a_cluster_no_sample_predicts(dtype, epsilon):
    logits = torch.randn(500, 20, dtype=torch.float64) * 2
    logits[:, 0] -= 20
    cost = cost_from_logits(logits, dtype)
    plain = partial_transport(cost, 0.5, epsilon=epsilon, stabilize=False, dtype=dtype)
    assert not torch.isfinite(plain.plan).all()
    stable = partial_transport(cost, 0.5, epsilon=epsilon, stabilize=True, dtype=dtype)
    assert torch.isfinite(stable.plan).all() and stable.error < 1e-6
    assert stable.plan.sum().item() / 500 == pytest.approx(0.5, abs=0.02)


def test_stabilised_solver_converges_at_small_epsilon_where_plain_scaling_does_not():
    cost = cost_from_logits(torch.randn(500, 20, dtype=torch.float64) * 5)
    plain = partial_transport(cost, 1.0, epsilon=0.01, stabilize=False, max_iter=3000, accelerate=False)
    stable = partial_transport(cost, 1.0, epsilon=0.01, stabilize=True, max_iter=3000, accelerate=False)
    assert plain.error > 1e-3 and stable.error < 1e-6
    assert stable.plan.sum().item() / 500 == pytest.approx(1.0, abs=1e-6)


def test_stabilised_equals_plain_when_nothing_is_absorbed():
    cost = _random_cost()
    plain = partial_transport(cost, 0.4, stabilize=False)
    stable = partial_transport(cost, 0.4, stabilize=True)
    assert plain.iterations == stable.iterations
    torch.testing.assert_close(plain.plan, stable.plan, rtol=0, atol=0)


def test_float32_compute_is_close_to_float64():
    logits = torch.randn(400, 12) * 3
    plan64 = p2ot_plan(logits, 0.5)
    plan32 = p2ot_plan(logits, 0.5, dtype=torch.float32)
    assert plan32.dtype == torch.float32
    torch.testing.assert_close(plan32.double(), plan64, rtol=0, atol=1e-4)


def test_solver_resets_state_when_the_number_of_clusters_changes():
    solver = P2OTSolver(0.5)
    solver(torch.randn(50, 5))
    assert solver.state.b.numel() == 6
    plan = solver(torch.randn(50, 9))
    assert plan.shape == (50, 9) and solver.state.b.numel() == 10
    solver.reset()
    assert solver.state is None


def test_stale_stabilised_state_with_other_rows_is_ignored():
    state = ScalingState(b=torch.ones(6, dtype=torch.float64), u=torch.zeros(7, 1), v=torch.zeros(6, 1))
    cost = _random_cost(40, 5)
    torch.testing.assert_close(partial_transport(cost, 0.5, state=state).plan, partial_transport(cost, 0.5).plan)


@pytest.mark.parametrize("bad", [dict(rho=1.5), dict(rho=-0.1), dict(epsilon=0.0), dict(max_iter=0),
                                 dict(marginals="float16")])
def test_bad_arguments_raise_a_clear_error(bad):
    options = dict(rho=0.5) | bad
    with pytest.raises(LongtailError):
        partial_transport(_random_cost(10, 3), **options)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits = torch.randn(256, 10, dtype=torch.float64)
    torch.testing.assert_close(p2ot_plan(logits.cuda(), 0.5).cpu(), p2ot_plan(logits, 0.5))


def _clustered_cost(num_rows=2000, num_cols=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_cols, 16, generator=generator), dim=1)
    members = torch.randint(0, num_cols, (num_rows,), generator=generator)
    features = torch.nn.functional.normalize(centres[members] + 0.3 * torch.randn(num_rows, 16, generator=generator))
    return cost_from_logits(10.0 * features @ centres.T)


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.9])
def test_accelerated_plan_equals_plain_plan_in_fewer_iterations(rho):
    cost = _clustered_cost()
    plain = partial_transport(cost, rho, accelerate=False, tol=1e-9, max_iter=20_000)
    accelerated = partial_transport(cost, rho, tol=1e-9, max_iter=20_000)
    assert plain.error < 1e-9 and accelerated.error < 1e-9
    assert accelerated.iterations < plain.iterations / 3
    relative_l1 = (accelerated.plan - plain.plan).abs().sum() / plain.plan.abs().sum()
    assert relative_l1 < 1e-6
    assert accelerated.plan.sum().item() / cost.shape[0] == pytest.approx(rho, abs=1e-6)


def test_accelerated_solve_stops_where_rounding_stalls_an_unreachable_tolerance():
    cost = _clustered_cost()
    exact = partial_transport(cost, 0.5, accelerate=False, tol=0.0, max_iter=3000)
    accelerated = partial_transport(cost, 0.5, tol=0.0, max_iter=3000)
    assert exact.error == 0.0 and accelerated.iterations < exact.iterations / 5
    b_norm = torch.linalg.vector_norm(accelerated.state.b).item()
    assert 0.0 < accelerated.error < 1e-13 * b_norm
    torch.testing.assert_close(accelerated.plan, exact.plan, rtol=0, atol=1e-12)


def test_safeguard_rejects_extrapolations_that_do_not_reduce_the_residual(monkeypatch):
    counts = {"record": 0, "call": 0}
    record, call = AndersonMixer.record, AndersonMixer.__call__

    def counting(name, method):
        def wrapper(self, *args):
            counts[name] += 1
            return method(self, *args)
        return wrapper

    monkeypatch.setattr(AndersonMixer, "record", counting("record", record))
    monkeypatch.setattr(AndersonMixer, "__call__", counting("call", call))
    result = partial_transport(_clustered_cost(), 0.1)
    rejections = counts["record"] - counts["call"]  # a rejected iterate is only recorded, never mixed from
    assert rejections > 0 and result.error < 1e-6


def test_fused_pass_equals_the_dense_products():
    generator = torch.Generator().manual_seed(0)
    kernel, virtual = torch.rand(1000, 37, generator=generator, dtype=torch.float64), torch.rand(1000, dtype=torch.float64)
    b, alpha = torch.rand(38, dtype=torch.float64), torch.tensor(1e-3, dtype=torch.float64)
    extended = torch.cat([kernel, virtual[:, None]], dim=1)
    expected_a = alpha / (extended @ b)
    for rows in (1, 7, 64, 1000):
        a, column_sums = scaling_pass(kernel, virtual, b, alpha, torch.empty(1000, dtype=torch.float64), rows)
        torch.testing.assert_close(a, expected_a, rtol=1e-14, atol=0)
        torch.testing.assert_close(column_sums, extended.T @ expected_a, rtol=1e-13, atol=0)


def test_kernel_build_is_in_place_and_drops_subnormals():
    exponents = torch.tensor([[0.0, -800.0, -700.0], [1.0, -745.0, 2.0]], dtype=torch.float64)
    expected = torch.exp(exponents)
    kernel = build_kernel(exponents)
    assert kernel.data_ptr() == exponents.data_ptr()
    assert kernel[0, 2] == expected[0, 2] and kernel[1, 1] == 0 and kernel[0, 1] == 0
    torch.testing.assert_close(kernel[:, 0], expected[:, 0])


def test_anderson_mixer_solves_a_linear_fixed_point_in_few_steps():
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(5, 5, generator=generator, dtype=torch.float64)).Q
    contraction = basis @ torch.diag(torch.tensor([0.99, 0.9, 0.5, 0.2, 0.1], dtype=torch.float64)) @ basis.T
    shift = torch.randn(5, generator=generator, dtype=torch.float64)
    fixed_point = torch.linalg.solve(torch.eye(5, dtype=torch.float64) - contraction, shift)
    mixer, x = AndersonMixer(depth=6), torch.zeros(5, dtype=torch.float64)
    for _ in range(8):
        x, _ = mixer(x, contraction @ x + shift)
    torch.testing.assert_close(x, fixed_point, rtol=1e-8, atol=1e-8)


def test_returned_plan_reuses_the_kernel_buffer_and_is_contiguous():
    plan = partial_transport(_random_cost(), 0.5).plan
    assert plan.is_contiguous() and plan.shape == (200, 8)
