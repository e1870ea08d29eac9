"""Label-free clustering of fixed features: k-means, balanced Sinkhorn, P²OT and SP²OT side by side.

    python benchmarks/cluster_features.py                              # digits-lt IF 10, PCA-32 of the pixels
    python benchmarks/cluster_features.py --seeds 0 1 2 --imbalance 10
    python benchmarks/cluster_features.py --features-file feats.npz    # arrays 'features' (N, D), 'targets' (N,)
    python benchmarks/cluster_features.py --epochs 5 --seeds 0         # quick check
    python benchmarks/cluster_features.py --jobs 12                    # (method, seed) runs in parallel

digits-lt comes from ``longtail.data.create_datasets`` (training split, exponential profile, no
validation split); its features are the 8x8 grey pixels, standardised, reduced by PCA (fitted without
labels). A ``--features-file`` clusters any precomputed features instead, e.g. CIFAR-10-LT features of a
backbone that never saw its labels. The clustered (long-tailed) set itself is evaluated: accuracy after
Hungarian matching, mean per-class accuracy, NMI, ARI, macro-F1 and head / medium / tail (first 30% /
middle 40% / last 30% of classes by size), as mean ± sample standard deviation over the seeds. Each run uses
``--threads`` torch threads (default 1: these problems are small, and one thread is fastest on a busy CPU).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from longtail.clustering.baselines import METHODS, cluster_features
from longtail.clustering.metrics import clustering_metrics

COLUMNS = ("acc", "mean_class_acc", "nmi", "ari", "macro_f1", "head", "medium", "tail")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features-file", default=None, help="npz with 'features' (N, D) and 'targets' (N,)")
    parser.add_argument("--imbalance", type=float, default=10.0, help="digits-lt imbalance factor")
    parser.add_argument("--pca-dim", type=int, default=32, help="digits-lt: PCA dimensions of the pixels")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100, help="self-labelling epochs")
    parser.add_argument("--jobs", type=int, default=1, help="(method, seed) runs in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    return parser.parse_args()


def digits_features(imbalance: float, pca_dim: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    from longtail.data import create_datasets

    splits = create_datasets("digits-lt", imbalance=imbalance, image_size=8, val_per_class=0)
    pixels = splits.train.images[:, 0].reshape(len(splits.train), -1).float().numpy()
    features = PCA(pca_dim, random_state=0).fit_transform(StandardScaler().fit_transform(pixels))
    return features, splits.train.targets, splits.info.train_counts


def file_features(path: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    with np.load(path) as data:
        features, targets = data["features"].astype(np.float32), data["targets"].astype(np.int64)
    return features, targets, np.bincount(targets).tolist()


def run_one(features: np.ndarray, targets: np.ndarray, counts: list[int], method: str, seed: int, epochs: int,
            threads: int) -> tuple[dict[str, float], float]:
    """Scores (percent) and seconds of one (method, seed) run."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    options = {} if method == "kmeans" else {"epochs": epochs}
    clusters = cluster_features(features, len(counts), method, seed=seed, **options)
    seconds = time.perf_counter() - start
    metrics = clustering_metrics(clusters, targets, train_counts=counts)
    return {name: 100 * metrics[name] for name in COLUMNS}, seconds


def main() -> None:
    args = parse_args()
    if args.features_file:
        features, targets, counts = file_features(args.features_file)
        source = args.features_file
    else:
        features, targets, counts = digits_features(args.imbalance, args.pca_dim)
        source = f"digits-lt IF {args.imbalance:g}, PCA-{args.pca_dim} of the pixels"
    print(f"{source}: N = {len(targets)}, K = {len(counts)}, class sizes {counts}, seeds {args.seeds}\n")
    runs = [(method, seed) for method in args.methods for seed in args.seeds]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {run: pool.submit(run_one, features, targets, counts, *run, args.epochs, args.threads)
                   for run in runs}
        print("| method | " + " | ".join(COLUMNS) + " | seconds |")
        print("|---" * (len(COLUMNS) + 2) + "|")
        for method in args.methods:
            results = [futures[(method, seed)].result() for seed in args.seeds]
            cells = [mean_std(values) for values in zip(*[[scores[name] for name in COLUMNS] for scores, _ in results])]
            seconds = np.mean([seconds for _, seconds in results])
            print(f"| {method} | " + " | ".join(cells) + f" | {seconds:.1f} |", flush=True)


def mean_std(values: Sequence[float]) -> str:
    """``mean ± sample std``, the mean alone for one seed."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


if __name__ == "__main__":
    main()
