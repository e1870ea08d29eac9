"""Distilled vision transformers (DeiT students): a CLS token and a DIST token, each with its own linear head.

Touvron et al., "Training data-efficient image transformers & distillation through attention", ICML 2021;
used as the student of DeiT-LT (``longtail.methods.deit_lt``). The network is timm's
``VisionTransformerDistilled`` built by ``timm.create_model`` with random weights (never downloaded).
Registered variants:

- ``deit_lt_base_patch16_224``, ``deit_lt_small_patch16_224``, ``deit_lt_tiny_patch16_224``: DeiT-B/S/Ti,
  patch 16 at 224 px (DeiT-B/16 is the paper's student);
- ``deit_lt_small_patch4_32``, ``deit_lt_tiny_patch4_32``: DeiT-S/Ti with patch 4 at 32 px (64 patches), small
  enough to train on a CPU.

``forward`` returns ``ModelOutput(logits = (z_cls + z_dist) / 2, features = mean of the two tokens,
aux = {'cls_logits': z_cls, 'dist_logits': z_dist})`` in training and in evaluation mode alike (timm's own
forward averages the heads unless distilled training is switched on; this module calls the heads itself).
Images of another size are resized (bicubic) to the model's input size first, as the paper upsamples
32 px CIFAR images to 224 px. In evaluation mode ``eval_crop_fraction`` < 1 resizes them to
``image_size / eval_crop_fraction`` and keeps the centre ``image_size`` square instead: DeiT-LT's test transform
for CIFAR is Resize(256) + CenterCrop(224) (val-iisc/DeiT-LT ``datasets.py`` lines 615-622), fraction 0.875.

Attention runs PyTorch's fused ``scaled_dot_product_attention`` on GPUs and timm's explicit
softmax(QKᵀ/√d)·V on CPUs: the CPU flash-attention backward is about 12x slower than its forward at these
sequence lengths, and the explicit path makes a CPU training step about 2x faster (same values).
"""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn

from longtail.errors import LongtailError
from longtail.models.base import Network
from longtail.models.output import ModelOutput
from longtail.models.registry import register_model


class DistilledViT(Network):
    """timm's distilled ViT ``arch`` at ``image_size`` px with ``patch_size`` patches; ``head`` is the CLS
    token's classifier and ``head_dist`` the DIST token's."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        image_size: int,
        patch_size: int,
        drop_path_rate: float = 0.0,
        depth: int | None = None,
        eval_crop_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise LongtailError(f"image_size {image_size} is not a multiple of the patch size {patch_size}.")
        if not 0.0 < eval_crop_fraction <= 1.0:
            raise LongtailError(f"eval_crop_fraction must be in (0, 1], got {eval_crop_fraction}.")
        blocks = {} if depth is None else {"depth": depth}
        self.vit = timm.create_model(
            arch,
            pretrained=False,
            num_classes=num_classes,
            img_size=image_size,
            patch_size=patch_size,
            drop_path_rate=drop_path_rate,
            **blocks,
        )
        self.image_size = image_size
        self.eval_crop_fraction = eval_crop_fraction
        self.num_features = self.vit.embed_dim
        self._attentions = [module for module in self.vit.modules() if hasattr(module, "fused_attn")]

    @property
    def head(self) -> nn.Module:
        return self.vit.head

    @property
    def head_dist(self) -> nn.Module:
        return self.vit.head_dist

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The final CLS and DIST tokens (B, 2, D), after the last norm."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = self.resize(images)
        for attention in self._attentions:
            attention.fused_attn = images.is_cuda
        return self.vit.forward_features(images)[:, :2]

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` at ``image_size`` (bicubic); in evaluation, resized to ``image_size / eval_crop_fraction``
        and centre-cropped."""
        crop = not self.training and self.eval_crop_fraction < 1.0
        size = round(self.image_size / self.eval_crop_fraction) if crop else self.image_size
        resized = F.interpolate(images, size=size, mode="bicubic", align_corners=False)
        top = round((size - self.image_size) / 2)
        return resized[..., top : top + self.image_size, top : top + self.image_size]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The mean of the CLS and DIST tokens (B, D) (timm's ``pre_logits``)."""
        return self.tokens(images).mean(dim=1)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        tokens = self.tokens(images)
        cls_logits = self.vit.head(tokens[:, 0])
        dist_logits = self.vit.head_dist(tokens[:, 1])
        return ModelOutput(
            logits=(cls_logits + dist_logits) / 2,
            features=tokens.mean(dim=1),
            aux={"cls_logits": cls_logits, "dist_logits": dist_logits},
        )

    def head_modules(self) -> list[nn.Module]:
        return [self.vit.head, self.vit.head_dist]

    def replace_heads(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        self.vit.head = fn(self.vit.head)
        self.vit.head_dist = fn(self.vit.head_dist)


def _register(name: str, arch: str, default_size: int, patch_size: int, description: str) -> None:
    def factory(
        num_classes: int,
        drop_path_rate: float = 0.0,
        image_size: int = default_size,
        depth: int | None = None,
        eval_crop_fraction: float = 1.0,
    ) -> DistilledViT:
        return DistilledViT(arch, num_classes, image_size, patch_size, drop_path_rate, depth, eval_crop_fraction)

    factory.__name__ = name
    factory.__doc__ = (
        f"{description}: distilled ViT (CLS + DIST tokens, two heads), patch {patch_size}, random weights. "
        f"``image_size`` (default {default_size}): the input size (other sizes are resized to it); "
        "``drop_path_rate``: stochastic depth, rising linearly over the blocks to this value (DeiT-LT: 0.1); "
        "``depth``: number of transformer blocks (default 12; fewer for quick CPU runs); "
        "``eval_crop_fraction``: in evaluation, resize other sizes to image_size / fraction and centre-crop "
        "(DeiT-LT's CIFAR test transform: 0.875)."
    )
    register_model(name)(factory)


_register("deit_lt_base_patch16_224", "deit_base_distilled_patch16_224", 224, 16, "DeiT-B/16 (87 M, 1000 classes)")
_register("deit_lt_small_patch16_224", "deit_small_distilled_patch16_224", 224, 16, "DeiT-S/16 (22 M)")
_register("deit_lt_tiny_patch16_224", "deit_tiny_distilled_patch16_224", 224, 16, "DeiT-Ti/16 (5.9 M)")
_register("deit_lt_small_patch4_32", "deit_small_distilled_patch16_224", 32, 4, "DeiT-S/4 at 32 px (21 M, 10 classes)")
_register("deit_lt_tiny_patch4_32", "deit_tiny_distilled_patch16_224", 32, 4, "DeiT-Ti/4 at 32 px (5.4 M, 10 classes)")
