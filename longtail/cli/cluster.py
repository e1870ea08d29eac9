"""``longtail cluster``: deep imbalanced clustering (P²OT / SP²OT, ``longtail.methods.p2ot``) and its metrics.

Three modes:

- ``longtail cluster --recipe NAME [key=value ...] [--run-dir DIR]`` trains a clustering recipe (e.g.
  ``p2ot-digits-lt``) with the trainer, then prints the clustering metrics of the test split: accuracy after
  Hungarian matching, mean per-class accuracy, NMI, ARI, macro-F1 and head / medium / tail accuracy
  (``longtail.clustering.clustering_metrics``), also written to ``DIR/clustering.json``. ``--run-dir DIR``
  alone evaluates a finished run; ``--resume`` continues an unfinished one.
- ``longtail cluster --features FILE`` clusters fixed features (a ``.npz`` or ``.pt`` holding ``features``
  (N, D), ``targets`` (N,) and optionally ``train_counts``) with k-means, balanced Sinkhorn, P²OT and SP²OT
  self-labelling (``longtail.clustering.cluster_features``) and prints the same table.
- ``longtail cluster --inat-subset N --lists DIR [--out DIR]`` writes the list files of the papers'
  iNaturalist 2018 subset of N classes, for ``data.args.list_root`` of the ``p2ot-inat*`` recipes.
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longtail.cli.arguments import DATA_LOCATION_KEYS, checked_overrides, positive_int
from longtail.config import config_spelling
from longtail.errors import LongtailError

DEFAULT_RUNS = Path("runs")
spell_setting = config_spelling
DEFAULT_SUBSETS = Path("data") / "inat2018-subsets"
BASELINES = ("kmeans", "sinkhorn", "p2ot", "sp2ot")
COLUMNS = (("ACC", "acc"), ("mACC", "mean_class_acc"), ("NMI", "nmi"), ("ARI", "ari"), ("F1", "macro_f1"),
           ("Head", "head"), ("Medium", "medium"), ("Tail", "tail"))
FEATURES_FIX = ("Give a .npz or .pt with 'features' (N, D) and 'targets' (N,), e.g. from `longtail predict RUN "
                "--features OUT.npz`.")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cluster",
        help="train a clustering recipe (P²OT / SP²OT) or cluster fixed features; print clustering metrics",
        description="Deep imbalanced clustering: train a p2ot-*/sp2ot-* recipe and report ACC, mACC, NMI, ARI, "
        "F1 and head/medium/tail on the test split; or cluster fixed features with the baselines.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--recipe", help="clustering recipe (`longtail recipes`, p2ot-*/sp2ot-*) or a YAML file")
    mode.add_argument("--features", type=Path, help=".npz/.pt with features (N, D), targets (N,)[, train_counts]")
    mode.add_argument("--inat-subset", type=positive_int, metavar="N", help="write the iNat 2018 subset lists of N classes")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides (with --recipe or --resume); with --run-dir alone, where its data is now")
    parser.add_argument("--run-dir", type=Path, help="run folder (default: runs/<recipe>/<date-time>)")
    parser.add_argument("--resume", action="store_true", help="continue the unfinished run in --run-dir")
    parser.add_argument("--force", action="store_true",
                        help="train again from scratch in --run-dir: deletes the files a run wrote there, keeps others")
    parser.add_argument("--methods", default=",".join(BASELINES),
                        help=f"with --features: comma-separated methods (default {','.join(BASELINES)})")
    parser.add_argument("--num-clusters", type=positive_int, help="with --features: clusters (default: the class count)")
    parser.add_argument("--seed", type=int, default=0, help="with --features: random seed")
    parser.add_argument("--lists", type=Path, help="with --inat-subset: folder with iNaturalist18_train/val.txt")
    parser.add_argument("--out", type=Path, help=f"with --inat-subset: output folder (default {DEFAULT_SUBSETS}/inatN)")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.features is not None:
        return _cluster_features(args)
    if args.inat_subset is not None:
        return _write_inat_subset(args)
    if args.recipe is None and args.run_dir is None:
        raise LongtailError("Give --recipe NAME (a p2ot-*/sp2ot-* recipe), --run-dir DIR of a run, --features FILE "
                            "or --inat-subset N.")
    return _train_and_cluster(args)


# ---------------------------------------------------------------------------------------------- recipes


def _train_and_cluster(args: argparse.Namespace) -> int:
    from longtail.distributed import broadcast_object, init_distributed
    from longtail.engine.trainer import resolve_device, train

    if args.recipe is None and not args.resume:
        results = cluster_run(args.run_dir, overrides=checked_overrides("cluster --run-dir", args.overrides,
                                                                       DATA_LOCATION_KEYS))
        print(format_cluster_table(results))
        return 0
    config = _config(args)
    if config.method.name != "p2ot":
        raise LongtailError(f"Recipe '{args.recipe}' trains method '{config.method.name}', not a clustering method; "
                            "use `longtail train` for it, or a p2ot-*/sp2ot-* recipe here.")
    context = init_distributed(resolve_device(config.train.device).type)
    run_dir = args.run_dir or broadcast_object(DEFAULT_RUNS / Path(args.recipe).stem / time.strftime("%Y%m%d-%H%M%S"),
                                               context)
    train(config, run_dir, resume=args.resume, force=args.force)
    if context.is_main:
        print(f"\n{format_cluster_table(cluster_run(run_dir))}\n\nrun: {run_dir}")
    return 0


def _config(args: argparse.Namespace):
    from longtail.config import apply_overrides, from_dict, parse_overrides
    from longtail.methods import runs
    from longtail.methods.recipes import resolve

    if args.recipe:
        return resolve(args.recipe, args.overrides)
    stored = runs.load_checkpoint(args.run_dir)["config"]
    return from_dict(apply_overrides(stored, parse_overrides(args.overrides)))


def cluster_run(
    run_dir: str | Path, device: str | torch.device | None = None, overrides: list[str] = ()
) -> dict[str, dict[str, Any]]:
    """Clustering metrics of the test split for the last weights of ``run_dir`` (and the selected ones when
    the run saved ``best.pt``); written to ``run_dir/clustering.json``. ``overrides``: data-location settings
    (the run's data moved)."""
    from longtail.clustering import clustering_metrics
    from longtail.config import apply_overrides, from_dict, parse_overrides
    from longtail.distributed import DistContext
    from longtail.engine.run_files import CLUSTERING
    from longtail.engine.trainer import resolve_device
    from longtail.evaluation.evaluator import Evaluator
    from longtail.methods import runs
    from longtail.methods.context import create_datasets_for

    run_dir = Path(run_dir)
    state = runs.load_checkpoint(run_dir)
    if not state.get("finished"):
        raise LongtailError(f"The run in {run_dir} is not finished; continue it with `longtail cluster --run-dir "
                            f"{run_dir} --resume`.")
    config = from_dict(apply_overrides(state["config"], parse_overrides(list(overrides))))
    device = torch.device(device) if device is not None else resolve_device(config.train.device)
    test = create_datasets_for(config).test
    candidates = {"last": run_dir / runs.CHECKPOINT, "best": run_dir / runs.BEST}
    results: dict[str, dict[str, Any]] = {}
    for which, path in candidates.items():
        if not path.is_file():
            continue
        trained = runs.load_trained_model(path, device)
        evaluator = Evaluator(trained.config, trained.method, trained.info, device, DistContext())
        heads, targets = evaluator.predictions(trained.model, test)
        clusters = heads["main"].argmax(dim=1)
        metrics = clustering_metrics(clusters, targets, trained.info.train_counts, trained.info.num_classes)
        results[f"{which} test"] = metrics
    (run_dir / CLUSTERING).write_text(json.dumps(_plain(results), indent=2))
    return results


def _plain(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: {key: (value.tolist() if isinstance(value, np.ndarray) else value)
                   for key, value in metrics.items()} for name, metrics in results.items()}


def format_cluster_table(results: dict[str, dict[str, Any]]) -> str:
    """ACC / mACC / NMI / ARI / F1 / Head / Medium / Tail (in %) of each row of ``results``."""
    header = ["", *(title for title, _ in COLUMNS)]
    body = [[name, *(_percent(metrics[key]) for _, key in COLUMNS)] for name, metrics in results.items()]
    table = [header, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join([row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:]))]).rstrip()
        for row in table
    )


