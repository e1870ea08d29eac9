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

Acceleration (``accelerate=True``, the default). The iteration is a fixed point ``b = G(b)``; the solver
mixes it in ``x = log b`` with Anderson acceleration of depth ``ANDERSON_DEPTH`` (6; see
:mod:`longtail.clustering.scaling`) over the columns with ``beta > 0``. Safeguard: an extrapolated iterate
whose residual ``||log G(b) - log b||`` is not below the previous iterate's is rejected, and the next
iterate is the plain step ``G`` from the previous one. The stopping rule is unchanged: the iteration stops
when ``||G(b) - b||_2 < tol`` at an evaluated iterate ``b`` and returns ``a = alpha / (M b)`` and ``G(b)``,
as the plain loop does (it is the same quantity as its ``||b - b_prev||``), or, where ``tol`` is below
what the dtype resolves, once that error has made no new low for ``STALL_ITERATIONS`` (10) evaluations while
below ``ROUNDING_FLOOR_ULPS`` (1024) units of rounding of ``||G(b)||``: further iterations only move ``b`` by
rounding (the plain loop then runs to ``max_iter``). An absorption restarts the history and the stall count.
``accelerate=False`` gives the plain iterates and stopping (the golden iteration counts). Each evaluation of
``G`` is one fused row-blocked pass over the kernel (``a`` and ``Mᵀ a`` together); the kernel is built in
place and becomes the returned plan in place.

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

from longtail.clustering.scaling import (
    AndersonMixer,
    build_kernel,
    scaling_pass,
    virtual_exponents,
    write_exponents,
)
from longtail.errors import LongtailError

Marginals = Literal["exact", "official_f32"]
MARGINAL_MODES = ("exact", "official_f32")
ABSORB_THRESHOLD = 1e8
ANDERSON_DEPTH = 6
ROUNDING_FLOOR_ULPS = 1024
STALL_ITERATIONS = 10


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
    accelerate: bool = True,
    dtype: torch.dtype = torch.float64,
) -> TransportResult:
    """Solve the P²OT problem for ``cost`` (N, K) with transported fraction ``rho`` (see the module docstring).

    ``state`` warm-starts from a previous solution (its ``b``, and ``u``, ``v`` when ``stabilize``); it is
    ignored where its shapes do not fit. ``accelerate`` mixes the iterates (Anderson, with the safeguard);
    off, the iterates are the plain scaling's. Returns the plan over the K real columns, times N when
    ``scale_by_n``.
    """
    _check_inputs(cost, rho, epsilon, lam, max_iter)
    problem = _ScalingProblem(cost.detach().to(dtype), rho, epsilon, lam, semi_relaxed, marginals)
    state = _fitting_state(state, *problem.cost.shape, stabilize)
    b = problem.start(state, stabilize)
    mixer = AndersonMixer(ANDERSON_DEPTH) if accelerate else None
    previous: _Evaluated | None = None
    extrapolated = False

    stalled = _RoundingStall(problem.cost.dtype)
    error, iterations, absorbed_last, converged = float("inf"), 0, False, False
    while iterations < max_iter and not converged:
        a, mapped = problem.step(b)
        iterations += 1
        if mixer is not None:
            current = _Evaluated(b, mapped, extrapolated, problem.active)
            if previous is not None and current.extrapolated and not current.residual < previous.residual:
                # Safeguard: reject before the stopping test and the absorption, and take the plain step
                # from the previous iterate; the evaluation stays in the history (a valid secant pair).
                mixer.record(current.x, current.mapped_x)
                b, extrapolated = previous.mapped, False
                continue
        checks = [torch.linalg.vector_norm(mapped - b)]
        if stabilize:
            checks.append(torch.maximum(a.max(), mapped.max()))
        if mixer is not None:
            checks.append(torch.linalg.vector_norm(mapped))
        values = torch.stack(checks).tolist()  # one host sync per iteration
        error = values[0]
        if stabilize:
            absorbed_last = values[1] > ABSORB_THRESHOLD
        converged = error <= tol or (mixer is not None and stalled(error, values[-1]))
        if absorbed_last:
            b, previous, extrapolated = problem.absorb(a, mapped), None, False
            stalled.reset()
            if mixer is not None:
                mixer.reset()
        elif mixer is None or converged:
            b = mapped
        else:
            b, extrapolated = _mixed(mixer, problem.active, current)
            previous = current

    plan = problem.plan(None if absorbed_last else (a, mapped))
    if scale_by_n:
        plan.mul_(problem.cost.shape[0])
    final_b = b if absorbed_last else mapped
    new_state = ScalingState(b=final_b, u=problem.u if stabilize else None, v=problem.v if stabilize else None)
    return TransportResult(plan=plan, iterations=iterations, error=error, state=new_state)


