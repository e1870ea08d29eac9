"""MetaFG: the hybrid convolution-attention backbone of MetaFormer, with meta-information tokens.

Paper: Q. Diao, Y. Jiang, B. Wen, J. Sun, Z. Yuan, "MetaFormer: A Unified Meta Framework for
Fine-Grained Recognition", arXiv 2203.02751 (2022). Official code: github.com/dqshuai/MetaFormer
(models/MetaFG.py, MetaFG_meta.py, MBConv.py, MHSA.py, meta_encoder.py). Not timm's ``metaformer.py``,
which is the PoolFormer family.

Architecture (c0..c2 convolution widths, d3, d4 attention widths, image size S; every stride-2 layer
uses kernel 3 and padding 1, so a side n becomes ceil(n / 2)):

* stem (S/4): conv3x3 s2 (3 -> 3*c0/4), BN, ReLU, conv3x3 (-> c0), BN, ReLU, conv3x3 (-> c0), BN, ReLU,
  max-pool 3x3 s2.
* stage 1 (S/4) and stage 2 (S/8, first block stride 2): MBConv blocks
  y = BN(W_proj * SE(Swish(BN(DW3x3(Swish(BN(W_exp * x))))))), x' = x + DropPath(y) when the shape is
  kept; expansion 4, SE reduction to int(0.25 * c_in) channels with Swish, BN eps 0.01.
* stage 3 (S/16, width d3) and stage 4 (S/32, width d4): an overlapping patch embedding
  (conv3x3 s2 + LayerNorm) turns the map into h*w patch tokens z; the stage prepends the extra tokens
  E = [cls, m_1, ..., m_k] and runs pre-norm blocks
      z = z + DropPath(Attn(LN(z))),  z = z + DropPath(MLP_GELU(LN(z))),   MLP ratio 4, 8 heads,
      Attn(z) = W_o softmax(q k^T / sqrt(d_head) + B) v,
  where B is a Swin relative position bias: a table T of (2h-1)(2w-1)+1 rows per head and
  B[i, j] = T[(r_i - r_j + h - 1) * (2w - 1) + (c_i - c_j + w - 1)] for patches at (r, c). After stage 3
  the extra tokens are dropped and the patches reshaped to a map; stage 4 prepends fresh ones.
* head: f3 = LN(MLP(LN(cls_3))) (d3 -> d4), f4 = LN(cls_4), f = LN(Conv1d_{2->1}([f3; f4])),
  logits = W f + b (``only_last_cls=True``: f = f4).

Meta-information. Each meta group g (e.g. spatio-temporal, attributes, text) is a tensor
meta[g] of shape (B, D_g) or (B, L_g, D_g) whose last axis is cut into slices of the group's ``dims``;
every slice has its own encoder per attention stage,
    e(x) = R(LN(ReLU(W_1 x + b_1))),   R(u) = u + LN(ReLU(W_3 LN(ReLU(W_2 u + b_2)) + b_3)),
whose output (one token per slice and sequence position) joins the extra tokens after cls, in group
order. The spatio-temporal group of the paper is 7 numbers cut into (4, 3): month/hour on the circle
and latitude/longitude on the sphere (``longtail.data.meta``).

Missing meta. The official code feeds zeros for missing values and for masked samples; the encoders
still run, so "no meta" is "meta = 0", not "no meta tokens". This module keeps that single meaning:
``meta=None`` (or an empty dict) runs the meta encoders on zeros, so a sample whose meta is all zeros
gives exactly the logits of the no-meta path and the token count never changes.

Meta masking (training only). At 0-based epoch e the meta of int(B * p(e)) random samples of the batch
is zeroed (all groups of a sample together), p(e) = clip(p_0 - e / E, 0, 1) with p_0 =
``meta_mask_start`` and E = ``meta_mask_epochs`` (the training length; the official default is p_0 = 1
over the whole run); E = None keeps p = p_0. The official code does not clip, so p < 0 there slices
``randperm(B)[:negative]`` and masks almost every sample; the clip is the intended behaviour.
The trainer gives the model the epoch (``Network.set_epoch``) before each epoch.

Differences from the official code (parameter counts are identical):
* Extra tokens use bias row 0 of T against everything (official); row 0 is also the corner offset of
  the patch grid, and the last row, added for the class token, is never read.
  ``extra_token_bias='dedicated'`` gives the extra tokens that last row instead.
* The number of extra tokens follows the meta given (no fixed ``extra_token_num``), and the
  relative-position index is not stored in the state dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, SEModule, to_2tuple, trunc_normal_
from torch import nn

from longtail.errors import LongtailError
from longtail.models.base import Network
from longtail.models.output import ModelOutput
from longtail.models.registry import register_variant

MetaInput = Mapping[str, torch.Tensor] | torch.Tensor | None

_BN_EPS_MBCONV = 0.01
_EXTRA_TOKEN_BIAS = ("official", "dedicated")


@dataclass(frozen=True)
class MetaGroup:
    """A meta group: ``dims`` slice sizes of the last axis (one encoder each), ``length`` tokens per slice."""

    dims: tuple[int, ...]
    length: int = 1

    @property
    def width(self) -> int:
        return sum(self.dims)

    @property
    def num_tokens(self) -> int:
        return len(self.dims) * self.length


def parse_meta_groups(spec: Mapping[str, Any] | None) -> dict[str, MetaGroup]:
    """``{'spatiotemporal': [4, 3], 'attributes': 312, 'text': {'dims': [768], 'length': 32}}`` -> groups."""
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise LongtailError(
            f"meta_groups must map group names to sizes, e.g. {{'spatiotemporal': [4, 3]}}, got {spec!r}."
        )
    return {_check_group_name(name): _parse_group(name, value) for name, value in spec.items()}


def _check_group_name(name: Any) -> str:
    if not isinstance(name, str) or not name or "." in name:
        raise LongtailError(f"Meta group names must be non-empty strings without '.', got {name!r}.")
    return name


def _parse_group(name: str, value: Any) -> MetaGroup:
    if isinstance(value, MetaGroup):
        return value
    length: Any = 1
    if isinstance(value, Mapping):
        unknown = set(value) - {"dims", "length"}
        if unknown or "dims" not in value:
            raise LongtailError(
                f"Meta group '{name}' takes the keys 'dims' and optionally 'length', got {sorted(value)}."
            )
        value, length = value["dims"], value.get("length", 1)
    dims = (value,) if isinstance(value, int) else tuple(value)
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims) or not isinstance(length, int) or length < 1:
        raise LongtailError(
            f"Meta group '{name}' needs positive integer sizes (dims) and length >= 1, got dims={value!r}, "
            f"length={length!r}."
        )
    return MetaGroup(dims, length)


class MetaMaskSchedule:
    """Fraction of samples whose meta is zeroed: p(e) = clip(start - e / epochs, 0, 1); constant without epochs."""

    def __init__(self, start: float = 0.0, epochs: int | None = None) -> None:
        if not 0.0 <= start <= 1.0:
            raise LongtailError(f"meta_mask_start is a fraction of samples in [0, 1], got {start}.")
        if epochs is not None and epochs < 1:
            raise LongtailError(f"meta_mask_epochs must be a positive number of epochs or None, got {epochs}.")
        self.start = start
        self.epochs = epochs

    def fraction(self, epoch: int) -> float:
        if self.epochs is None:
            return self.start
        return min(1.0, max(0.0, self.start - epoch / self.epochs))


def mask_meta(
    meta: Mapping[str, torch.Tensor], fraction: float, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Zero every group of int(B * fraction) random samples (the same samples in all groups)."""
    batch_size = next(iter(meta.values())).shape[0]
    num_masked = int(batch_size * fraction)
    if num_masked == 0:
        return dict(meta)
    masked = torch.randperm(batch_size, generator=generator)[:num_masked]
    keep = torch.ones(batch_size)
    keep[masked] = 0.0
    return {
        name: value * keep.to(value.device, value.dtype).view(-1, *([1] * (value.dim() - 1)))
        for name, value in meta.items()
    }