def _percent(value: float) -> str:
    return "-" if value is None or np.isnan(value) else f"{100.0 * value:.2f}"


# ---------------------------------------------------------------------------------------------- fixed features


def load_features(path: Path) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
    """``features`` (N, D), ``targets`` (N,) and optional ``train_counts`` from a .npz or .pt file."""
    if not path.is_file():
        raise LongtailError(f"Features file {path} not found.")
    stored = _read_npz(path) if path.suffix == ".npz" else _read_pt(path)
    missing = [key for key in ("features", "targets") if key not in stored]
    if missing:
        raise LongtailError(f"{path} lacks {', '.join(missing)}; it needs 'features' (N, D) and 'targets' (N,).")
    try:
        features = np.asarray(stored["features"], dtype=np.float32)
        targets = np.asarray(stored["targets"], dtype=np.int64)
    except (TypeError, ValueError):
        raise LongtailError(f"{path}: 'features' and 'targets' must hold numbers.") from None
    if features.ndim != 2 or targets.shape != (features.shape[0],):
        raise LongtailError(f"{path}: features must be (N, D) and targets (N,); got {features.shape} and "
                            f"{targets.shape}.")
    counts = stored.get("train_counts")
    return features, targets, None if counts is None else [int(c) for c in np.asarray(counts)]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise LongtailError(f"{path} is not a readable .npz of number arrays. {FEATURES_FIX}") from None


