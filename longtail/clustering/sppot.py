"""SP²OT: semantic-regularised progressive partial optimal transport.

Paper: C. Zhang, H. Ren, X. He, "SP²OT: Semantic-Regularized Progressive Partial Optimal Transport for
Imbalanced Clustering" (arXiv 2404.03446), the journal extension of P²OT. Official code: rhfeiyang/SPPOT,
``utils/sinkhorn_knopp.py::MMOT`` and ``utils/structure.py`` (this module is an independent implementation).

Semantic graph. From features ``x_i`` (dimension D): ``S_ij = exp(-||x_i - x_j||² / (2 sigma² D))`` for the
``k`` nearest neighbours ``j != i`` of each row ``i`` and 0 elsewhere (defaults sigma = 2, k = 20). The top-k
is per row, so ``S`` is not symmetric. :func:`knn_similarity` builds it sparse (scikit-learn nearest
neighbours, a ``scipy.sparse.csr_matrix``), never as a dense N x N matrix; :func:`restrict` takes the
sub-graph of a batch or memory bank.

Objective. Under the P²OT constraints (see :mod:`longtail.clustering.ppot`)::

    f(Q) = <Q, C> - lam1 <S, Q Qᵀ> + epsilon <Q, log Q>,      C = -log softmax(logits)

``(Q Qᵀ)_ij`` is the probability that samples i and j share a cluster, so the second term rewards putting
semantic neighbours together. Majorisation-minimisation linearises it at the current iterate ``Qᵗ``
(``Q⁰ = rho / (N K)``)::

    C̃ᵗ = C - lam1 (S + Sᵀ) Qᵗ,     Q_new = P²OT(C̃ᵗ),     Qᵗ⁺¹ = (1 - ema) Qᵗ + ema Q_new   (ema = 1)

until ``|f(Qᵗ⁺¹) - f(Qᵗ)| < tol`` (1e-6) or ``max_iter`` (100) steps; the result is ``N Q``. The inner P²OT
solve is the log-domain stabilised scaling (``stabilize=True``, tolerance 1e-10, 1000 iterations) whose
duals ``u``, ``v`` and scaling ``b`` persist across MM steps and across calls (warm start); it is
Anderson-accelerated unless ``accelerate=False`` (the official iterates and inner iteration counts). The MM
step reuses ``(S + Sᵀ) Q``'s buffer for ``C̃ᵗ`` and sums the objective's entropy over row blocks, so a step
makes no full-size temporaries beyond the new plan and ``(S + Sᵀ) Q``.

Structure weight. ``lam1 = (1 - rho) * structure_weight * N / reference_rows`` (defaults 1000 and 5,120), so
the graph prior fades as ``rho`` grows. The official code uses ``lam1 = (1 - rho) * mm_factor`` with
``mm_factor = 1000`` tuned for its memory bank of about 5,120 rows; on much smaller problems that overflows
to NaN, so the N-scaling is the default here. ``reference_rows=None`` gives the official unscaled weight,
``fix_structure_weight=True`` the official ``--mm_factor_fix`` (no ``(1 - rho)`` factor). The objective's log
uses ``log(Q + 1.1754944e-38)`` (float32 ``tiny``) as the official code does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from sklearn.neighbors import NearestNeighbors
from torch import Tensor

from longtail.clustering.ppot import Marginals, P2OTSolver, cost_from_logits
from longtail.clustering.scaling import block_rows
from longtail.errors import LongtailError

LOG_FLOOR = float(torch.finfo(torch.float32).tiny)
SimilarityLike = scipy.sparse.spmatrix | scipy.sparse.sparray | Tensor | np.ndarray


def knn_similarity(features: Tensor | np.ndarray, k: int = 20, sigma: float = 2.0) -> scipy.sparse.csr_matrix:
    """Sparse row-wise k-NN Gaussian graph (N, N): ``exp(-d² / (2 sigma² D))`` to each row's ``k`` nearest
    other rows, no self-loops, not symmetrised (float64)."""
    points = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
    if points.ndim != 2:
        raise LongtailError(f"features must be an (N, D) matrix; got shape {points.shape}.")
    num_points, dim = points.shape
    if not 1 <= k < num_points:
        raise LongtailError(f"k={k} neighbours needs at least k + 1 = {k + 1} points; got {num_points}.")
    distances, neighbours = NearestNeighbors(n_neighbors=k).fit(points).kneighbors()
    values = np.exp(-(distances**2) / (2.0 * sigma**2 * dim))
    indptr = np.arange(0, num_points * k + 1, k)
    return scipy.sparse.csr_matrix((values.ravel(), neighbours.ravel(), indptr), shape=(num_points, num_points))


def restrict(similarity: scipy.sparse.spmatrix | scipy.sparse.sparray, indices: Tensor | np.ndarray):
    """The sub-graph ``S[indices][:, indices]`` of the rows in a batch or memory bank (stays sparse)."""
    idx = np.asarray(indices.cpu() if isinstance(indices, Tensor) else indices, dtype=np.int64)
    return scipy.sparse.csr_matrix(similarity)[idx][:, idx]


def _symmetric_sparse(similarity: SimilarityLike, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """``S + Sᵀ`` as a coalesced torch sparse (COO) tensor."""
    if isinstance(similarity, Tensor):
        matrix = similarity.detach().to(device=device, dtype=dtype)
        matrix = matrix.to_dense() if matrix.layout != torch.strided else matrix
        return (matrix + matrix.T).to_sparse()
    matrix = scipy.sparse.coo_matrix(similarity, dtype=np.float64)
    symmetric = (matrix + matrix.T).tocoo()
    indices = torch.from_numpy(np.vstack([symmetric.row, symmetric.col]).astype(np.int64))
    values = torch.from_numpy(symmetric.data)
    return torch.sparse_coo_tensor(
        indices, values, symmetric.shape, dtype=dtype, device=device, check_invariants=True
    ).coalesce()


@dataclass
class SP2OTResult:
    """``plan`` (N, K) scaled by N, MM steps, total inner scaling iterations, final objective ``f(Q)``."""

    plan: Tensor
    mm_iterations: int
    inner_iterations: int
    objective: float


class SP2OTSolver:
    """Stateful SP²OT solver: ``solver.solve(logits, similarity)``; ``solver(logits, similarity)`` -> plan.

    ``similarity`` is the (N, N) graph of the rows of ``logits`` (scipy sparse, torch sparse or dense). The
    inner stabilised P²OT state persists between calls (reset with :meth:`reset`); set ``solver.rho`` as
    it ramps.
    """

    def __init__(
        self,
        rho: float = 1.0,
        *,
        epsilon: float = 0.1,
        lam: float = 1.0,
        structure_weight: float = 1000.0,
        reference_rows: int | None = 5120,
        fix_structure_weight: bool = False,
        tol: float = 1e-6,
        max_iter: int = 100,
        inner_tol: float = 1e-10,
        inner_max_iter: int = 1000,
        ema: float = 1.0,
        marginals: Marginals = "exact",
        warm_start: bool = True,
        accelerate: bool = True,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if not 0.0 < ema <= 1.0:
            raise LongtailError(f"ema is the MM step size and must lie in (0, 1]; got {ema}.")
        self.inner = P2OTSolver(
            rho, epsilon=epsilon, lam=lam, tol=inner_tol, max_iter=inner_max_iter, stabilize=True,
            marginals=marginals, warm_start=warm_start, accelerate=accelerate, dtype=dtype,
        )
        self.structure_weight = structure_weight
        self.reference_rows = reference_rows
        self.fix_structure_weight = fix_structure_weight
        self.tol = tol
        self.max_iter = max_iter
        self.ema = ema
        self.dtype = dtype

    @property
    def rho(self) -> float:
        return self.inner.rho

    @rho.setter
    def rho(self, value: float) -> None:
        self.inner.rho = value

    def reset(self) -> None:
        """Forget the inner solver's warm-start state."""
        self.inner.reset()

    def structure_lambda(self, num_rows: int) -> float:
        """``lam1 = (1 - rho) * structure_weight * N / reference_rows`` (see the module docstring)."""
        weight = self.structure_weight
        if self.reference_rows is not None:
            weight = weight * num_rows / self.reference_rows
        return weight if self.fix_structure_weight else (1.0 - self.rho) * weight

    def solve(self, logits: Tensor, similarity: SimilarityLike) -> SP2OTResult:
        cost = cost_from_logits(logits, self.dtype)
        num_rows, num_cols = cost.shape
        if tuple(similarity.shape) != (num_rows, num_rows):
            raise LongtailError(
                f"similarity must be ({num_rows}, {num_rows}) for {num_rows} rows of logits; got "
                f"{tuple(similarity.shape)}. Use restrict(graph, indices) for a batch of a larger graph."
            )
        symmetric = _symmetric_sparse(similarity, self.dtype, cost.device)
        lam1 = self.structure_lambda(num_rows)
        epsilon = self.inner.epsilon

        plan = torch.full_like(cost, self.rho / (num_rows * num_cols))
        neighbour_mass = symmetric @ plan
        objective = _objective(plan, cost, neighbour_mass, lam1, epsilon)
        inner_iterations, mm_iterations = 0, 0
        for mm_iterations in range(1, self.max_iter + 1):
            linearised_cost = neighbour_mass.mul_(-lam1).add_(cost)  # C - lam1 (S + Sᵀ) Q, in place
            step = self.inner.solve_cost(linearised_cost, scale_by_n=False)
            del linearised_cost, neighbour_mass
            inner_iterations += step.iterations
            plan = step.plan if self.ema == 1.0 else plan.mul_(1.0 - self.ema).add_(step.plan, alpha=self.ema)
            neighbour_mass = symmetric @ plan
            new_objective = _objective(plan, cost, neighbour_mass, lam1, epsilon)
            converged = abs(new_objective - objective) < self.tol
            objective = new_objective
            if converged:
                break
        return SP2OTResult(plan.mul_(num_rows), mm_iterations, inner_iterations, objective)

    def __call__(self, logits: Tensor, similarity: SimilarityLike) -> Tensor:
        return self.solve(logits, similarity).plan


def _objective(plan: Tensor, cost: Tensor, neighbour_mass: Tensor, lam1: float, epsilon: float) -> float:
    """``f(Q) = <Q, C> - lam1 <S, Q Qᵀ> + epsilon <Q, log Q>``, using ``<S, Q Qᵀ> = ½ <Q, (S + Sᵀ) Q>``; the
    entropy is summed over row blocks so that no full-size temporary is made."""
    flat_plan = plan.reshape(-1)
    transport = torch.dot(flat_plan, cost.reshape(-1))
    structure = 0.5 * torch.dot(flat_plan, neighbour_mass.reshape(-1))
    rows = block_rows(plan)
    buffer = plan.new_empty(min(rows, plan.shape[0]), plan.shape[1])
    entropy = plan.new_zeros(())
    for start in range(0, plan.shape[0], rows):
        block = plan[start : start + rows]
        logs = torch.add(block, LOG_FLOOR, out=buffer[: block.shape[0]]).log_()
        entropy += torch.dot(block.reshape(-1), logs.reshape(-1))
    return float(transport - lam1 * structure + epsilon * entropy)