class _RoundingStall:
    """True once the stopping error has made no new low for ``STALL_ITERATIONS`` evaluations while below
    ``ROUNDING_FLOOR_ULPS`` units of rounding of ``||G(b)||``: the iterates have converged as far as the dtype
    resolves them, and a tolerance below that (SP²OT's inner 1e-10 on a ``b`` of norm 1e6) cannot be met."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.floor = ROUNDING_FLOOR_ULPS * torch.finfo(dtype).eps
        self.reset()

    def reset(self) -> None:
        self.best_error, self.since_best = float("inf"), 0

    def __call__(self, error: float, mapped_norm: float) -> bool:
        self.since_best = 0 if error < self.best_error else self.since_best + 1
        self.best_error = min(self.best_error, error)
        return self.since_best >= STALL_ITERATIONS and error <= self.floor * mapped_norm


class _Evaluated:
    """One evaluation of the scaling map at an iterate ``b``: ``G(b)``, both in log space, whether ``b`` was
    an Anderson extrapolation (only those are rejected by the safeguard), and the residual
    ``||log G(b) - log b||`` that the safeguard compares (scale-free, unlike the stopping error, which is
    small for any tiny ``b``)."""

    def __init__(self, b: Tensor, mapped: Tensor, extrapolated: bool, active: Tensor) -> None:
        self.mapped, self.extrapolated = mapped, extrapolated
        # Mixing log b keeps the iterates positive; columns with zero target (b = 0) stay at their plain step.
        self.x, self.mapped_x = _masked_log(b, active), _masked_log(mapped, active)
        self.residual = torch.linalg.vector_norm(self.mapped_x - self.x).item()


def _mixed(mixer: AndersonMixer, active: Tensor, current: _Evaluated) -> tuple[Tensor, bool]:
    """The next iterate from the mixer and whether it is an extrapolation (the plain step where the
    extrapolation is not finite)."""
    proposal, extrapolated = mixer(current.x, current.mapped_x)
    if not torch.isfinite(proposal).all():
        mixer.reset()
        return current.mapped, False
    return torch.where(active, proposal.exp(), current.mapped), extrapolated


def _masked_log(values: Tensor, active: Tensor) -> Tensor:
    return torch.where(active, values, 1.0).log()


class _ScalingProblem:
    """The kernel, marginals and duals of one P²OT solve, with the fused scaling map ``b -> G(b)``."""

    def __init__(
        self, cost: Tensor, rho: float, epsilon: float, lam: float, semi_relaxed: bool, marginals: Marginals
    ) -> None:
        num_rows, num_cols = cost.shape
        self.cost, self.epsilon = cost, epsilon
        alpha, beta = transport_marginals(num_rows, num_cols, rho, cost.dtype, cost.device, marginals)
        self.alpha, self.beta = alpha[0, 0], beta.reshape(-1)
        self.active = self.beta > 0
        self.exponent = torch.ones(num_cols + 1, dtype=cost.dtype, device=cost.device)
        if semi_relaxed:
            self.exponent[:num_cols] = lam / (lam + epsilon)
        self.kernel = torch.empty_like(cost)
        self.a = cost.new_empty(num_rows)

    def start(self, state: ScalingState, stabilize: bool) -> Tensor:
        """Build the kernel from the (warm-start) duals and return the first ``b``."""
        num_rows, num_cols = self.cost.shape
        self.u = _vector(state.u, num_rows, self.cost)
        self.v = _vector(state.v, num_cols + 1, self.cost)
        b = state.b.reshape(-1).to(device=self.cost.device, dtype=self.cost.dtype).clone()
        write_exponents(self.kernel, self.cost, self.u, self.v, self.epsilon)
        virtual = virtual_exponents(self.u, self.v, self.epsilon)
        if stabilize:
            b, virtual = self._keep_kernel_in_range(b, virtual)
        build_kernel(self.kernel)
        self.virtual = build_kernel(virtual)
        self.correction = torch.exp(self.v * (self.exponent - 1) / self.epsilon)
        return b

    def step(self, b: Tensor) -> tuple[Tensor, Tensor]:
        """``a = alpha / (M b)`` and ``G(b) = (beta / (Mᵀ a)) ** f * w``."""
        a, column_sums = scaling_pass(self.kernel, self.virtual, b, self.alpha, self.a)
        return a, (self.beta / column_sums) ** self.exponent * self.correction

    def absorb(self, a: Tensor, b: Tensor) -> Tensor:
        """Move the scalings into the duals, rebuild the kernel, and return the new ``b = 1``."""
        self.u = self.u + self.epsilon * torch.log(a)
        self.v = self.v + self.epsilon * torch.log(b + torch.finfo(b.dtype).eps)
        self.correction = self.correction * b ** (self.exponent - 1)
        build_kernel(write_exponents(self.kernel, self.cost, self.u, self.v, self.epsilon))
        self.virtual = build_kernel(virtual_exponents(self.u, self.v, self.epsilon))
        return torch.ones_like(b)

    def plan(self, scalings: tuple[Tensor, Tensor] | None) -> Tensor:
        """``diag(a) kernel diag(b[:K])`` in place (the kernel itself when the scalings were just absorbed)."""
        if scalings is not None:
            a, b = scalings
            self.kernel.mul_(a.reshape(-1, 1)).mul_(b[:-1].reshape(1, -1))
        return self.kernel

    def _keep_kernel_in_range(self, b: Tensor, virtual: Tensor) -> tuple[Tensor, Tensor]:
        """Shift the duals so that the kernel neither overflows nor has an all-zero column; returns ``b`` and
        the virtual column's exponents (``self.kernel`` holds the real exponents).

        A row whose largest exponent exceeds half the dtype's log range is shifted down to 0 (``u`` only
        rescales ``a``, which is recomputed from ``b``); a column whose largest exponent is below minus that
        bound is shifted up to 0, and its ``b`` scaled by the inverse factor so the column's true scaling is
        unchanged. In ordinary problems nothing is shifted and the iterates are those of the plain scaling.
        """
        bound = 0.5 * math.log(torch.finfo(self.cost.dtype).max)
        row_max = torch.maximum(self.kernel.amax(dim=1), virtual)
        high = row_max > bound
        if high.any():
            self.u = torch.where(high, self.u - self.epsilon * row_max, self.u)
            write_exponents(self.kernel, self.cost, self.u, self.v, self.epsilon)
            virtual = virtual_exponents(self.u, self.v, self.epsilon)
        column_max = torch.cat([self.kernel.amax(dim=0), virtual.amax().reshape(1)])
        low = column_max < -bound
        if low.any():
            self.v = torch.where(low, self.v - self.epsilon * column_max, self.v)
            b = torch.where(low, b * torch.exp(column_max), b)
            write_exponents(self.kernel, self.cost, self.u, self.v, self.epsilon)
            virtual = virtual_exponents(self.u, self.v, self.epsilon)
        return b, virtual


def _vector(values: Tensor | None, size: int, like: Tensor) -> Tensor:
    """A dual as a vector of ``size`` in ``like``'s dtype and device (zeros when absent)."""
    if values is None:
        return like.new_zeros(size)
    return values.reshape(-1).to(device=like.device, dtype=like.dtype).clone()


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
        accelerate: bool = True,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.rho = rho
        self.options = dict(
            epsilon=epsilon, lam=lam, tol=tol, max_iter=max_iter, semi_relaxed=semi_relaxed,
            stabilize=stabilize, marginals=marginals, accelerate=accelerate, dtype=dtype,
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
