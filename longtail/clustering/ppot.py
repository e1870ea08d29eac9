"""P²OT: progressive partial optimal transport for pseudo-labelling imbalanced clusters.

Paper: C. Zhang, H. Ren, X. He, "P²OT: Progressive Partial Optimal Transport for Deep Imbalanced Clustering",
ICLR 2024 (arXiv 2401.09266). Official code: rhfeiyang/PPOT, ``utils/sinkhorn_knopp.py::SemiCurrSinkhornKnopp``
(this module is an independent implementation from the equations).

Problem. Given predictions ``P`` (N, K) (softmax of ``logits``) and the cost ``C = -log P``, find the plan
``Q`` (N, K) that solves::

    min_Q  <Q, C> + lam * KL(Qᵀ1_N || (rho/K) 1_K) - epsilon * H(Q)
    s.t.   Q 1_K <= 1_N / N,     1_Nᵀ Q 1_K = rho.

The KL term is a soft (imbalance-tolerant) cluster-size prior; ``rho`` is the fraction of the mass that is
transported, so low-confidence samples may be left out. With a virtual column ``xi`` of cost 0 the problem
becomes a semi-relaxed unbalanced OT on ``Q̂ = [Q, xi]`` (N, K+1) with exact rows ``alpha = 1_N / N``, column
target ``beta = [(rho/K) 1_K, 1 - rho]``, KL weight ``lam`` on the K real columns and an exact constraint on
the virtual one. With the kernel ``M = exp(-[C, 0] / epsilon)`` the scaling iterations are::

    a = alpha / (M b)
    b = (beta / (Mᵀ a)) ** f,      f = lam / (lam + epsilon) on real columns, f = 1 on the virtual one

until ``||b - b_prev||_2 < tol`` (1e-6) or ``max_iter`` (1000) iterations; ``Q̂ = diag(a) M diag(b)``. The
returned plan is ``N * Q̂[:, :K]``: row ``i`` sums to the transported mass of sample ``i`` (<= 1) and the plan
sums to ``rho * N``. ``b`` starts at ``1/(K+1)`` (the paper starts at 1; the fixed point is the same) and a
:class:`P2OTSolver` keeps it between calls (warm start across views and batches, like the official code).
``semi_relaxed=False`` uses ``f = 1`` everywhere: exact column marginals (the paper's "POT" ablation, and with
``rho = 1`` plain balanced Sinkhorn as in SeLa/SwAV).

Log-domain stabilisation (``stabilize=True``, the default; the SP²OT code's ``SemiCurrSinkhornKnopp_stable``).
Duals ``u`` (N,) and ``v`` (K+1,) hold the absorbed scalings, the kernel is ``M = exp((u - [C, 0] + vᵀ) /
epsilon)`` and the update becomes ``b = (beta / (Mᵀ a)) ** f * w`` with ``w = exp(v (f - 1) / epsilon)``. When
``max(a, b) > 1e8``: ``u += epsilon log a``, ``v += epsilon log(b + eps)``, ``w *= b ** (f - 1)``, the kernel
is rebuilt and ``b = 1``; the stopping error is then measured on the rescaled ``b``. Before iterating, a row
of exponents that would overflow is shifted down through ``u``, and a column whose entries would all
underflow (a cluster no sample predicts) is shifted up through ``v`` with ``b`` rescaled to match (an
addition to the official code, which returns NaN there). Where nothing is absorbed or shifted (the ordinary
case, all golden fixtures) the iterates equal the plain ones bit for bit. Still unsupported: ``rho = 1`` in
float32 with an ``epsilon`` so small that a sample's whole row underflows (use float64 there).

Differences from the official code (named options): its marginals ``alpha``, ``beta`` are float32 tensors
(``1/N`` and ``rho/K`` rounded to float32) while the iterations run in float64; ``marginals='official_f32'``
reproduces that (with exact float32 marginals the balanced variant stops much earlier, because float32
marginals do not sum to one). The default ``marginals='exact'`` uses marginals in the compute dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from longtail.errors import LongtailError

Marginals = Literal["exact", "official_f32"]
MARGINAL_MODES = ("exact", "official_f32")
ABSORB_THRESHOLD = 1e8


@dataclass
class ScalingState:
    """What a warm start carries over: column scaling ``b`` (K+1,) and, when stabilised, duals ``u``, ``v``."""

    b: Tensor
    u: Tensor | None = None
    v: Tensor | None = None


@dataclass
class TransportResult:
    """A solved plan: ``plan`` (N, K) (scaled by N unless asked otherwise), iterations run, final error."""

    plan: Tensor
    iterations: int
    error: float
    state: ScalingState


def cost_from_logits(logits: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """``C = -log softmax(logits)`` in ``dtype`` (the P²OT cost)."""
    return -torch.log_softmax(logits.detach().to(dtype), dim=1)


def transport_marginals(
    num_rows: int, num_cols: int, rho: float, dtype: torch.dtype, device: torch.device | str,
    marginals: Marginals = "exact",
) -> tuple[Tensor, Tensor]:
    """Row marginal ``alpha = 1/N`` (N, 1) and column target ``beta = [rho/K, ..., 1 - rho]`` (K+1, 1)."""
    if marginals not in MARGINAL_MODES:
        raise LongtailError(f"Unknown marginals '{marginals}'. Use one of: {', '.join(MARGINAL_MODES)}.")
    marginal_dtype = torch.float32 if marginals == "official_f32" else dtype
    alpha = torch.ones(num_rows, 1, dtype=marginal_dtype, device=device) / num_rows
    beta = rho * torch.ones(num_cols + 1, 1, dtype=marginal_dtype, device=device) / num_cols
    beta[-1] = 1.0 - rho
    return alpha.to(dtype), beta.to(dtype)


def _check_inputs(cost: Tensor, rho: float, epsilon: float, lam: float, max_iter: int) -> None:
    if cost.dim() != 2 or cost.shape[0] == 0 or cost.shape[1] == 0:
        raise LongtailError(f"The cost must be a non-empty (N, K) matrix; got shape {tuple(cost.shape)}.")
    if not 0.0 <= rho <= 1.0:
        raise LongtailError(f"rho is the transported fraction and must lie in [0, 1]; got {rho}.")
    if epsilon <= 0 or lam <= 0:
        raise LongtailError(f"epsilon and lam must be positive; got epsilon={epsilon}, lam={lam}.")
    if max_iter < 1:
        raise LongtailError(f"max_iter must be at least 1; got {max_iter}.")


def partial_transport(
    cost: Tensor,
    rho: float,
    *,
    epsilon: float = 0.1,
    lam: float = 1.0,
    tol: float = 1e-6,
    max_iter: int = 1000,
    semi_relaxed: bool = True,
    stabilize: bool = True,
    marginals: Marginals = "exact",
    state: ScalingState | None = None,
    scale_by_n: bool = True,
    dtype: torch.dtype = torch.float64,
) -> TransportResult:
    """Solve the P²OT problem for ``cost`` (N, K) with transported fraction ``rho`` (see the module docstring).

    ``state`` warm-starts from a previous solution (its ``b``, and ``u``, ``v`` when ``stabilize``); it is
    ignored where its shapes do not fit. Returns the plan over the K real columns, times N when
    ``scale_by_n``.
    """
    _check_inputs(cost, rho, epsilon, lam, max_iter)
    num_rows, num_cols = cost.shape
    cost = cost.detach().to(dtype)
    extended = torch.cat([cost, cost.new_zeros(num_rows, 1)], dim=1)
    alpha, beta = transport_marginals(num_rows, num_cols, rho, dtype, cost.device, marginals)
    exponent = torch.ones(num_cols + 1, 1, dtype=dtype, device=cost.device)
    if semi_relaxed:
        exponent[:num_cols] = lam / (lam + epsilon)

    state = _fitting_state(state, num_rows, num_cols, stabilize)
    u = state.u.clone() if state.u is not None else extended.new_zeros(num_rows, 1)
    v = state.v.clone() if state.v is not None else extended.new_zeros(num_cols + 1, 1)
    b = state.b.reshape(-1, 1).to(device=cost.device, dtype=dtype).clone()
    exponents = (u - extended + v.T) / epsilon
    if stabilize:
        u, v, b, exponents = _keep_kernel_in_range(u, v, b, exponents, extended, epsilon)
    kernel = _exp_without_subnormals(exponents)
    correction = torch.exp(v * (exponent - 1) / epsilon)
    machine_eps = torch.finfo(dtype).eps

    error, iterations, absorbed_last = float("inf"), 0, False
    last_b = b
    while iterations < max_iter and error > tol:
        a = alpha / (kernel @ b)
        b = (beta / (kernel.T @ a)) ** exponent * correction
        error_t = torch.linalg.vector_norm(b - last_b)
        if stabilize:
            error, largest = torch.stack([error_t, torch.maximum(a.max(), b.max())]).tolist()
            absorbed_last = largest > ABSORB_THRESHOLD
            if absorbed_last:
                u = u + epsilon * torch.log(a)
                v = v + epsilon * torch.log(b + machine_eps)
                correction = correction * b ** (exponent - 1)
                kernel = _exp_without_subnormals((u - extended + v.T) / epsilon)
                b = torch.ones_like(b)
        else:
            error = error_t.item()
        last_b = b
        iterations += 1

    plan = kernel if absorbed_last else a * kernel * b.T
    plan = plan[:, :num_cols]
    if scale_by_n:
        plan = plan * num_rows
    new_state = ScalingState(b=b.reshape(-1), u=u if stabilize else None, v=v if stabilize else None)
    return TransportResult(plan=plan, iterations=iterations, error=error, state=new_state)


def _exp_without_subnormals(exponents: Tensor) -> Tensor:
    """``exp(exponents)`` in place, with subnormal results set to 0: they change no sum that matters and
    make CPU matrix-vector products several times slower."""
    kernel = exponents.exp_()
    return kernel.masked_fill_(kernel < torch.finfo(kernel.dtype).tiny, 0.0)


def _keep_kernel_in_range(
    u: Tensor, v: Tensor, b: Tensor, exponents: Tensor, extended: Tensor, epsilon: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shift the duals so that the kernel ``exp(exponents)``, ``exponents = (u - C + vᵀ) / epsilon``,
    neither overflows nor has an all-zero column; returns ``u, v, b, exponents``.

    A row whose largest exponent exceeds half the dtype's log range is shifted down to 0 (``u`` only rescales
    ``a``, which is recomputed from ``b``); a column whose largest exponent is below minus that bound is
    shifted up to 0, and its ``b`` scaled by the inverse factor so the column's true scaling is unchanged.
    In ordinary problems nothing is shifted and the iterates are those of the plain scaling.
    """
    bound = 0.5 * math.log(torch.finfo(exponents.dtype).max)
    row_max = exponents.max(dim=1, keepdim=True).values
    high = row_max > bound
    if high.any():
        u = torch.where(high, u - epsilon * row_max, u)
        exponents = (u - extended + v.T) / epsilon
    column_max = exponents.max(dim=0).values.reshape(-1, 1)
    low = column_max < -bound
    if low.any():
        v = torch.where(low, v - epsilon * column_max, v)
        b = torch.where(low, b * torch.exp(column_max), b)
        exponents = (u - extended + v.T) / epsilon
    return u, v, b, exponents