def _halve(size: tuple[int, int]) -> tuple[int, int]:
    return (math.ceil(size[0] / 2), math.ceil(size[1] / 2))


def relative_position_index(height: int, width: int) -> torch.Tensor:
    """(h*w, h*w) row of the bias table for every pair of grid positions (Swin)."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    delta_rows = rows[:, None] - rows[None, :] + height - 1
    delta_cols = cols[:, None] - cols[None, :] + width - 1
    return delta_rows * (2 * width - 1) + delta_cols


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise 3x3 (stride), squeeze-excitation, 1x1 project, residual."""

    def __init__(
        self, in_chs: int, out_chs: int, stride: int = 1, expand_ratio: int = 4, se_ratio: float = 0.25,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        mid_chs = in_chs * expand_ratio
        self.expand = nn.Sequential(
            nn.Conv2d(in_chs, mid_chs, 1, bias=False), nn.BatchNorm2d(mid_chs, eps=_BN_EPS_MBCONV), nn.SiLU()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(mid_chs, mid_chs, 3, stride=stride, padding=1, groups=mid_chs, bias=False),
            nn.BatchNorm2d(mid_chs, eps=_BN_EPS_MBCONV),
            nn.SiLU(),
        )
        self.se = SEModule(mid_chs, rd_channels=max(1, int(in_chs * se_ratio)), act_layer=nn.SiLU)
        self.project = nn.Sequential(
            nn.Conv2d(mid_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs, eps=_BN_EPS_MBCONV)
        )
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + self.drop_path(y) if self.has_skip else y


class RelativePositionAttention(nn.Module):
    """Multi-head self-attention with a relative position bias over the patch grid; extra tokens share one row."""

    def __init__(self, dim: int, grid_size: tuple[int, int], num_heads: int, extra_token_bias: str) -> None:
        super().__init__()
        height, width = grid_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * height - 1) * (2 * width - 1) + 1, num_heads)
        )
        self.register_buffer("grid_index", relative_position_index(height, width), persistent=False)
        self.extra_row = 0 if extra_token_bias == "official" else self.relative_position_bias_table.shape[0] - 1
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self, num_extra: int) -> torch.Tensor:
        """(heads, N, N) bias for ``num_extra`` extra tokens followed by the patches."""
        index = F.pad(self.grid_index, (num_extra, 0, num_extra, 0), value=self.extra_row)
        return self.relative_position_bias_table[index].permute(2, 0, 1)

    def forward(self, x: torch.Tensor, num_extra: int) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.position_bias(num_extra).to(q.dtype).unsqueeze(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: relative-position attention and a GELU MLP, each with DropPath."""

    def __init__(
        self, dim: int, grid_size: tuple[int, int], num_heads: int, mlp_ratio: float, drop_path: float,
        extra_token_bias: str,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RelativePositionAttention(dim, grid_size, num_heads, extra_token_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, num_extra: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), num_extra))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class OverlapPatchEmbed(nn.Module):
    """conv3x3 stride 2 then LayerNorm: a (B, C, H, W) map -> (B, h*w, D) tokens."""

    def __init__(self, in_chs: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class AttentionStage(nn.Module):
    """Patch embedding, then the extra tokens are prepended and the attention blocks run."""

    def __init__(
        self, in_chs: int, dim: int, grid_size: tuple[int, int], depth: int, num_heads: int, mlp_ratio: float,
        drop_paths: Sequence[float], extra_token_bias: str,
    ) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.patch_embed = OverlapPatchEmbed(in_chs, dim)
        self.blocks = nn.ModuleList(
            AttentionBlock(dim, grid_size, num_heads, mlp_ratio, drop_paths[i], extra_token_bias)
            for i in range(depth)
        )

    def forward(self, feature_map: torch.Tensor, extra_tokens: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B, E, D) -> (B, E + h*w, D)."""
        grid = _halve((feature_map.shape[-2], feature_map.shape[-1]))
        if grid != self.grid_size:
            raise LongtailError(
                f"MetaFG got an input whose attention grid is {grid}, but it was built for {self.grid_size}; "
                "pass the training image size as img_size when creating the model."
            )
        x = torch.cat([extra_tokens, self.patch_embed(feature_map)], dim=1)
        for block in self.blocks:
            x = block(x, extra_tokens.shape[1])
        return x


class MetaEncoder(nn.Sequential):
    """Linear -> ReLU -> LayerNorm -> residual norm block: a meta slice (..., d) -> token (..., D)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__(nn.Linear(in_dim, dim), nn.ReLU(), nn.LayerNorm(dim), ResidualNormBlock(dim))


class ResidualNormBlock(nn.Module):
    """u + LN(ReLU(W_3 LN(ReLU(W_2 u + b_2)) + b_3))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU(), nn.LayerNorm(dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class MetaTokenizer(nn.Module):
    """The encoders of one attention stage: meta groups -> (B, num_tokens, D), in group and slice order."""

    def __init__(self, groups: Mapping[str, MetaGroup], dim: int) -> None:
        super().__init__()
        self.groups = dict(groups)
        self.dim = dim
        self.encoders = nn.ModuleDict(
            {name: nn.ModuleList(MetaEncoder(d, dim) for d in group.dims) for name, group in groups.items()}
        )

    def forward(self, meta: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tokens = []
        for name, group in self.groups.items():
            value = meta[name]
            for encoder, part in zip(self.encoders[name], value.split(group.dims, dim=-1)):
                tokens.append(encoder(part).reshape(value.shape[0], -1, self.dim))
        return torch.cat(tokens, dim=1)


class MetaFG(Network):
    """MetaFG-0/1/2 with optional meta groups; ``forward(x, meta=None)`` returns a ModelOutput.

    ``meta`` is None (no meta: zeros), a dict group name -> tensor (unused names are ignored), or a
    single tensor when the model has exactly one group.
    """

    epoch_args = ("meta_mask_epochs",)  # budget=E scales these options with the schedule

    def __init__(
        self,
        num_classes: int = 1000,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        conv_dims: Sequence[int] = (64, 96, 192),
        attn_dims: Sequence[int] = (384, 768),
        depths: Sequence[int] = (2, 3, 5, 2),
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        meta_groups: Mapping[str, Any] | None = None,
        meta_mask_start: float = 0.0,
        meta_mask_epochs: int | None = None,
        only_last_cls: bool = False,
        extra_token_bias: str = "official",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise LongtailError(f"num_classes must be at least 1, got {num_classes}.")
        if extra_token_bias not in _EXTRA_TOKEN_BIAS:
            raise LongtailError(f"extra_token_bias must be one of {_EXTRA_TOKEN_BIAS}, got {extra_token_bias!r}.")
        if len(conv_dims) != 3 or len(attn_dims) != 2 or len(depths) != 4:
            raise LongtailError("MetaFG needs 3 conv_dims, 2 attn_dims and 4 depths (stages 1-4).")
        self.img_size = to_2tuple(img_size)
        self.num_classes = num_classes
        self.only_last_cls = only_last_cls
        self.meta_groups = parse_meta_groups(meta_groups)
        self.meta_mask = MetaMaskSchedule(meta_mask_start, meta_mask_epochs)
        self.epoch = 0
        c0, c1, c2 = conv_dims
        d3, d4 = attn_dims
        paths1, paths2, paths3, paths4 = _split(_linear_ramp(drop_path_rate, sum(depths)), depths)
        grid3 = _halve(_halve(_halve(_halve(self.img_size))))

        self.stem = _stem(in_chans, c0)
        self.stage1 = nn.Sequential(
            *(MBConvBlock(c0 if i == 0 else c1, c1, 1, drop_path=paths1[i]) for i in range(depths[0]))
        )
        self.stage2 = nn.Sequential(
            *(MBConvBlock(c1 if i == 0 else c2, c2, 2 if i == 0 else 1, drop_path=paths2[i]) for i in range(depths[1]))
        )
        self.stage3 = AttentionStage(c2, d3, grid3, depths[2], num_heads, mlp_ratio, paths3, extra_token_bias)
        self.stage4 = AttentionStage(d3, d4, _halve(grid3), depths[3], num_heads, mlp_ratio, paths4, extra_token_bias)
        self.cls_token_3 = nn.Parameter(torch.zeros(1, 1, d3))
        self.cls_token_4 = nn.Parameter(torch.zeros(1, 1, d4))
        self.meta_tokens_3 = MetaTokenizer(self.meta_groups, d3)
        self.meta_tokens_4 = MetaTokenizer(self.meta_groups, d4)

        self.norm_cls_4 = nn.LayerNorm(d4)
        if not only_last_cls:
            self.norm_cls_3 = nn.LayerNorm(d3)
            self.project_cls_3 = nn.Sequential(Mlp(d3, out_features=d4), nn.LayerNorm(d4))
            self.aggregate = nn.Conv1d(2, 1, kernel_size=1)
            self.norm = nn.LayerNorm(d4)
        self.head = nn.Linear(d4, num_classes)
        self.num_features = d4
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        trunc_normal_(self.cls_token_3, std=0.02)
        trunc_normal_(self.cls_token_4, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token_3", "cls_token_4"}

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def replace_heads(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        self.head = fn(self.head)

    def set_epoch(self, epoch: int) -> None:
        """0-based epoch, for the meta masking schedule."""
        self.epoch = epoch

    def forward_features(self, x: torch.Tensor, meta: MetaInput = None) -> torch.Tensor:
        """Images (B, 3, H, W) and meta -> pooled features (B, D) (the input of ``head``)."""
        batch = x.shape[0]
        groups = self._meta_tensors(meta, batch, x.device)
        x = self.stage2(self.stage1(self.stem(x)))

        tokens = self.stage3(x, self._extra_tokens(self.cls_token_3, self.meta_tokens_3, groups, batch))
        num_extra = tokens.shape[1] - self.stage3.grid_size[0] * self.stage3.grid_size[1]
        cls_3 = tokens[:, 0]
        patches = tokens[:, num_extra:].transpose(1, 2).reshape(batch, -1, *self.stage3.grid_size)

        tokens = self.stage4(patches, self._extra_tokens(self.cls_token_4, self.meta_tokens_4, groups, batch))
        cls_4 = self.norm_cls_4(tokens[:, 0])
        if self.only_last_cls:
            return cls_4
        cls_3 = self.project_cls_3(self.norm_cls_3(cls_3))
        return self.norm(self.aggregate(torch.stack([cls_3, cls_4], dim=1)).squeeze(1))

    def forward(self, x: torch.Tensor, meta: MetaInput = None) -> ModelOutput:
        features = self.forward_features(x, meta)
        return ModelOutput(logits=self.head(features), features=features)

    def _extra_tokens(
        self, cls_token: torch.Tensor, tokenizer: MetaTokenizer, groups: Mapping[str, torch.Tensor], batch: int
    ) -> torch.Tensor:
        cls = cls_token.expand(batch, -1, -1)
        return torch.cat([cls, tokenizer(groups)], dim=1) if groups else cls

    def _meta_tensors(self, meta: MetaInput, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Meta by group, checked and in the parameter dtype; zeros for the no-meta path; masked in training."""
        if not self.meta_groups:
            if isinstance(meta, torch.Tensor):
                raise LongtailError("This MetaFG has no meta groups; create it with meta_groups=... to use meta.")
            return {}
        dtype = self.cls_token_3.dtype
        if meta is None or (isinstance(meta, Mapping) and not meta):
            return {name: torch.zeros(_group_shape(g, batch), device=device, dtype=dtype)
                    for name, g in self.meta_groups.items()}
        if isinstance(meta, torch.Tensor):
            if len(self.meta_groups) != 1:
                raise LongtailError(
                    f"This MetaFG has meta groups {list(self.meta_groups)}; pass meta as a dict by group name."
                )
            meta = {next(iter(self.meta_groups)): meta}
        tensors = {name: _checked_meta(name, g, meta, batch).to(device, dtype) for name, g in self.meta_groups.items()}
        fraction = self.meta_mask.fraction(self.epoch)
        return mask_meta(tensors, fraction) if self.training and fraction > 0 else tensors


def _group_shape(group: MetaGroup, batch: int) -> tuple[int, ...]:
    return (batch, group.width) if group.length == 1 else (batch, group.length, group.width)


def _checked_meta(name: str, group: MetaGroup, meta: Mapping[str, torch.Tensor], batch: int) -> torch.Tensor:
    if name not in meta:
        raise LongtailError(f"Meta group '{name}' is missing from the meta given (groups: {sorted(meta)}).")
    value = meta[name]
    expected = _group_shape(group, batch)
    if group.length == 1 and value.dim() == 3 and value.shape[1] == 1:
        value = value[:, 0]
    if tuple(value.shape) != expected:
        raise LongtailError(f"Meta group '{name}' must have shape {expected}, got {tuple(value.shape)}.")
    return value


def _linear_ramp(end: float, count: int) -> list[float]:
    """``count`` values from 0 to ``end`` (the per-block drop-path rates)."""
    return [end * i / max(count - 1, 1) for i in range(count)]


def _split(values: list[float], sizes: Iterable[int]) -> list[list[float]]:
    parts, start = [], 0
    for size in sizes:
        parts.append(values[start : start + size])
        start += size
    return parts


def _stem(in_chans: int, width: int) -> nn.Sequential:
    mid = 3 * (width // 4)
    return nn.Sequential(
        nn.Conv2d(in_chans, mid, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(),
        nn.Conv2d(mid, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


_VARIANTS: dict[str, dict[str, tuple[int, ...]]] = {
    "metafg_0": {"conv_dims": (64, 96, 192), "attn_dims": (384, 768), "depths": (2, 3, 5, 2)},
    "metafg_1": {"conv_dims": (64, 96, 192), "attn_dims": (384, 768), "depths": (2, 6, 14, 2)},
    "metafg_2": {"conv_dims": (128, 128, 256), "attn_dims": (512, 1024), "depths": (2, 6, 14, 2)},
}


# MetaFG's head count and MLP ratio are fixed at its defaults (8, 4.0) in every variant, not options.
_FIXED_IN_VARIANTS = {"num_heads": 8, "mlp_ratio": 4.0}

for _name, _dims in _VARIANTS.items():
    register_variant(
        _name, MetaFG, f"MetaFG {_name[-1]}: {_dims} (see MetaFG for the options).", **_dims, **_FIXED_IN_VARIANTS
    )
