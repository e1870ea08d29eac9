"""``longtail export RUN_DIR_OR_CHECKPOINT --format onnx|torchscript|torch-export``: the model as it
predicts, for deployment, with its preprocessing and class names in the file and in ``OUT.json``
(``longtail.export``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from longtail.export import FORMATS


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help="export a trained model (ONNX, TorchScript, torch.export)")
    parser.add_argument("path", type=Path, metavar="RUN_DIR_OR_CHECKPOINT")
    parser.add_argument("--format", choices=tuple(FORMATS), default="onnx", dest="fmt", help="default onnx")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="the exported file (default: model.onnx / model.pt / model.pt2 beside the checkpoint)")
    return parser


def run(args: argparse.Namespace) -> int:
    from longtail.export import export_run

    exported = export_run(args.path, args.output, args.fmt)
    info = exported.metadata
    steps = info["preprocessing"]
    geometry = (f"resize to {steps['resize'][0]}x{steps['resize'][1]}" if "resize" in steps else
                f"resize the shorter side to {steps['resize_shorter_side']}, centre crop {steps['center_crop']}")
    print(f"{exported.path}: {info['method']} ({info['model']}), {len(info['class_names'])} classes of {info['dataset']}")
    print(f"  input  images {info['input']['dtype']} {tuple(info['input']['shape'])}: RGB, {geometry}, "
          f"pixel / 255, minus mean {_rounded(steps['mean'])}, divided by std {_rounded(steps['std'])}")
    print(f"  output logits {tuple(info['output']['shape'])}: softmax gives the class probabilities")
    print(f"  metadata (class names, preprocessing, run): {exported.metadata_path}")
    return 0


def _rounded(values: list[float]) -> list[float]:
    return [round(value, 4) for value in values]
