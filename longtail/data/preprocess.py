"""The evaluation preprocessing of a dataset's images, applied to any image file and stated as plain data.

Images of at most ``IN_MEMORY_MAX_SIZE`` pixels (CIFAR, digits, small ImageFolder trees) live in memory at
their size and are evaluated whole, so a new image is resized to ``image_size`` x ``image_size``. Larger
images are evaluated as the file loader does: the shorter side resized to ``image_size / 0.875``, then a
centre crop of ``image_size``. Both end in RGB floats in [0, 1] normalised by the dataset's mean and std.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

from longtail.data.decode import open_rgb
from longtail.data.file_loader import RESIZE_RATIO

IN_MEMORY_MAX_SIZE = 64


def preprocessing(info: Any) -> dict[str, Any]:
    """The steps that turn an image into the model's input, as plain data (for an exported model)."""
    size = info.image_size
    if size > IN_MEMORY_MAX_SIZE:
        geometry = {"resize_shorter_side": round(size / RESIZE_RATIO), "center_crop": size}
    else:
        geometry = {"resize": [size, size]}
    return {
        "color": "RGB",
        **geometry,
        "interpolation": "bilinear, antialiased",
        "scale": "pixel / 255",
        "mean": list(info.mean),
        "std": list(info.std),
        "input": f"float32 (N, 3, {size}, {size})",
    }


def image_transform(info: Any) -> v2.Compose:
    """PIL RGB image -> the normalised (3, S, S) float tensor the model takes, S = ``info.image_size``."""
    steps = preprocessing(info)
    if "center_crop" in steps:
        geometry = [v2.Resize(steps["resize_shorter_side"], antialias=True), v2.CenterCrop(steps["center_crop"])]
    else:
        geometry = [v2.Resize(tuple(steps["resize"]), antialias=True)]
    return v2.Compose(
        [*geometry, v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(steps["mean"], steps["std"])]
    )


def load_image(image: str | Path | Image.Image, info: Any) -> torch.Tensor:
    """An image file (or PIL image) as the model saw evaluation images."""
    picture = image.convert("RGB") if isinstance(image, Image.Image) else open_rgb(Path(image))
    return image_transform(info)(picture)
