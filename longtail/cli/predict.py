"""``longtail predict CHECKPOINT IMAGE...``: the top-5 classes of each image, with probabilities."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

IN_MEMORY_MAX_SIZE = 64  # datasets of images up to this size are evaluated whole, larger ones resized + cropped


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("predict", help="top-5 classes of images with a trained model")
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a run directory or .pt file")
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    parser.add_argument("--top", type=int, default=5, help="number of classes to show (default 5)")
    return parser


def run(args: argparse.Namespace) -> int:
    from longtail.engine.checkpoint import load_trained_model

    trained = load_trained_model(args.checkpoint)
    info = trained.info
    images = torch.stack([preprocess(path, info) for path in args.images])
    with torch.no_grad():
        probabilities = trained.method.predict(trained.model, images).logits.float().softmax(dim=1)
    top = probabilities.topk(min(args.top, info.num_classes), dim=1)
    for path, values, classes in zip(args.images, top.values, top.indices):
        print(path)
        for value, index in zip(values.tolist(), classes.tolist()):
            print(f"  {100 * value:6.2f}%  {info.class_names[index]}")
    return 0


def preprocess(path: Path, info) -> torch.Tensor:
    """An image file as the model saw evaluation images: normalised (3, S, S) float, S = the dataset's size."""
    from torchvision.transforms import v2

    from longtail.data.augment import augment_spec
    from longtail.data.decode import open_rgb
    from longtail.data.file_loader import file_transform

    image = open_rgb(path)
    if info.image_size > IN_MEMORY_MAX_SIZE:
        return file_transform(augment_spec("none"), False, info.image_size, info.mean, info.std)(image)
    resize = v2.Compose(
        [
            v2.Resize((info.image_size, info.image_size), antialias=True),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(info.mean), list(info.std)),
        ]
    )
    return resize(image)
