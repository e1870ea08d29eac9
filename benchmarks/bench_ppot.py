"""P²OT solver time for a large memory bank: N = 50,000 rows, K = 100 and 1,000 clusters, float32 / float64.

    python benchmarks/bench_ppot.py                                   # N=50,000, K=100 and 1,000, both dtypes
    python benchmarks/bench_ppot.py --n 2000 --k 10 --max-iter 50     # quick check
    python benchmarks/bench_ppot.py --device cuda

The logits are those of a cosine head (scale 10) on features drawn around K random prototypes with
long-tailed cluster sizes, so the plans look like the ones met in training. Each case solves once from a
fresh state ("fresh") and once more on a perturbed second view from the kept state ("warm", as the
official code reuses ``b`` across views and batches); both at the defaults epsilon = 0.1, lam = 1,
tolerance 1e-6, at most ``--max-iter`` iterations. The table gives iterations, seconds and ms per iteration.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from longtail.clustering.ppot import P2OTSolver

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="rows (memory-bank size)")
    parser.add_argument("--k", type=int, nargs="+", default=[100, 1000], help="numbers of clusters")
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--rho", type=float, default=0.5)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def cosine_logits(num_rows: int, num_clusters: int, seed: int, dim: int = 128) -> list[torch.Tensor]:
    """Two views of cosine-head logits (scale 10) for features around long-tailed clusters."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = F.normalize(torch.randn(num_clusters, dim, generator=generator), dim=1)
    sizes = torch.exp(-torch.linspace(0, 4.6, num_clusters))
    members = torch.multinomial(sizes / sizes.sum(), num_rows, replacement=True, generator=generator)
    features = prototypes[members] + 0.12 * torch.randn(num_rows, dim, generator=generator)
    second = features + 0.03 * torch.randn(num_rows, dim, generator=generator)
    head = F.normalize(prototypes + 0.05 * torch.randn(num_clusters, dim, generator=generator), dim=1)
    return [10.0 * F.normalize(view, dim=1) @ head.T for view in (features, second)]


def timed(solver: P2OTSolver, logits: torch.Tensor, device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = solver.solve(logits)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, N = {args.n:,}, rho = {args.rho}")
    print("| K | dtype | start | iterations | seconds | ms / iteration | transported mass / N |")
    print("|---|---|---|---|---|---|---|")
    for num_clusters in args.k:
        views = [view.to(args.device) for view in cosine_logits(args.n, num_clusters, args.seed)]
        for dtype_name in args.dtype:
            solver = P2OTSolver(args.rho, max_iter=args.max_iter, dtype=DTYPES[dtype_name])
            for start, logits in zip(("fresh", "warm"), views):
                result, seconds = timed(solver, logits, args.device)
                mass = result.plan.sum().item() / args.n
                print(f"| {num_clusters:,} | {dtype_name} | {start} | {result.iterations} | {seconds:.2f} | "
                      f"{1000 * seconds / result.iterations:.2f} | {mass:.4f} |", flush=True)


if __name__ == "__main__":
    main()
