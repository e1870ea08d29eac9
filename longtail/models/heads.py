"""Classifier heads: linear, cosine, CosNorm, tau-normalised and LWS.

- ``linear``: z = W f + b.
- ``cosine`` (the ``NormedLinear`` of LDAM/RIDE/SHIKE/MDCS): z_c = s · cos(f, w_c) = s · (f/‖f‖)·(w_c/‖w_c‖),
  scale s = 30 by default, optionally learnable.
- ``cosnorm`` (the ``CosNorm_Classifier`` of OLTR, used by the APA reference kostas1515/AGLU as
  ``lr_cosine``): z_c = s² · (‖f‖ / (1 + ‖f‖)) · (f/‖f‖)·(w_c/‖w_c‖) = s² · f·(w_c/‖w_c‖) / (1 + ‖f‖): the
  feature is squashed to a norm below 1 instead of normalised; s learnable, initialised to 5 (s² = 25), W
  uniform in ±1/√d. With ``learnable_scale=False`` s is fixed (the reference's fixed 16 is s = 4).
- ``tau_norm`` (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
  ICLR 2020): z_c = (w_c / ‖w_c‖^τ) · f + b_c, applied post hoc to a trained linear head (τ = 0 is the
  linear head itself, τ = 1 makes every class weight unit-norm). The bias is kept unchanged.
- ``lws`` (learnable weight scaling, same paper): z_c = g_c · h(f)_c, the per-class scales g (initialised to
  1) are the only trainable parameters; the wrapped head h is frozen.

Models swap their heads with ``model.replace_heads(fn)`` (every head, single or one per expert), e.g.
``model.replace_heads(lambda head: tau_normalize(head, 1.0))`` or ``model.replace_heads(LWSHead.from_head)``;
``tau_normalized(model, tau)`` returns a tau-normalised copy of a model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from longtail.errors import LongtailError, unknown_name_error
from longtail.models.base import unwrap
from longtail.registry import check_options


class CosineHead(nn.Module):
    """z = scale · normalize(f) · normalize(W)^T, W of shape (num_classes, in_features), no bias."""

    def __init__(
        self, in_features: int, num_classes: int, scale: float = 30.0, learnable_scale: bool = False
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        # Unit-norm rows from a uniform draw, as the reference NormedLinear initialises its columns.
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True))
        if learnable_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.scale = float(scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))
        return cosine * self.scale

    def extra_repr(self) -> str:
        learnable = isinstance(self.scale, nn.Parameter)
        scale = float(self.scale.detach()) if learnable else self.scale
        return f"in_features={self.in_features}, num_classes={self.num_classes}, scale={scale:g}, learnable={learnable}"


class CosNormHead(nn.Module):
    """z = scale² · f / (1 + ‖f‖) · normalize(W)^T, W of shape (num_classes, in_features), no bias."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 5.0, learnable_scale: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        bound = in_features**-0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if learnable_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.scale = float(scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # f/(1+‖f‖) equals (‖f‖/(1+‖f‖))·f/‖f‖ and stays finite at f = 0
        squashed = features / (1 + features.norm(dim=1, keepdim=True))
        return F.linear(squashed, F.normalize(self.weight, dim=1)) * self.scale**2

    def extra_repr(self) -> str:
        learnable = isinstance(self.scale, nn.Parameter)
        scale = float(self.scale.detach()) if learnable else self.scale
        return f"in_features={self.in_features}, num_classes={self.num_classes}, scale={scale:g}, learnable={learnable}"


class TauNormHead(nn.Module):
    """z_c = (w_c / ‖w_c‖^τ) · f + b_c."""

    def __init__(self, in_features: int, num_classes: int, tau: float = 1.0, bias: bool = True) -> None:
        super().__init__()
        self.tau = float(tau)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    @classmethod
    def from_linear(cls, linear: nn.Linear, tau: float) -> TauNormHead:
        """A tau-normalised copy of a trained linear head (the linear head itself is left untouched)."""
        if not isinstance(linear, nn.Linear):
            raise LongtailError(
                f"tau-normalisation needs a linear head, got {type(linear).__name__}; train the model with "
                "head='linear' (a cosine head is already normalised)."
            )
        head = cls(linear.in_features, linear.out_features, tau=tau, bias=linear.bias is not None)
        with torch.no_grad():
            head.weight.copy_(linear.weight)
            if linear.bias is not None:
                head.bias.copy_(linear.bias)
        return head.to(linear.weight.device)

    def normalized_weight(self) -> torch.Tensor:
        return self.weight / self.weight.norm(dim=1, keepdim=True).pow(self.tau)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        num_classes, in_features = self.weight.shape
        return f"in_features={in_features}, num_classes={num_classes}, tau={self.tau:g}, bias={self.bias is not None}"


class LWSHead(nn.Module):
    """z_c = g_c · h(f)_c with h frozen and g (one scale per class, initialised to 1) trainable."""

    def __init__(self, base: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scales = nn.Parameter(torch.ones(num_classes))

    @classmethod
    def from_head(cls, head: nn.Module) -> LWSHead:
        """Wrap a frozen copy of a trained head (linear or cosine)."""
        num_classes = _num_classes_of(head)
        device = next(head.parameters()).device
        return cls(copy.deepcopy(head), num_classes).to(device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.base(features) * self.scales


def _linear_head(in_features: int, num_classes: int, bias: bool = True) -> nn.Linear:
    return nn.Linear(in_features, num_classes, bias=bias)


def _lws_head(in_features: int, num_classes: int, bias: bool = True) -> LWSHead:
    return LWSHead(nn.Linear(in_features, num_classes, bias=bias), num_classes)


_HEADS: dict[str, Callable[..., nn.Module]] = {
    "linear": _linear_head,
    "cosine": CosineHead,
    "cosnorm": CosNormHead,
    "tau_norm": TauNormHead,
    "lws": _lws_head,
}


def create_head(kind: str, in_features: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """A fresh head of ``kind`` ('linear', 'cosine', 'cosnorm', 'tau_norm', 'lws') mapping in_features ->
    num_classes.

    Options: linear/tau_norm/lws ``bias``; cosine ``scale`` (30) and ``learnable_scale``; cosnorm ``scale``
    (5, squared) and ``learnable_scale`` (True); tau_norm ``tau``.
    """
    if kind not in _HEADS:
        raise unknown_name_error("head", kind, _HEADS)
    if num_classes < 1:
        raise LongtailError(f"num_classes must be at least 1, got {num_classes}.")
    factory = _HEADS[kind]
    check_options(f"Head '{kind}'", factory, kwargs, reserved=("in_features", "num_classes"))
    return factory(in_features, num_classes, **kwargs)


def tau_normalize(head: nn.Module, tau: float) -> TauNormHead:
    """Post-hoc tau-normalisation of a trained linear head (returns a new head)."""
    return TauNormHead.from_linear(head, tau)


def tau_normalized(model: nn.Module, tau: float) -> nn.Module:
    """A copy of ``model`` whose linear head(s) are tau-normalised; ``model`` itself is unchanged."""
    normalized = copy.deepcopy(unwrap(model))
    normalized.replace_heads(lambda head: tau_normalize(head, tau))
    return normalized


def _num_classes_of(head: nn.Module) -> int:
    if isinstance(head, nn.Linear):
        return head.out_features
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return weight.shape[0]
    raise LongtailError(f"Cannot tell the number of classes of a {type(head).__name__} head.")
