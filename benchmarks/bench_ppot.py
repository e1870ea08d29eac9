"""P²OT and SP²OT solvers against the plain scaling loop, on the same logits, in one run.

    python benchmarks/bench_ppot.py                                      # N=50,000, K=1,000; SP²OT K=100
    python benchmarks/bench_ppot.py --n 5000 --k 200 --sp2ot-n 5000     # quick check
    python benchmarks/bench_ppot.py --n 0 --sp2ot-n 50000                 # SP²OT only
    python benchmarks/bench_ppot.py --device cuda

P²OT table. "plain loop" is the paper's scaling iteration written plainly in torch (dense kernel ``M``,
``a = alpha / (M b)``, ``b = (beta / (Mᵀ a)) ** f`` until ``||b - b_prev|| < tol``); "library" is
:class:`~longtail.clustering.ppot.P2OTSolver` with its defaults (Anderson-accelerated, fused row-blocked
pass); "library, warm" solves a second, perturbed view from the kept state, as training does. Both at
epsilon = 0.1, lam = 1, tolerance 1e-6, at most ``--max-iter`` iterations, from a fresh start. "rel. L1"
is ``||Q - Q_plain||_1 / ||Q_plain||_1`` against the plain loop at the same rho.

SP²OT table. "plain" is :class:`~longtail.clustering.sppot.SP2OTSolver` with ``accelerate=False`` (the
iterates of the official MM loop and its plain inner scaling), "library" the default; the graph is the
sparse k-NN graph (k = 20) of the features behind the logits. Its build time is printed first, at one
thread and at ``--threads``, against scikit-learn's ``NearestNeighbors`` (float64, the graph's former
search, on the CPU with as many threads) on the same features, with the number of rows whose neighbour
sets differ.

The logits are those of a cosine head (scale 10) on features drawn around K random prototypes with
long-tailed cluster sizes, so the plans look like the ones met in training.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from longtail.clustering.ppot import P2OTSolver, cost_from_logits, transport_marginals
from longtail.clustering.sppot import SP2OTSolver, knn_similarity

DTYPES = {"float32": torch.float32, "float64": torch.float64}
KNN = 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="P²OT rows (memory-bank size; 0 skips P²OT)")
    parser.add_argument("--k", type=int, default=1000, help="P²OT clusters")
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.5, 0.1, 0.9])
    parser.add_argument("--dtype", default="float64", choices=list(DTYPES))
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--sp2ot-n", type=int, default=50_000, help="SP²OT rows (0 skips SP²OT)")
    parser.add_argument("--sp2ot-k", type=int, default=100, help="SP²OT clusters")
    parser.add_argument("--sp2ot-rho", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def clustered_views(num_rows: int, num_clusters: int, seed: int, dim: int = 128):
    """Features around long-tailed clusters and two views of cosine-head logits (scale 10)."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = F.normalize(torch.randn(num_clusters, dim, generator=generator), dim=1)
    sizes = torch.exp(-torch.linspace(0, 4.6, num_clusters))
    members = torch.multinomial(sizes / sizes.sum(), num_rows, replacement=True, generator=generator)
    features = prototypes[members] + 0.12 * torch.randn(num_rows, dim, generator=generator)
    second = features + 0.03 * torch.randn(num_rows, dim, generator=generator)
    head = F.normalize(prototypes + 0.05 * torch.randn(num_clusters, dim, generator=generator), dim=1)
    return features, [10.0 * F.normalize(view, dim=1) @ head.T for view in (features, second)]


@dataclass
class PlainResult:
    plan: torch.Tensor
    iterations: int
    error: float


def plain_scaling_loop(logits: torch.Tensor, rho: float, dtype: torch.dtype, max_iter: int,
                       epsilon: float = 0.1, lam: float = 1.0, tol: float = 1e-6) -> PlainResult:
    """The P²OT scaling iteration as the paper writes it, dense and unaccelerated."""
    cost = cost_from_logits(logits, dtype)
    num_rows, num_cols = cost.shape
    kernel = torch.exp(-torch.cat([cost, cost.new_zeros(num_rows, 1)], dim=1) / epsilon)
    alpha, beta = transport_marginals(num_rows, num_cols, rho, dtype, cost.device)
    exponent = torch.ones_like(beta)
    exponent[:num_cols] = lam / (lam + epsilon)
    b = torch.full_like(beta, 1.0 / (num_cols + 1))
    error, iterations = float("inf"), 0
    while iterations < max_iter and error > tol:
        a = alpha / (kernel @ b)
        new_b = (beta / (kernel.T @ a)) ** exponent
        error = torch.linalg.vector_norm(new_b - b).item()
        b, iterations = new_b, iterations + 1
    plan = num_rows * (a * kernel * b.T)[:, :num_cols]
    return PlainResult(plan=plan, iterations=iterations, error=error)