def _read_pt(path: Path) -> dict[str, Any]:
    from longtail.methods.runs import read_torch_file

    try:
        stored = read_torch_file(path, "features file")
    except LongtailError as error:
        raise LongtailError(f"{error} {FEATURES_FIX}") from None
    if not isinstance(stored, dict):
        raise LongtailError(f"{path} must hold a dict with 'features' and 'targets'.")
    return stored


def _cluster_features(args: argparse.Namespace) -> int:
    from longtail.clustering import cluster_features, clustering_metrics

    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in methods if name not in BASELINES]
    if unknown or not methods:
        raise LongtailError(f"Unknown clustering method(s) {', '.join(unknown) or '(none)'}; choose from "
                            f"{', '.join(BASELINES)}.")
    features, targets, counts = load_features(args.features)
    num_classes = len(counts) if counts is not None else int(targets.max()) + 1
    num_clusters = args.num_clusters or num_classes
    results = {}
    for name in methods:
        clusters = cluster_features(features, num_clusters, name, seed=args.seed)
        results[name] = clustering_metrics(clusters, targets, counts, num_classes)
    print(format_cluster_table(results))
    return 0


# ---------------------------------------------------------------------------------------------- iNat subsets


def _write_inat_subset(args: argparse.Namespace) -> int:
    from longtail.data.folders_and_lists import write_inat_subset_lists

    if args.lists is None:
        raise LongtailError("--inat-subset needs --lists DIR, the folder with iNaturalist18_train.txt and "
                            "iNaturalist18_val.txt.")
    out = args.out or DEFAULT_SUBSETS / f"inat{args.inat_subset}"
    folder = write_inat_subset_lists(args.lists, out, args.inat_subset)
    print(f"wrote the iNat 2018 subset of {args.inat_subset} classes to {folder}; train with "
          f"data.args.list_root={folder}")
    return 0
