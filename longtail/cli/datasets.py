"""``longtail datasets``: list the datasets; ``longtail datasets describe NAME``: its classes and shot groups."""

from __future__ import annotations

import argparse
import inspect

from longtail.config import parse_overrides
from longtail.data import DATASETS, DatasetSplits, create_datasets
from longtail.data.datasets import DataNotFound
from longtail.errors import Setting, keyword_spelling

SUMMARIES = {
    "cifar10-lt": "CIFAR-10 made long-tailed (official pickles or an ImageFolder copy such as cifar10-jpeg)",
    "cifar100-lt": "CIFAR-100 made long-tailed (official pickles or an ImageFolder copy)",
    "digits-lt": "scikit-learn's 8x8 digits made long-tailed (embedded, no download)",
    "imagefolder-lt": "any root/<split>/<class>/<image> tree made long-tailed",
    "imagenet-lt": "ImageNet-LT (split lists + ImageNet images)",
    "imagenet-r": "ImageNet-R (local copy), natural imbalance, 20 test images held out per class",
    "inat2018": "iNaturalist 2018 (split lists + images)",
    "places-lt": "Places-LT (split lists + Places365 images)",
}


LABELS_ONLY = "labels_only"  # the builder option of datasets whose class counts are known without the images


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("datasets", help="list the datasets, or describe one")
    actions = parser.add_subparsers(dest="action")
    actions.add_parser("list", help="list the dataset names (the default)")
    describe = actions.add_parser("describe", help="class counts, shot groups and split sizes of a dataset")
    describe.add_argument("name", help="a dataset name (see 'longtail datasets')")
    describe.add_argument("--root", help="data root (default: $LONGTAIL_DATA, else ../shared/data)")
    describe.add_argument("--imbalance", type=float, default=100.0, help="imbalance factor n_max / n_min (>= 1)")
    describe.add_argument("--profile", default="exp", help="long-tail profile: exp or step")
    describe.add_argument("--selection", default="shuffle", help="kept images: shuffle (LDAM/RIDE) or first (SHIKE)")
    describe.add_argument("--seed", type=int, default=0)
    describe.add_argument("--val-per-class", type=int, default=None, help="validation images carved per class")
    describe.add_argument("--download", action="store_true", help="download CIFAR through torchvision if missing")
    describe.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="options",
                          help="one of the dataset's own options, e.g. --set image_root=/data/imagenet (repeatable)")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.action != "describe":
        width = max(map(len, DATASETS.names()))
        for name in DATASETS.names():
            print(f"{name:<{width}}  {SUMMARIES.get(name, '')}")
        return 0
    options = parse_overrides(args.options)
    if args.download:
        options["download"] = True
    settings = {
        "root": args.root,
        "imbalance": args.imbalance,
        "profile": args.profile,
        "selection": args.selection,
        "seed": args.seed,
        "val_per_class": args.val_per_class,
        **options,
    }
    try:
        splits, missing = create_datasets(args.name, **settings), None
    except DataNotFound as error:
        if LABELS_ONLY not in inspect.signature(DATASETS.get(args.name)).parameters:
            raise
        splits, missing = create_datasets(args.name, **settings, **{LABELS_ONLY: True}), error.spelled(spell_setting)
    print(describe_text(splits, missing))
    return 0


def spell_setting(setting: Setting) -> str:
    """Settings with a flag of their own (--root, --download) by the flag, the others through --set."""
    flags = {"root": f"--root {setting.value}", "download": "--download"}
    return flags.get(setting.name) or f"--set {keyword_spelling(setting)}"


def _storage(splits: DatasetSplits) -> str:
    from longtail.data.containers import ImageFiles

    return "(streamed from disk)" if isinstance(splits.train, ImageFiles) else "(in memory)"


def describe_text(splits: DatasetSplits, missing: str | None = None) -> str:
    """The classes, shot groups and split sizes of ``splits``; ``missing``: why its images are absent (the
    counts then follow from the profile alone)."""
    info = splits.info
    group_of = {int(c): group for group, classes in info.shot_groups.items() for c in classes}
    width = max(len(n) for n in info.class_names)
    if missing is None:
        lines = [f"{info.name}: {info.num_classes} classes, images {info.image_size}x{info.image_size} "
                 f"{_storage(splits)}", ""]
    else:
        lines = [f"{info.name}: {info.num_classes} classes; the images are absent, the counts below follow from the "
                 f"profile. {missing}", ""]
    lines.append(f"{'class':>5}  {'name':<{width}}  {'train':>7}  group")
    for label, (name, count) in enumerate(zip(info.class_names, info.train_counts)):
        lines.append(f"{label:>5}  {name:<{width}}  {count:>7}  {group_of[label]}")
    many, few = info.shot_thresholds
    lines.append("")
    lines.append(f"shot groups (many > {many:g}, medium {few:g}..{many:g}, few < {few:g}): "
                 + ", ".join(f"{g} {len(c)}" for g, c in info.shot_groups.items()))
    counts = info.train_counts
    lines.append(f"imbalance (max / min train count): {max(counts) / max(min(counts), 1):g}")
    val = len(splits.val) if splits.val is not None else 0
    lines.append(f"total: train {sum(counts):,}  val {val:,}  test {len(splits.test):,}")
    return "\n".join(lines)
