"""Batched augmentation of uint8 image tensors, on whatever device the images are on.

A batch is augmented as a whole: random crop with zero padding and horizontal flip are one gather
(``crop_flip``), a random resized crop with the flip one ``grid_sample`` (``resized_crop_flip``), rotation one
``grid_sample``, colour jitter a few per-image blends (``color_jitter``), random grayscale one ``where``, Cutout
one mask. AutoAugment and RandAugment are per-image
random in torchvision; here each image draws its own sub-policy, probabilities and signs exactly as
``torchvision.transforms.v2.AutoAugment`` / ``RandAugment`` do, and the images that drew the same
operation with the same magnitude are transformed together by torchvision's own operation code (the
transforms' ``_policies``, ``_AUGMENTATION_SPACE`` and ``_apply_image_or_video_transform``): a few dozen
calls per batch instead of one per image.

On CPU the ops run single-threaded (``longtail.data.reading.intra_op_threads``). All random numbers come from a CPU
``torch.Generator``, so a seed draws the same augmentation parameters on CPU and GPU.
Cutout (DeVries & Taylor, 2017) follows the original code: after normalisation, a ``size`` x ``size``
square centred anywhere in the image (clipped at the border) is set to 0, the dataset's mean colour
(``cutout_fill='mean'``). ``cutout_fill='black'`` erases before normalisation instead, to pixel value 0, as
SHIKE's official code does (jinyan-06/SHIKE ``cifarTrain.py`` lines 29-36: ``Cutout`` between ``ToTensor`` and
``Normalize``). The geometric operations of AutoAugment / RandAugment fill the uncovered area with
``policy_fill`` (torchvision's default 0, black; SHIKE's ``CIFAR10Policy`` grey 128, ``autoaugment.py`` lines
49, 91 and 112).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from longtail.data.reading import intra_op_threads
from longtail.errors import LongtailError, unknown_name_error

POLICIES = ("autoaugment", "randaugment")
CUTOUT_FILLS = ("mean", "black")


@dataclass(frozen=True)
class AugmentSpec:
    """What to do to a training image. ``crop``: random crop of the original size after zero ``padding``
    (streamed images: RandomResizedCrop); ``rotation``: maximum angle in degrees; ``policy``: None,
    'autoaugment' or 'randaugment'; ``policy_fill``: the pixel value (0-255) the policy's geometric operations
    fill with; ``cutout``: side of the erased square in pixels (0: off); ``cutout_fill``: 'mean' (0 after
    normalisation) or 'black' (0 before);
    ``color_jitter``: (brightness, contrast, saturation, hue) strengths as torchvision's ``ColorJitter``,
    applied after the flip (None: off); ``grayscale``: probability of torchvision's ``RandomGrayscale``, after
    the jitter; ``resized_crop``: the (min, max) area fraction of a RandomResizedCrop (aspect ratio 3/4 to 4/3)
    that replaces the padded crop when ``crop`` is on (None: padded crop; streamed images: the scale of their
    RandomResizedCrop, torchvision's (0.08, 1) when None)."""

    crop: bool = True
    padding: int = 4
    flip: bool = True
    rotation: float = 0.0
    policy: str | None = None
    cutout: int = 0
    cutout_fill: str = "mean"
    policy_fill: int = 0
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    color_jitter: tuple[float, float, float, float] | None = None
    grayscale: float = 0.0
    resized_crop: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.policy is not None and self.policy not in POLICIES:
            raise unknown_name_error("augmentation policy", self.policy, POLICIES)
        if self.cutout_fill not in CUTOUT_FILLS:
            raise unknown_name_error("cutout fill", self.cutout_fill, CUTOUT_FILLS)
        if not 0 <= self.policy_fill <= 255:
            raise LongtailError(f"policy_fill is a pixel value in [0, 255], got {self.policy_fill!r}.")
        if self.color_jitter is not None:
            jitter = tuple(float(value) for value in self.color_jitter)
            if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
                raise LongtailError(
                    "color_jitter must be 4 non-negative numbers (brightness, contrast, saturation, hue), hue "
                    f"at most 0.5, got {self.color_jitter!r}."
                )
            object.__setattr__(self, "color_jitter", jitter)
        if not 0.0 <= self.grayscale <= 1.0:
            raise LongtailError(f"grayscale is a probability in [0, 1], got {self.grayscale!r}.")
        if self.resized_crop is not None:
            scale = tuple(float(value) for value in self.resized_crop)
            if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
                raise LongtailError(
                    "resized_crop must be 2 area fractions (min, max) with 0 < min <= max <= 1, e.g. [0.08, 1.0]; "
                    f"got {self.resized_crop!r}."
                )
            object.__setattr__(self, "resized_crop", scale)


AUGMENTATIONS = {
    "none": AugmentSpec(crop=False, flip=False),
    "standard": AugmentSpec(),
    "autoaugment": AugmentSpec(policy="autoaugment", cutout=16),
    "randaugment": AugmentSpec(policy="randaugment", cutout=16),
}


def augment_spec(augment: str | AugmentSpec | None) -> AugmentSpec:
    """A spec from a preset name (``AUGMENTATIONS``), a spec, or None (no augmentation)."""
    if augment is None:
        return AUGMENTATIONS["none"]
    if isinstance(augment, AugmentSpec):
        return augment
    if augment not in AUGMENTATIONS:
        raise unknown_name_error("augmentation", augment, AUGMENTATIONS)
    return AUGMENTATIONS[augment]


def crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Random crops of zero-padded ``images`` (B, C, H, W), each mirrored with probability 1/2, in one gather."""
    b, c, h, w = images.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    top = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
    columns = torch.arange(w).expand(b, w)
    if flip:
        mirrored = torch.rand(b, 1, generator=generator) < 0.5
        columns = torch.where(mirrored, w - 1 - columns, columns)
    rows = top + torch.arange(h)
    spatial = (rows * wp).view(b, h, 1) + (left + columns).view(b, 1, w)
    padded = F.pad(images, (padding,) * 4) if padding else images
    # one gather per batch; the channel dimension reuses the spatial index (expand: no copy)
    index = spatial.view(b, 1, h * w).expand(b, c, h * w).to(images.device)
    return torch.gather(padded.reshape(b, c, hp * wp), 2, index).view(b, c, h, w)


def resized_crop_flip(
    images: torch.Tensor,
    scale: Sequence[float],
    flip: bool,
    generator: torch.Generator | None,
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop(original size, scale, ratio)`` of each image, mirrored with probability
    1/2 when ``flip``, in one bilinear ``grid_sample``. The area fraction is uniform in ``scale`` and the log
    aspect ratio uniform in ``log(ratio)``, as torchvision draws them; a box wider or taller than the image is
    clipped to it (torchvision redraws up to 10 times, then crops the centre)."""
    b, _, h, w = images.shape
    area = scale[0] + torch.rand(b, generator=generator) * (scale[1] - scale[0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = (log_low + torch.rand(b, generator=generator) * (log_high - log_low)).exp()
    # half-extents and centres in grid_sample's [-1, 1] coordinates (the image spans [-1, 1], align_corners=False)
    half_w = (area * aspect * h / w).sqrt().clamp_(max=1.0)
    half_h = (area / aspect * w / h).sqrt().clamp_(max=1.0)
    centre_x = half_w - 1 + torch.rand(b, generator=generator) * 2 * (1 - half_w)
    centre_y = half_h - 1 + torch.rand(b, generator=generator) * 2 * (1 - half_h)
    sign = torch.ones(b)
    if flip:
        sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([sign * half_w, zero, centre_x], 1), torch.stack([zero, half_h, centre_y], 1)], 1)
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    cropped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return cropped.round_().clamp_(0, 255).to(images.dtype) if images.dtype == torch.uint8 else cropped


def random_grayscale(images: torch.Tensor, probability: float, generator: torch.Generator | None) -> torch.Tensor:
    """torchvision's ``RandomGrayscale(probability)``: each image, with that probability, replaced by its luma
    (``rgb_to_grayscale``) in all three channels."""
    chosen = (torch.rand(len(images), generator=generator) < probability).view(-1, 1, 1, 1).to(images.device)
    return torch.where(chosen, v2.functional.rgb_to_grayscale(images, num_output_channels=3), images)


def rotate(images: torch.Tensor, max_degrees: float, generator: torch.Generator | None) -> torch.Tensor:
    """Each image rotated about its centre by an angle uniform in [-max_degrees, max_degrees]; zero fill."""
    b, _, h, w = images.shape
    angles = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(max_degrees)
    cos, sin = angles.cos(), angles.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, sin * h / w, zero], 1), torch.stack([-sin * w / h, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    rotated = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return rotated.round_().clamp_(0, 255).to(images.dtype) if images.dtype == torch.uint8 else rotated


def cutout(images: torch.Tensor, size: int, generator: torch.Generator | None, fill: float = 0.0) -> torch.Tensor:
    """Each image with one ``size`` x ``size`` square (centre uniform over the image, clipped) set to ``fill``."""
    b, _, h, w = images.shape
    centre_y = torch.randint(0, h, (b, 1), generator=generator)
    centre_x = torch.randint(0, w, (b, 1), generator=generator)
    inside_y = (torch.arange(h) >= centre_y - size // 2) & (torch.arange(h) < centre_y + size // 2)
    inside_x = (torch.arange(w) >= centre_x - size // 2) & (torch.arange(w) < centre_x + size // 2)
    mask = (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1)
    return images.masked_fill(mask.to(images.device), fill)


def color_jitter(
    images: torch.Tensor, strengths: Sequence[float], generator: torch.Generator | None
) -> torch.Tensor:
    """torchvision's ``ColorJitter(brightness, contrast, saturation, hue)`` with its own factors per image:
    brightness, contrast and saturation factors uniform in [max(0, 1 - s), 1 + s], the hue shift uniform in
    [-h, h]. Unlike torchvision the four run in this fixed order (one batched op each, not a random order)."""
    brightness, contrast, saturation, hue = strengths
    b = len(images)
    dtype = images.dtype
    out = images.float() / 255.0 if dtype == torch.uint8 else images.float()

    def factors(strength: float) -> torch.Tensor:
        low = max(0.0, 1.0 - strength)
        drawn = low + torch.rand(b, generator=generator) * (1.0 + strength - low)
        return drawn.view(b, 1, 1, 1).to(out.device)

    if brightness:
        out = (out * factors(brightness)).clamp_(0, 1)
    if contrast:
        mean = _grayscale(out).mean(dim=(1, 2, 3), keepdim=True)
        out = _blend(out, mean, factors(contrast))
    if saturation:
        out = _blend(out, _grayscale(out), factors(saturation))
    if hue:
        shifts = ((torch.rand(b, generator=generator) * 2 - 1) * hue).view(b, 1, 1).to(out.device)
        hsv = _rgb_to_hsv(out)
        hsv[:, 0] = (hsv[:, 0] + shifts) % 1.0
        out = _hsv_to_rgb(hsv)
    return out.mul_(255).round_().clamp_(0, 255).to(dtype) if dtype == torch.uint8 else out


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * images + (1 - factor) * other).clamp_(0, 1)


def normalise(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels_last: bool = False
) -> torch.Tensor:
    """uint8 images to float32 ``(x / 255 - mean) / std``."""
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    out = images.float().mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)  # in place: far faster on CPU
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


class GroupedPolicy:
    """AutoAugment (CIFAR-10 or ImageNet policy) or RandAugment applied per image, grouped by operation.

    Each distinct (operation, signed magnitude) is an *entry*; a lookup table maps each image's random
    draws (sub-policy or operation, slot, sign) to its entry, so drawing is vectorised and the Python loop
    runs over the entries present in the batch only.
    """

    def __init__(
        self, policy: str, cifar: bool = True, num_ops: int = 2, magnitude: int = 9, fill: int = 0
    ) -> None:
        if policy == "autoaugment":
            which = v2.AutoAugmentPolicy.CIFAR10 if cifar else v2.AutoAugmentPolicy.IMAGENET
            self.transform = v2.AutoAugment(which, fill=fill)
        else:
            self.transform = v2.RandAugment(num_ops=num_ops, magnitude=magnitude, fill=fill)
        self.policy = policy
        self._tables: dict[tuple[int, int], tuple[list[tuple[str, float]], torch.Tensor, torch.Tensor | None]] = {}

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise LongtailError(f"{self.policy} works on uint8 images, got {images.dtype}.")
        with intra_op_threads(1 if images.device.type == "cpu" else torch.get_num_threads()):
            return self._transform(images, generator)

    def _transform(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b = len(images)
        entries, table, probabilities = self._lookup(images.shape[-2], images.shape[-1])
        out = images.clone()
        if self.policy == "autoaugment":
            chosen = torch.randint(len(table), (b,), generator=generator)
            for slot in range(2):
                applied = torch.rand(b, generator=generator) <= probabilities[chosen, slot]
                negative = (torch.rand(b, generator=generator) <= 0.5).long()
                ids = torch.where(applied, table[chosen, slot, negative], -1)
                self._apply(out, ids, entries)
        else:
            for _ in range(self.transform.num_ops):
                operations = torch.randint(len(table), (b,), generator=generator)
                negative = (torch.rand(b, generator=generator) <= 0.5).long()
                self._apply(out, table[operations, negative], entries)
        return out

    def _apply(self, out: torch.Tensor, ids: torch.Tensor, entries: list[tuple[str, float]]) -> None:
        for entry in ids.unique().tolist():
            if entry < 0:
                continue
            name, magnitude = entries[entry]
            rows = torch.nonzero(ids == entry).squeeze(1).to(out.device)
            out[rows] = self.transform._apply_image_or_video_transform(
                out[rows], name, magnitude, interpolation=self.transform.interpolation, fill=self.transform._fill
            )

    def _lookup(self, h: int, w: int):
        """(entries, table of entry ids, AutoAugment probabilities) for images of size h x w (cached)."""
        if (h, w) not in self._tables:
            self._tables[(h, w)] = self._build_tables(h, w)
        return self._tables[(h, w)]

    def _build_tables(self, h: int, w: int):
        entries: list[tuple[str, float]] = []

        def entry(name: str, bins: int, index: int | None, negative: bool) -> int:
            if name == "Identity":
                return -1
            magnitudes_fn, signed = self.transform._AUGMENTATION_SPACE[name]
            magnitudes = magnitudes_fn(bins, h, w)
            value = 0.0 if magnitudes is None else float(magnitudes[index])
            key = (name, -value if signed and negative else value)
            if key not in entries:
                entries.append(key)
            return entries.index(key)

        if self.policy == "autoaugment":
            policies = self.transform._policies
            table = torch.tensor(
                [[[entry(name, 10, index, neg) for neg in (False, True)] for name, _, index in p] for p in policies]
            )
            probabilities = torch.tensor([[probability for _, probability, _ in p] for p in policies])
            return entries, table, probabilities
        bins, index = self.transform.num_magnitude_bins, self.transform.magnitude
        names = list(self.transform._AUGMENTATION_SPACE)
        table = torch.tensor([[entry(name, bins, index, neg) for neg in (False, True)] for name in names])
        return entries, table, None


class BatchAugment:
    """uint8 (B, 3, H, W) batch -> augmented, normalised float32 batch: crop+flip (padded or resized crop),
    colour jitter, grayscale, rotation, policy, Cutout."""

    def __init__(
        self,
        spec: AugmentSpec,
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool = False,
        cifar_policy: bool = True,
    ) -> None:
        self.spec = spec
        self.mean, self.std = tuple(mean), tuple(std)
        self.channels_last = channels_last
        self.policy = (
            GroupedPolicy(
                spec.policy, cifar_policy, spec.randaugment_ops, spec.randaugment_magnitude, spec.policy_fill
            )
            if spec.policy
            else None
        )

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        with intra_op_threads(1 if images.device.type == "cpu" else torch.get_num_threads()):
            return self._augment(images, generator)

    def _augment(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        spec = self.spec
        if spec.crop and spec.resized_crop is not None:
            images = resized_crop_flip(images, spec.resized_crop, spec.flip, generator)
        elif spec.crop or spec.flip:
            images = crop_flip(images, spec.padding if spec.crop else 0, spec.flip, generator)
        if spec.color_jitter is not None:
            images = color_jitter(images, spec.color_jitter, generator)
        if spec.grayscale:
            images = random_grayscale(images, spec.grayscale, generator)
        if spec.rotation:
            images = rotate(images, spec.rotation, generator)
        if self.policy is not None:
            images = self.policy(images, generator)
        black_cutout = spec.cutout and spec.cutout_fill == "black"
        if black_cutout:
            images = cutout(images, spec.cutout, generator)
        out = normalise(images, self.mean, self.std)
        if spec.cutout and not black_cutout:
            out = cutout(out, spec.cutout, generator)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out
