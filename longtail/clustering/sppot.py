"""SP²OT: semantic-regularised progressive partial optimal transport.

Paper: C. Zhang, H. Ren, X. He, "SP²OT: Semantic-Regularized Progressive Partial Optimal Transport for
Imbalanced Clustering" (arXiv 2404.03446), the journal extension of P²OT. Official code: rhfeiyang/SPPOT,
``utils/sinkhorn_knopp.py::MMOT`` and ``utils/structure.py`` (this module is an independent implementation).

Semantic graph. From features ``x_i`` (dimension D): ``S_ij = exp(-||x_i - x_j||² / (2 sigma² D))`` for the
``k`` nearest neighbours ``j != i`` of each row ``i`` and 0 elsewhere (defaults sigma = 2, k = 20). The top-k
is per row, so ``S`` is not symmetric. :func:`knn_similarity` builds it sparse (a ``scipy.sparse.csr_matrix``),
never as a dense N x N matrix; :func:`restrict` takes the sub-graph of a batch or memory bank.

Neighbour search. :func:`nearest_neighbours` is an exact blocked brute force on the features' device (CPU or
CUDA). Per block of rows it screens all points with ``||y||² - 2 x·y`` of the centred points in float32 (one
matrix product) and keeps ``k + 8`` candidates: the columns are split into strided groups of 16, the
``k + 8`` groups with the smallest minimum are kept (they hold the ``k + 8`` smallest scores) and the
candidates are the ``k + 8`` smallest scores among them, several times cheaper than ``topk`` over whole
rows. The candidates are re-ranked by float64 squared distances from differences ``||x - y||²`` (no
cancellation) and ordered by (distance, index), so ties go to the smaller index. A row is accepted only if
its k-th distance lies below every non-candidate's by more than the screen's rounding error bound
``2 (D + 8) u (max ||y|| + ||x||)²`` (centred norms, ``u = 2⁻²⁴``); its neighbours are then exactly the k
smallest by (float64 distance, index), the float32 screen only chose where to look. The rare rows that
fail (near-ties at the k-th place, many duplicate points, clusters far apart) are screened again in
float64 (``u = 2⁻⁵³``), then with twice as many candidates, until they pass (with all N - 1 other points
as candidates they always do). When float32 matrix products are not IEEE (TF32 or bf16 set through
``torch.backends``) the screen is float64 from the start. A block's temporaries (scores, selection,
re-ranking differences) stay within ``max_block_bytes``, but for at least one row: 256 MiB on the CPU,
where fewer, larger blocks matter when threads share busy cores, and 1 GiB on an accelerator.

Objective. Under the P²OT constraints (see :mod:`longtail.clustering.ppot`)::

    f(Q) = <Q, C> - lam1 <S, Q Qᵀ> + epsilon <Q, log Q>,      C = -log softmax(logits)

``(Q Qᵀ)_ij`` is the probability that samples i and j share a cluster, so the second term rewards putting
semantic neighbours together. Majorisation-minimisation linearises it at the current iterate ``Qᵗ``
(``Q⁰ = rho / (N K)``)::

    C̃ᵗ = C - lam1 (S + Sᵀ) Qᵗ,     Q_new = P²OT(C̃ᵗ),     Qᵗ⁺¹ = (1 - ema) Qᵗ + ema Q_new   (ema = 1)

until ``|f(Qᵗ⁺¹) - f(Qᵗ)| < tol`` (1e-6) or ``max_iter`` (100) steps; the result is ``N Q``. The inner P²OT
solve is the log-domain stabilised scaling (``stabilize=True``, tolerance 1e-10, 1000 iterations) whose
duals ``u``, ``v`` and scaling ``b`` persist across MM steps and across calls (warm start); it is
Anderson-accelerated unless ``accelerate=False`` (the official iterates and inner iteration counts). The
tolerance 1e-10 is absolute while ``b`` grows with ``lam1`` (norms of 1e5–1e6 at N = 10,000), so it lies below
the rounding of ``b`` and the official inner loops run to their cap of 1000 with a plan that no longer
changes; the accelerated solve also stops once the change of ``b`` stalls at rounding level (see
:mod:`longtail.clustering.ppot`), about 40–100 inner iterations per MM step instead of 1000. The MM
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

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

from longtail.clustering.ppot import Marginals, P2OTSolver, cost_from_logits
from longtail.clustering.scaling import block_rows
from longtail.errors import LongtailError

LOG_FLOOR = float(torch.finfo(torch.float32).tiny)
SimilarityLike = scipy.sparse.spmatrix | scipy.sparse.sparray | Tensor | np.ndarray
SPARE_CANDIDATES = 8
SCREEN_GROUP = 16
RERANK_BYTES = 16 * 2**20
CPU_BLOCK_BYTES = 256 * 2**20
ACCELERATOR_BLOCK_BYTES = 2**30


def knn_similarity(
    features: Tensor | np.ndarray, k: int = 20, sigma: float = 2.0, *, max_block_bytes: int | None = None
) -> scipy.sparse.csr_matrix:
    """Sparse row-wise k-NN Gaussian graph (N, N): ``exp(-d² / (2 sigma² D))`` to each row's ``k`` nearest
    other rows (exact, ties to the smaller index, see :func:`nearest_neighbours`, which ``max_block_bytes``
    is passed to), no self-loops, not symmetrised (float64). Each row's entries are stored nearest first."""
    squared_distances, neighbours = nearest_neighbours(features, k, max_block_bytes=max_block_bytes)
    num_points, dim = len(neighbours), _as_tensor(features).shape[1]
    values = torch.exp(squared_distances / (-2.0 * sigma**2 * dim))
    indptr = np.arange(0, num_points * k + 1, k)
    return scipy.sparse.csr_matrix(
        (values.cpu().numpy().ravel(), neighbours.cpu().numpy().ravel(), indptr), shape=(num_points, num_points)
    )


