"""``longtail predict CHECKPOINT IMAGE...``: the top-5 classes of each image, with probabilities.

``longtail predict CHECKPOINT --features OUT.npz [--split train|val|test]`` instead writes the pooled
features (``ModelOutput.features``, unaugmented images, fp32) of a split of the run's dataset in dataset order:
arrays ``features`` (N, D), ``targets`` (N,) and ``train_counts`` (C,), the input of ``longtail cluster
--features`` and ``benchmarks/cluster_features.py --features-file`` (e.g. a SimCLR backbone's features).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from longtail.cli.arguments import DATA_LOCATION_KEYS, checked_overrides, positive_int
from longtail.config import apply_overrides, config_spelling, from_dict, parse_overrides
from longtail.errors import LongtailError, Setting

SPLITS = ("train", "val", "test")


def spell_setting(setting: Setting) -> str:
    """A data setting as predict takes it: ``--set data.root=<folder>``."""
    return f"--set {config_spelling(setting)}"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("predict", help="top-5 classes of images with a trained model")
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a run directory or .pt file")
    parser.add_argument("images", type=Path, nargs="*", metavar="IMAGE")
    parser.add_argument("--top", type=positive_int, default=5, help="number of classes to show (default 5)")
    parser.add_argument("--features", type=Path, metavar="OUT.npz",
                        help="write the features and targets of a dataset split (--split) instead")
    parser.add_argument("--split", choices=SPLITS, default="train", help="with --features: the split (default train)")
    parser.add_argument("--set", nargs="+", default=[], metavar="key=value", dest="overrides",
                        help=f"with --features: where the run's data is now ({', '.join(DATA_LOCATION_KEYS)})")
    return parser


def run(args: argparse.Namespace) -> int:
    from longtail.methods.runs import load_trained_model

    if args.features is not None:
        if args.images:
            raise LongtailError("Give either IMAGE files to classify or --features OUT.npz, not both.")
        return export_features(args.checkpoint, args.features, args.split, args.overrides)
    if not args.images:
        raise LongtailError("Give IMAGE files to classify, or --features OUT.npz to write the features of a split.")
    if args.overrides:
        raise LongtailError("--set says where a run's data is for --features; classifying IMAGE files needs no data.")
    from longtail.data.loaders import load_image

    trained = load_trained_model(args.checkpoint)
    info = trained.info
    images = torch.stack([load_image(path, info) for path in args.images])
    with torch.no_grad():
        probabilities = trained.method.predict(trained.model, images).logits.float().softmax(dim=1)
    top = probabilities.topk(min(args.top, info.num_classes), dim=1)
    for path, values, classes in zip(args.images, top.values, top.indices):
        print(path)
        for value, index in zip(values.tolist(), classes.tolist()):
            print(f"  {100 * value:6.2f}%  {info.class_names[index]}")
    return 0


def export_features(checkpoint: Path, out: Path, split: str, overrides: list[str] = ()) -> int:
    """Write the features, targets and training class counts of ``split`` to the .npz ``out``; ``overrides``:
    data-location settings (the run's data moved)."""
    from longtail.distributed import DistContext
    from longtail.engine.trainer import resolve_device
    from longtail.evaluation.evaluator import Evaluator
    from longtail.methods.context import create_datasets_for
    from longtail.methods.runs import load_trained_model

    device = resolve_device("auto")
    trained = load_trained_model(checkpoint, device)
    located = parse_overrides(checked_overrides("predict", list(overrides), DATA_LOCATION_KEYS))
    dataset = getattr(create_datasets_for(from_dict(apply_overrides(trained.config.to_dict(), located))), split)
    if dataset is None:
        raise LongtailError(f"The run's dataset {trained.config.data.name} has no {split} split (data.val_per_class="
                            f"{trained.config.data.val_per_class}); use --split train or test.")
    features = None
    loader = Evaluator(trained.config, trained.method, trained.info, device, DistContext()).loader(dataset)
    with torch.no_grad():
        for batch in loader:
            rows = trained.method.forward(trained.model, batch.images, batch.meta).features
            if rows is None:
                raise LongtailError(f"Model '{trained.config.model.name}' returns no pooled features to export.")
            if features is None:
                features = np.empty((len(dataset), rows.shape[1]), dtype=np.float32)
            features[batch.indices.cpu().numpy()] = rows.float().cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, features=features, targets=np.asarray(dataset.targets, dtype=np.int64),
             train_counts=np.asarray(trained.info.train_counts, dtype=np.int64))
    print(f"{out}: features {features.shape} and targets of the {split} split ({trained.config.data.name})")
    return 0