def _fitting_state(state: ScalingState | None, num_rows: int, num_cols: int, stabilize: bool) -> ScalingState:
    """The warm-start state if it fits this problem, else a fresh one (b = 1/(K+1), zero duals)."""
    fresh_b = torch.full((num_cols + 1,), 1.0 / (num_cols + 1), dtype=torch.float64)
    if state is None or state.b.numel() != num_cols + 1:
        return ScalingState(b=fresh_b)
    if not stabilize:
        return ScalingState(b=state.b)
    if state.u is None or state.u.shape[0] != num_rows:
        return ScalingState(b=fresh_b)
    return state


class P2OTSolver:
    """Stateful P²OT solver: keeps ``b`` (and the duals when stabilised) between calls as a warm start.

    ``solver(logits)`` returns the plan (N, K) scaled by N; ``solver.solve(logits)`` the full
    :class:`TransportResult`; ``solver.solve_cost(cost)`` takes ``C`` directly. Set ``solver.rho`` as it ramps.
    """

    def __init__(
        self,
        rho: float = 1.0,
        *,
        epsilon: float = 0.1,
        lam: float = 1.0,
        tol: float = 1e-6,
        max_iter: int = 1000,
        semi_relaxed: bool = True,
        stabilize: bool = True,
        marginals: Marginals = "exact",
        warm_start: bool = True,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.rho = rho
        self.options = dict(
            epsilon=epsilon, lam=lam, tol=tol, max_iter=max_iter, semi_relaxed=semi_relaxed,
            stabilize=stabilize, marginals=marginals, dtype=dtype,
        )
        self.warm_start = warm_start
        self.state: ScalingState | None = None

    @property
    def epsilon(self) -> float:
        return self.options["epsilon"]

    def reset(self) -> None:
        """Forget the warm-start state."""
        self.state = None

    def solve_cost(self, cost: Tensor, scale_by_n: bool = True) -> TransportResult:
        """Solve for the cost ``C`` (N, K), starting from the stored state, and store the new one."""
        result = partial_transport(
            cost, self.rho, state=self.state if self.warm_start else None, scale_by_n=scale_by_n, **self.options
        )
        self.state = result.state
        return result

    def solve(self, logits: Tensor) -> TransportResult:
        """Solve for ``logits`` (N, K) (the cost is ``-log softmax(logits)``)."""
        return self.solve_cost(cost_from_logits(logits, self.options["dtype"]))

    def __call__(self, logits: Tensor) -> Tensor:
        return self.solve(logits).plan


def p2ot_plan(logits: Tensor, rho: float, **options) -> Tensor:
    """Functional P²OT: the plan (N, K) scaled by N for ``logits``; ``options`` as :func:`partial_transport`."""
    dtype = options.get("dtype", torch.float64)
    return partial_transport(cost_from_logits(logits, dtype), rho, **options).plan


def sinkhorn_plan(logits: Tensor, epsilon: float = 0.1, **options) -> Tensor:
    """Balanced Sinkhorn pseudo-labels (SeLa / SwAV): equal cluster sizes, every sample fully transported."""
    return p2ot_plan(logits, 1.0, epsilon=epsilon, semi_relaxed=False, **options)