def nearest_neighbours(
    features: Tensor | np.ndarray, k: int, *, max_block_bytes: int | None = None
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest other points of every point, exactly (module docstring, "Neighbour search").

    Returns float64 squared distances and int64 indices, both (N, k) on the features' device, each row
    ordered by (distance, index). ``max_block_bytes`` bounds the temporaries of a block of rows.
    """
    points = _as_tensor(features)
    if points.ndim != 2:
        raise LongtailError(f"features must be an (N, D) matrix; got shape {tuple(points.shape)}.")
    num_points = points.shape[0]
    if not 1 <= k < num_points:
        raise LongtailError(f"k={k} neighbours needs at least k + 1 = {k + 1} points; got {num_points}.")
    budget = max_block_bytes or (CPU_BLOCK_BYTES if points.device.type == "cpu" else ACCELERATOR_BLOCK_BYTES)
    exact_points = points.to(torch.float64)
    squared_distances = exact_points.new_empty(num_points, k)
    neighbours = torch.empty(num_points, k, dtype=torch.int64, device=points.device)
    pending = torch.arange(num_points, device=points.device)
    screen_dtype = torch.float32 if _float32_matmul_is_ieee(points.device) else torch.float64
    num_candidates = min(k + SPARE_CANDIDATES, num_points - 1)
    while len(pending):
        screen = _Screen.build(exact_points, screen_dtype, num_candidates, len(pending), budget)
        failed = []
        for rows in pending.split(screen.block_rows):
            block_distances, block_neighbours, accepted = screen.search(rows, k)
            squared_distances[rows[accepted]] = block_distances[accepted]
            neighbours[rows[accepted]] = block_neighbours[accepted]
            failed.append(rows[~accepted])
        pending = torch.cat(failed)
        if screen_dtype == torch.float32:
            screen_dtype = torch.float64
        else:
            num_candidates = min(2 * num_candidates, num_points - 1)
    return squared_distances, neighbours


def _as_tensor(features: Tensor | np.ndarray) -> Tensor:
    return features.detach() if isinstance(features, Tensor) else torch.from_numpy(np.asarray(features))


def _float32_matmul_is_ieee(device: torch.device) -> bool:
    """Whether float32 matrix products on ``device`` round in float32 (not TF32 or bf16), which the
    screening error bound assumes."""
    backend = torch.backends.cuda.matmul if device.type == "cuda" else torch.backends.mkldnn.matmul
    precision = backend.fp32_precision
    if precision == "none":
        precision = torch.backends.fp32_precision
    return precision in ("none", "ieee")


@dataclass
class _Screen:
    """One screening pass: the centred points in the screening dtype as queries ``[x, 1]`` and as columns
    ``[-2 y, ||y||²]``, so that one matrix product gives the scores ``||y||² - 2 x·y`` (no broadcast add, an
    extra pass over a block), the columns padded to whole groups with ``[0, max]``, and the buffers of a
    block's scores and of re-ranking differences (at most 16 MiB), reused by every block: fresh ones cost
    page faults."""

    exact_points: Tensor
    queries: Tensor
    columns: Tensor
    centred_squared_norms: Tensor
    error_scale: Tensor
    group: int
    num_candidates: int
    scores: Tensor
    differences: Tensor

    @classmethod
    def build(
        cls, exact_points: Tensor, dtype: torch.dtype, num_candidates: int, num_rows: int, budget: int
    ) -> _Screen:
        num_points, dim = exact_points.shape
        # at least num_candidates groups, so that the kept groups can hold every candidate
        group = max(1, min(SCREEN_GROUP, num_points // num_candidates))
        padded = math.ceil(num_points / group) * group
        # distances do not change under translation, and centring shrinks the norms the error grows with
        centred = exact_points - exact_points.mean(dim=0)
        centred_squared_norms = centred.square().sum(1)
        queries = torch.cat([centred, centred.new_ones(num_points, 1)], dim=1).to(dtype)
        columns = exact_points.new_zeros(padded, dim + 1, dtype=dtype)
        columns[:num_points, :dim] = centred * -2.0
        columns[:num_points, dim] = centred_squared_norms
        columns[num_points:, dim] = torch.finfo(dtype).max
        norms = centred_squared_norms.sqrt()
        error_scale = 2 * (dim + 8) * (torch.finfo(dtype).eps / 2) * (norms.max() + norms) ** 2

        difference_bytes = dim * exact_points.element_size()
        differences = exact_points.new_empty(max(1, min(budget // 2, RERANK_BYTES) // difference_bytes), dim)
        element = columns.element_size()
        row_bytes = (
            padded * element  # scores
            + padded // group * (element + 8)  # group minima and the kept groups
            + num_candidates * group * (element + 8)  # scores of the kept groups and their columns
        )
        remaining = budget - len(differences) * difference_bytes
        scores = columns.new_empty(min(num_rows, max(1, remaining // row_bytes)), padded)
        return cls(
            exact_points, queries, columns, centred_squared_norms, error_scale, group, num_candidates, scores,
            differences,
        )

    @property
    def block_rows(self) -> int:
        return self.scores.shape[0]

    def search(self, rows: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """(squared distances, neighbours, accepted) of the block ``rows``; see the module docstring."""
        candidates, screen_bound = self._candidates(rows)
        candidates = candidates.sort(dim=1).values
        distances = _squared_distances(self.exact_points, rows, candidates, self.differences)
        order = distances.sort(dim=1, stable=True).indices[:, :k]
        distances, neighbours = distances.gather(1, order), candidates.gather(1, order)
        if self.num_candidates == self.exact_points.shape[0] - 1:
            accepted = torch.ones_like(rows, dtype=torch.bool)
        else:
            kth_score = distances[:, -1] - self.centred_squared_norms[rows]
            accepted = kth_score < screen_bound - self.error_scale[rows]
        return distances, neighbours, accepted

    def _candidates(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """The columns of the ``num_candidates`` smallest scores of each row (self excluded) and the largest
        of those scores, a lower bound on every other column's score."""
        scores = _screen_scores(self.queries[rows], self.columns, out=self.scores[: len(rows)])
        scores.scatter_(1, rows.reshape(-1, 1), math.inf)
        num_groups = scores.shape[1] // self.group
        # group g holds the columns g, g + num_groups, ...: the minimum runs over contiguous rows
        group_minima = scores.view(len(rows), self.group, num_groups).amin(dim=1)
        kept = group_minima.topk(self.num_candidates, dim=1, largest=False, sorted=False).indices
        offsets = torch.arange(0, scores.shape[1], num_groups, device=rows.device)
        columns = (kept.unsqueeze(1) + offsets.reshape(1, -1, 1)).reshape(len(rows), -1)
        best = scores.gather(1, columns).topk(self.num_candidates, dim=1, largest=False, sorted=False)
        return columns.gather(1, best.indices), best.values.amax(dim=1).to(torch.float64)


def _screen_scores(queries: Tensor, columns: Tensor, out: Tensor) -> Tensor:
    """``[x, 1] · [-2 y, ||y||²] = ||y||² - 2 x·y`` for every query ``x`` (rows) and point ``y`` (columns):
    the squared distance less the row constant ``||x||²``."""
    return torch.mm(queries, columns.T, out=out)


def _squared_distances(points: Tensor, rows: Tensor, columns: Tensor, buffer: Tensor) -> Tensor:
    """``||x_rows[i] - x_columns[i, j]||²`` (float64, from differences), in chunks of rows (and of columns,
    for many candidates) whose differences fit ``buffer``."""
    distances = points.new_empty(columns.shape)
    column_chunk = min(columns.shape[1], len(buffer))
    row_chunk = max(1, len(buffer) // columns.shape[1])
    for start in range(0, len(rows), row_chunk):
        queries = points[rows[start : start + row_chunk]].unsqueeze(1)
        for column in range(0, columns.shape[1], column_chunk):
            part = columns[start : start + row_chunk, column : column + column_chunk]
            differences = torch.index_select(points, 0, part.reshape(-1), out=buffer[: part.numel()])
            differences = differences.view(*part.shape, -1).sub_(queries).square_()
            distances[start : start + row_chunk, column : column + column_chunk] = differences.sum(dim=2)
    return distances


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