def timed(solve: Callable[[], object], device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = solve()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def relative_l1(plan: torch.Tensor, reference: torch.Tensor) -> float:
    return ((plan - reference).abs().sum() / reference.abs().sum()).item()


def p2ot_table(args: argparse.Namespace) -> None:
    dtype = DTYPES[args.dtype]
    _, views = clustered_views(args.n, args.k, args.seed)
    views = [view.to(args.device) for view in views]
    print(f"\nP²OT: N = {args.n:,}, K = {args.k:,}, {args.dtype}, tolerance 1e-6, max {args.max_iter} iterations")
    print("| rho | solver | iterations | final error | seconds | ms / iteration | rel. L1 to plain | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for rho in args.rhos:
        plain, plain_seconds = timed(lambda: plain_scaling_loop(views[0], rho, dtype, args.max_iter), args.device)
        row(rho, "plain loop", plain, plain_seconds, "0", 1.0)
        solver = P2OTSolver(rho, max_iter=args.max_iter, dtype=dtype)
        fresh, seconds = timed(lambda: solver.solve(views[0]), args.device)
        row(rho, "library", fresh, seconds, f"{relative_l1(fresh.plan, plain.plan):.1e}", plain_seconds / seconds)
        del plain, fresh
        warm, seconds = timed(lambda: solver.solve(views[1]), args.device)
        row(rho, "library, warm (view 2)", warm, seconds, "", plain_seconds / seconds)


def row(rho: float, name: str, result, seconds: float, difference: str, speedup: float) -> None:
    print(f"| {rho} | {name} | {result.iterations} | {result.error:.1e} | {seconds:.2f} | "
          f"{1000 * seconds / result.iterations:.1f} | {difference} | {speedup:.1f}x |", flush=True)


def sp2ot_table(args: argparse.Namespace) -> None:
    dtype = DTYPES[args.dtype]
    features, views = clustered_views(args.sp2ot_n, args.sp2ot_k, args.seed)
    print(f"\nSP²OT: N = {args.sp2ot_n:,}, K = {args.sp2ot_k:,}, rho = {args.sp2ot_rho}, {args.dtype}")
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        graph, seconds = timed(lambda: knn_similarity(features.to(args.device), k=KNN), args.device)
        with threadpool_limits(threads):
            reference, reference_seconds = timed(
                lambda: NearestNeighbors(n_neighbors=KNN).fit(features.double().numpy()).kneighbors()[1], "cpu"
            )
        differing_rows = (
            np.sort(graph.indices.reshape(-1, KNN), axis=1) != np.sort(reference, axis=1)
        ).any(axis=1).sum()
        print(f"k-NN graph (k = {KNN}, {graph.nnz:,} edges), {threads} thread(s): library {seconds:.2f} s, "
              f"scikit-learn NearestNeighbors {reference_seconds:.2f} s ({reference_seconds / seconds:.1f}x); "
              f"neighbour sets differ in {differing_rows} rows", flush=True)
    torch.set_num_threads(args.threads)
    print("| solver | MM steps | inner iterations | seconds | rel. L1 to plain | speed-up |")
    print("|---|---|---|---|---|---|")
    logits = views[0].to(args.device)
    results = {}
    for name, accelerate in (("plain", False), ("library", True)):
        solver = SP2OTSolver(args.sp2ot_rho, dtype=dtype, accelerate=accelerate)
        results[name] = timed(lambda: solver.solve(logits, graph), args.device)
    (plain, plain_seconds) = results["plain"]
    for name, (result, seconds) in results.items():
        print(f"| {name} | {result.mm_iterations} | {result.inner_iterations} | {seconds:.2f} | "
              f"{relative_l1(result.plan, plain.plan):.1e} | {plain_seconds / seconds:.1f}x |", flush=True)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}")
    if args.n:
        p2ot_table(args)
    if args.sp2ot_n:
        sp2ot_table(args)


if __name__ == "__main__":
    main()
