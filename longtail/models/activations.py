"""Adaptive Parametric Activation (APA) and AGLU, and the switch that puts any activation into any model.

Paper: K. Alexandridis, J. Deng, A. Nguyen, S. Luo, "Adaptive Parametric Activation", ECCV 2024
(arXiv 2407.08567); official code kostas1515/AGLU (``Unified`` = APA, ``UniRect`` = AGLU).

With input z, learnable κ (``kappa_param``) and λ (``lambda_param``), scalar or one per channel:

    APA(z)  = (λ·e^{−κz} + 1)^{−1/λ}          AGLU(z) = z · APA(z)

computed in log space, where it cannot overflow: with a = κz − log l,

    p = exp( log σ(a) / l ),    log σ(a) = softplus_{β=−1}(a) = min(a, 0) − log1p(e^{−|a|})

- ``APA`` (the reference's gate, e.g. in squeeze-excitation) returns p with l = clamp(λ, min=1e-4).
- ``AGLU`` returns z·p with l = relu(λ) + 1e-8.

(The official code calls ``softplus(a, beta=-1, threshold=20)``, which returns a itself for a < −20; the
exact log σ(a) used here differs from that by less than e^{−20}, far inside the float64 golden tolerances.)

Special cases: λ = κ = 1 gives the sigmoid (AGLU = SiLU); λ -> 0 the Gumbel CDF exp(−e^{−κz}); κ -> ∞ the
step function (AGLU -> ReLU). Initialisation as the reference: AGLU κ ~ U(0.8, 1.2), λ ~ U(0, 1); APA (gate)
κ ~ U(−1, 0), λ ~ U(0, 1).

AGLU gradients, with s = p / (l + e^{κz}) (= p·σ(−a)/l) and upstream gradient g, summed over the dimensions
a parameter is broadcast over:

    ∂/∂z = g·(p + κ·z·s),    ∂/∂κ = Σ g·z²·s,    ∂/∂l = Σ −g·(z/l)·(s + p·log σ(a)/l)

**Difference from the official code.** The official custom backward (``UniRect_static``) computes
∂/∂l = Σ −g·(z/l)·s: it drops the term −g·z·p·log σ(a)/l² (= +g·z·p·log(1 + l·e^{−κz})/l²), which dominates
for small l and often flips the sign, so official training updates λ with something that is not the
derivative of the forward function. This module implements the true derivative (``lambda_grad='exact'``,
the default); ``lambda_grad='official'`` reproduces the official backward. The z- and κ-gradients are the
same in both.

**Speed.** AGLU runs as one autograd function that saves only z and the (tiny) parameters and recomputes p
in the backward, in float32 for bfloat16/float16 inputs (output in the input dtype; the input gradient in
the input's memory format, so a channels_last network stays channels_last). Below float64, log1p(t) on t =
e^{−|a|} ∈ (0, 1] is 2·atanh(u), u = t/(2 + t), by a degree-4 polynomial in u² fitted at Chebyshev nodes
(float32 rounding accuracy at a fraction of the library log1p's cost on CPU). Large 16-bit CPU inputs read
AGLU (and, for bfloat16, its local derivatives) from tables of these formulas at all 2^16 input values,
through C++ kernels for bfloat16; other large inputs run ``torch.compile``-fused bodies. That machinery, and
its switches ``set_aglu_kernels``, ``LONGTAIL_AGLU_KERNELS`` and ``LONGTAIL_CPU_KERNELS``, is
``longtail.models.aglu_kernels``.

**The switch.** ``replace_activations(model, name)`` replaces every activation module of a model (see
``REPLACEABLE``) by a fresh instance of the named activation, one per call site, so each occurrence learns
its own κ and λ. Gates (sigmoid, APA) and ``GateReLU`` (the ReLU inside an APA squeeze-excitation gate,
which the reference keeps when every other activation becomes AGLU) are left alone. A module called more
than once in its parent's forward (torchvision's ``BasicBlock``/``Bottleneck`` reuse one ``self.relu`` two
or three times) is found by tracing the parent's forward with ``torch.fx`` (every submodule a leaf): each
call gets its own module (``relu``, ``relu_1``, ``relu_2``) and the parent instance gets the traced forward
(through a subclass of its class made for it; other instances are untouched). This needs a forward that
``torch.fx`` can trace and that does not branch on ``self.training``; otherwise the call sites share one
replacement and a warning says so. A model whose
forward was rewritten is saved through its ``state_dict`` (the rewritten forward itself cannot be pickled).
``per_channel=True`` gives AGLU one (κ, λ) per channel, the channel count read from the layer that feeds
the call site (conv / batch-norm / group-norm: channel dim 1; linear / layer-norm: the last dim, ViT tokens);
the default is one (κ, λ) per call site, as the reference's ``UniRect()``.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.layers import activations as timm_act
from timm.layers import activations_me as timm_act_me
from torch import fx, nn

from longtail.errors import LongtailError
from longtail.models.aglu_kernels import (
    NativeLookup,
    all_values,
    derivative_tables,
    memory_format_of,
    native_lookup,
    read_table,
    run_kernel,
    uses_lookup,
)
from longtail.registry import Registry, factory_options, reject_unknown_options

APA_LAMBDA_MIN = 1e-4
AGLU_LAMBDA_EPS = 1e-8
LAMBDA_GRADS = ("exact", "official")
# Q(w) = Σ c_k·w^k ≈ atanh(√w)/√w on [0, 1/9], fitted at Chebyshev nodes: 2u·Q(u²) is log1p(t) to float32
# rounding (u = t/(2 + t)).
LOG1P_ATANH_COEFFS = (
    1.000000003938874, 0.3333315796754127, 0.200124268616977, 0.139807094179743, 0.14087328628733034
)


# ----------------------------------------------------------------------------------------------- functions


def _compute_dtype(x: torch.Tensor, param: torch.Tensor) -> torch.dtype:
    """float32 for bfloat16/float16 inputs, else the wider of the input and parameter dtypes."""
    return torch.promote_types(torch.promote_types(x.dtype, param.dtype), torch.float32)


def _broadcast(param: torch.Tensor, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """A scalar or per-channel parameter shaped to broadcast against x along ``channel_dim``."""
    shape = [1] * x.dim()
    if param.numel() == 1:
        return param.reshape(shape)
    if x.shape[channel_dim] != param.numel():
        raise LongtailError(
            f"Activation has {param.numel()} per-channel parameters but the input has {x.shape[channel_dim]} "
            f"channels along dim {channel_dim} (input shape {tuple(x.shape)}); build it with num_parameters="
            f"{x.shape[channel_dim]} or the right channel_dim."
        )
    shape[channel_dim] = param.numel()
    return param.reshape(shape)


def _log1p_unit(t: torch.Tensor) -> torch.Tensor:
    """log(1 + t) for t in [0, 1]: in float64 torch.log1p; otherwise 2·atanh(u) = 2u·Q(u²), u = t/(2 + t)
    ≤ 1/3, with Q of ``LOG1P_ATANH_COEFFS`` (float32 rounding accuracy, several times faster than the
    vectorised library log1p on CPU)."""
    if t.dtype == torch.float64:
        return torch.log1p(t)
    u = t / (2.0 + t)
    u2 = u * u
    series = LOG1P_ATANH_COEFFS[-1]
    for coeff in reversed(LOG1P_ATANH_COEFFS[:-1]):
        series = series * u2 + coeff
    return 2.0 * u * series


def _log_sigmoid_and_tail(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log σ(a), t = e^{−|a|}): log σ(a) = min(a, 0) − log1p(t), stable for any a."""
    tail = torch.exp(-a.abs())
    return torch.clamp(a, max=0) - _log1p_unit(tail), tail


def _aglu_values(x: torch.Tensor, kappa: torch.Tensor, log_l: torch.Tensor, inv_l: torch.Tensor) -> torch.Tensor:
    """z·p with p = exp(log σ(κz − log l) / l); computed in the parameters' dtype, returned in x's."""
    z = x.to(kappa.dtype)
    log_sig, _ = _log_sigmoid_and_tail(kappa * z - log_l)
    return (z * torch.exp(log_sig * inv_l)).to(x.dtype)


def _aglu_local_grads(
    z: torch.Tensor, kappa: torch.Tensor, log_l: torch.Tensor, inv_l: torch.Tensor, exact_lambda: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(∂y/∂z, ∂y/∂κ, ∂y/∂l) of y = AGLU(z), elementwise (see the module docstring), in z's dtype."""
    a = kappa * z - log_l
    log_sig, tail = _log_sigmoid_and_tail(a)
    p = torch.exp(log_sig * inv_l)
    s = p * (torch.where(a >= 0, tail, 1.0) / (1.0 + tail)) * inv_l
    lambda_term = s + p * log_sig * inv_l if exact_lambda else s
    return p + kappa * z * s, z * z * s, -z * lambda_term * inv_l


def _aglu_grads(
    x: torch.Tensor,
    grad: torch.Tensor,
    kappa: torch.Tensor,
    log_l: torch.Tensor,
    inv_l: torch.Tensor,
    reduce_dims: tuple[int, ...],
    exact_lambda: bool,
    memory_format: torch.memory_format,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(∂/∂z, ∂/∂κ, ∂/∂l) of Σ grad·AGLU(z), the parameter gradients summed over ``reduce_dims``; ∂/∂z in
    ``memory_format`` (x's: a channels_last model then keeps channels_last gradients, and batch-norm
    backward stays on its fast path)."""
    z, g = x.to(kappa.dtype), grad.to(kappa.dtype)
    d_z, d_kappa, d_l = _aglu_local_grads(z, kappa, log_l, inv_l, exact_lambda)
    grad_x = (g * d_z).to(x.dtype).contiguous(memory_format=memory_format)
    return grad_x, (g * d_kappa).sum(reduce_dims, keepdim=True), (g * d_l).sum(reduce_dims, keepdim=True)


def _lookup_tables(
    values: torch.Tensor, l: torch.Tensor, kappa: torch.Tensor, exact_lambda: bool, with_grads: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The C++ kernels' tables, a row per (κ, l) of the columns (tables, 1), at every 16-bit value: AGLU in
    the values' dtype, and (``with_grads``) its local derivatives as the backward gathers them
    (``derivative_tables``). One body, so one compiled call serves both."""
    log_l, inv_l = torch.log(l), torch.reciprocal(l)
    table = _aglu_values(values, kappa, log_l, inv_l)
    if not with_grads:
        return table, None
    d_z, d_kappa, d_l = _aglu_local_grads(values.to(kappa.dtype), kappa, log_l, inv_l, exact_lambda)
    return table, derivative_tables(d_z, d_kappa, d_l)


class _AGLUFunction(torch.autograd.Function):
    """AGLU(z) with l > 0 given. Large 16-bit CPU inputs read it from a table; bfloat16 ones through the C++
    kernels, whose forward also tabulates the derivatives for the backward. Otherwise saves z, l, κ and
    recomputes p in the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, l: torch.Tensor, kappa: torch.Tensor, exact_lambda: bool) -> torch.Tensor:
        ctx.exact_lambda = exact_lambda
        ctx.native = native_lookup(x, kappa) if uses_lookup(x, kappa) else None
        if ctx.native is not None:
            out, derivatives = _native_forward(ctx.native, x, l, kappa, exact_lambda, any(ctx.needs_input_grad))
            ctx.save_for_backward(x, l, kappa, derivatives)
            return out
        ctx.save_for_backward(x, l, kappa)
        kappa_c, log_l, inv_l = _kernel_params(x, l, kappa)
        if uses_lookup(x, kappa):
            return _lookup_values(x, kappa_c, log_l, inv_l)
        return run_kernel("forward", _aglu_values, x, x, kappa_c, log_l, inv_l)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        x, l, kappa = ctx.saved_tensors[:3]
        memory_format = memory_format_of(x)
        # One layout for both streamed inputs: a fused loop over mixed layouts is twice as slow as a copy.
        grad = grad.contiguous(memory_format=memory_format)
        if ctx.native is not None and grad.dtype == x.dtype and grad.stride() == x.stride():
            grad_x, grad_kappa, grad_l = ctx.native.backward(
                x, grad, ctx.saved_tensors[3], kappa.shape, _compute_dtype(x, kappa)
            )
        else:
            kappa_c, log_l, inv_l = _kernel_params(x, l, kappa)
            reduce_dims = tuple(dim for dim in range(x.dim()) if kappa.shape[dim] == 1)
            grad_x, grad_kappa, grad_l = run_kernel(
                "backward", _aglu_grads, x, x, grad, kappa_c, log_l, inv_l, reduce_dims, ctx.exact_lambda,
                memory_format,
            )
        return grad_x, grad_l.to(l.dtype), grad_kappa.to(kappa.dtype), None


def _lookup_values(x: torch.Tensor, kappa: torch.Tensor, log_l: torch.Tensor, inv_l: torch.Tensor) -> torch.Tensor:
    """AGLU(x) read from a table of AGLU at all 2^16 values of x's dtype (per channel): the same numbers as
    the elementwise computation at a fraction of its cost. The table is a kernel of its own: compiled
    together with the lookup, inductor would inline its formula into the lookup."""
    column = (kappa.numel(), 1)
    table = run_kernel(
        "forward", _aglu_values, x, all_values(x.dtype), kappa.reshape(column), log_l.reshape(column),
        inv_l.reshape(column),
    )
    return read_table(x, table, kappa.shape)


def _native_forward(
    native: NativeLookup, x: torch.Tensor, l: torch.Tensor, kappa: torch.Tensor, exact_lambda: bool,
    with_grads: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """AGLU(x) by the C++ lookup, and the derivative tables for the backward when gradients are wanted."""
    dtype = _compute_dtype(x, kappa)
    column = (kappa.numel(), 1)
    table, derivatives = run_kernel(
        "tables", _lookup_tables, x, all_values(x.dtype), l.to(dtype).reshape(column),
        kappa.to(dtype).reshape(column), exact_lambda, with_grads,
    )
    return native.forward(x, table), derivatives


def _kernel_params(x: torch.Tensor, l: torch.Tensor, kappa: torch.Tensor) -> tuple[torch.Tensor, ...]:
    dtype = _compute_dtype(x, kappa)
    l = l.to(dtype)
    return kappa.to(dtype), torch.log(l), torch.reciprocal(l)


def aglu(
    x: torch.Tensor,
    lambda_param: torch.Tensor,
    kappa_param: torch.Tensor,
    channel_dim: int = 1,
    lambda_grad: str = "exact",
) -> torch.Tensor:
    """AGLU(x) = x·(l·e^{−κx} + 1)^{−1/l} with l = relu(λ) + 1e-8; parameters scalar or per channel of
    ``channel_dim``. ``lambda_grad='official'`` drops the log term of the λ-gradient as the official code."""
    if lambda_grad not in LAMBDA_GRADS:
        raise LongtailError(f"lambda_grad must be one of {', '.join(LAMBDA_GRADS)}, got {lambda_grad!r}.")
    l = F.relu(lambda_param) + AGLU_LAMBDA_EPS
    return _AGLUFunction.apply(
        x, _broadcast(l, x, channel_dim), _broadcast(kappa_param, x, channel_dim), lambda_grad == "exact"
    )


def apa(x: torch.Tensor, lambda_param: torch.Tensor, kappa_param: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """APA(x) = (l·e^{−κx} + 1)^{−1/l} with l = clamp(λ, min=1e-4): the gate p, in x's dtype."""
    dtype = _compute_dtype(x, kappa_param)
    l = _broadcast(torch.clamp(lambda_param, min=APA_LAMBDA_MIN), x, channel_dim).to(dtype)
    kappa = _broadcast(kappa_param, x, channel_dim).to(dtype)
    return torch.exp(F.logsigmoid(kappa * x.to(dtype) - torch.log(l)) / l).to(x.dtype)


# ------------------------------------------------------------------------------------------------- modules


class _Adaptive(nn.Module):
    """Learnable ``lambda_param`` and ``kappa_param`` of shape (num_parameters,), drawn uniformly."""

    def __init__(
        self,
        num_parameters: int,
        channel_dim: int,
        lambda_init: tuple[float, float],
        kappa_init: tuple[float, float],
    ) -> None:
        super().__init__()
        if num_parameters < 1:
            raise LongtailError(f"num_parameters must be at least 1 (1 = scalar), got {num_parameters}.")
        self.num_parameters = num_parameters
        self.channel_dim = channel_dim
        self.lambda_param = nn.Parameter(torch.empty(num_parameters).uniform_(*lambda_init))
        self.kappa_param = nn.Parameter(torch.empty(num_parameters).uniform_(*kappa_init))

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}, channel_dim={self.channel_dim}"


class APA(_Adaptive):
    """The APA gate p = (λ·e^{−κz} + 1)^{−1/λ}, λ clamped at 1e-4 (the reference's ``Unified``)."""

    def __init__(
        self,
        num_parameters: int = 1,
        channel_dim: int = 1,
        lambda_init: tuple[float, float] = (0.0, 1.0),
        kappa_init: tuple[float, float] = (-1.0, 0.0),
    ) -> None:
        super().__init__(num_parameters, channel_dim, lambda_init, kappa_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apa(x, self.lambda_param, self.kappa_param, self.channel_dim)


class AGLU(_Adaptive):
    """AGLU(z) = z·(λ·e^{−κz} + 1)^{−1/λ}, λ as relu(λ) + 1e-8 (the reference's ``UniRect``), fused."""

    def __init__(
        self,
        num_parameters: int = 1,
        channel_dim: int = 1,
        lambda_init: tuple[float, float] = (0.0, 1.0),
        kappa_init: tuple[float, float] = (0.8, 1.2),
        lambda_grad: str = "exact",
    ) -> None:
        super().__init__(num_parameters, channel_dim, lambda_init, kappa_init)
        if lambda_grad not in LAMBDA_GRADS:
            raise LongtailError(f"lambda_grad must be one of {', '.join(LAMBDA_GRADS)}, got {lambda_grad!r}.")
        self.lambda_grad = lambda_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return aglu(x, self.lambda_param, self.kappa_param, self.channel_dim, self.lambda_grad)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lambda_grad={self.lambda_grad}"


class GateReLU(nn.ReLU):
    """The ReLU inside an attention gate's MLP; ``replace_activations`` leaves it (as the APA reference)."""


# ------------------------------------------------------------------------------------------------ registry

ACTIVATIONS = Registry("activation")
for _name, _factory in {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "celu": nn.CELU,
    "gelu": nn.GELU,
    "gelu_tanh": partial(nn.GELU, approximate="tanh"),
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
    "aglu": AGLU,
}.items():
    ACTIVATIONS.register(_name)(_factory)

REPLACEABLE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, AGLU, timm_act.GELU, timm_act.GELUTanh, timm_act.QuickGELU, timm_act.Swish, timm_act.Mish,
    timm_act.HardSwish, timm_act.HardMish, timm_act_me.SwishMe, timm_act_me.MishMe, timm_act_me.HardSwishMe,
    timm_act_me.HardMishMe,
)  # fmt: skip
"""Activation types the switch replaces (gates such as sigmoid, tanh and APA are not among them)."""


def is_replaceable(module: nn.Module) -> bool:
    return isinstance(module, REPLACEABLE) and not isinstance(module, GateReLU)


def create_activation(
    name: str, num_channels: int | None = None, channel_dim: int = 1, **options: Any
) -> nn.Module:
    """A fresh activation ``name``; ``num_channels`` gives a parametric one (aglu) per-channel parameters."""
    factory = ACTIVATIONS.get(name)
    try:
        if num_channels is not None and name == "aglu":
            return factory(num_parameters=num_channels, channel_dim=channel_dim, **options)
        return factory(**options)
    except TypeError as error:
        raise LongtailError(f"Bad option for activation '{name}': {error}.") from error


def check_activation_options(name: str, options: Iterable[str], owner: str | None = None) -> None:
    """Raise a LongtailError naming the ``options`` that ``replace_activations(model, name, **options)`` does not
    take (the switch's ``per_channel`` and the activation's own), suggesting the closest."""
    own = factory_options(ACTIVATIONS.get(name))
    if own is not None:
        reject_unknown_options(owner or f"Activation '{name}'", options, ["per_channel", *own])


# ---------------------------------------------------------------------------------------------- the switch


@dataclass(frozen=True)
class _CallSite:
    channels: int | None
    channel_dim: int


def replace_activations(model: nn.Module, name: str, per_channel: bool = False, **options: Any) -> nn.Module:
    """Replace every activation of ``model`` (in place) by a fresh ``name`` activation per call site.

    ``per_channel`` (aglu only) sizes each AGLU's parameters to the channels of its input. ``options`` go to
    the activation (e.g. ``lambda_grad='official'``). Returns ``model`` (a new module if ``model`` itself is
    an activation)."""
    if per_channel and name != "aglu":
        raise LongtailError(f"per_channel applies to the parametric activation 'aglu', not '{name}'.")
    create_activation(name, **options)
    if is_replaceable(model):
        return create_activation(name, **options)
    unsized = []
    for parent_name, parent in list(model.named_modules()):
        targets = [child for child, module in parent.named_children() if is_replaceable(module)]
        if targets:
            sites = _call_sites(parent, targets)
            for target in targets:
                for index, site in enumerate(sites[target]):
                    if per_channel and site.channels is None:
                        unsized.append(f"{parent_name}.{target}".lstrip("."))
                    channels = site.channels if per_channel else None
                    module = create_activation(name, channels, site.channel_dim, **options)
                    parent.add_module(_site_name(target, index), module.to(**_placement(parent)))
    if unsized:
        warnings.warn(
            f"replace_activations: could not tell the channels of {', '.join(unsized)}; these use one (κ, λ)."
        )
    return model


def _placement(parent: nn.Module) -> dict[str, Any]:
    """Device and floating dtype of the parent's first parameter, for the new activation's parameters."""
    for param in parent.parameters():
        if param.is_floating_point():
            return {"device": param.device, "dtype": param.dtype}
    return {}


def _site_name(target: str, index: int) -> str:
    return target if index == 0 else f"{target}_{index}"


def _call_sites(parent: nn.Module, targets: list[str]) -> dict[str, list[_CallSite]]:
    """Call sites of each target child in ``parent``'s forward (one for a child it never calls). Where one
    child has several, the parent gets a forward in which call i uses ``<target>_<i>``. A forward that cannot
    be traced (and a ModuleList / ModuleDict, which has none) gives one site per child, sized from the
    preceding sibling; so does a module that declares ``activations_called_once = True`` (its forward calls
    each activation child once, right after the sibling registered before it), without tracing."""
    untraced = isinstance(parent, (nn.ModuleList, nn.ModuleDict)) or getattr(parent, "activations_called_once", False)
    graph = None if untraced else _trace(parent)
    if graph is None:
        return {target: [_sibling_site(parent, target)] for target in targets}
    nodes = {target: [n for n in graph.nodes if n.op == "call_module" and n.target == target] for target in targets}
    shared = {target: found for target, found in nodes.items() if len(found) > 1}
    sites = {target: [_node_site(parent, n) for n in found] or [_CallSite(None, 1)] for target, found in nodes.items()}
    if shared:
        _check_unique_names(parent, shared)
        for target, found in shared.items():
            for index, node in enumerate(found):
                node.target = _site_name(target, index)
        _install_forward(parent, graph)
    return sites


class _LeafTracer(fx.Tracer):
    """Traces only the root's own forward: every submodule call is one node."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return True


def _trace_graph(module: nn.Module) -> fx.Graph | None:
    try:
        return _LeafTracer().trace(module)
    except Exception:  # noqa: BLE001 - untraceable code of any kind: nothing to analyse
        return None


def _trace(parent: nn.Module) -> fx.Graph | None:
    """The traced forward, or None (with a warning) if fx cannot trace it or it depends on train/eval.

    Only ``parent.training`` is flipped for the two traces: the children are leaves, never run."""
    was_training = parent.training
    graphs = []
    for mode in (True, False):
        parent.training = mode
        graphs.append(_trace_graph(parent))
    parent.training = was_training
    if graphs[0] is None or graphs[1] is None:
        _warn_untraced(parent, "torch.fx cannot trace its forward")
        return None
    if graphs[0].python_code("self").src != graphs[1].python_code("self").src:
        _warn_untraced(parent, "its forward differs between train and eval mode")
        return None
    return graphs[0]


def _warn_untraced(parent: nn.Module, reason: str) -> None:
    warnings.warn(
        f"replace_activations: {type(parent).__name__}: {reason}, so its call sites are unknown: an "
        "activation it calls several times keeps one shared replacement, and per-channel sizes come from "
        "the preceding layer."
    )


def _check_unique_names(parent: nn.Module, shared: dict[str, list[fx.Node]]) -> None:
    for target, found in shared.items():
        for index in range(1, len(found)):
            if hasattr(parent, _site_name(target, index)):
                raise LongtailError(
                    f"{type(parent).__name__} already has an attribute '{_site_name(target, index)}'; cannot "
                    f"give each call of '{target}' its own activation."
                )


def _install_forward(parent: nn.Module, graph: fx.Graph) -> None:
    """Give this instance the traced (rewritten) forward through a subclass of its class made for it, so
    isinstance checks, later tracing and deepcopy keep working; other instances are untouched."""
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    cls = type(parent)
    exec(compile(code.src, f"<traced forward of {cls.__qualname__}>", "exec"), namespace)  # noqa: S102
    parent.__class__ = type(cls.__name__, (cls,), {"forward": namespace["forward"], "__module__": cls.__module__})


# --------------------------------------------------------------------------- channels of an activation input

# Modules whose output has their input's channels, and elementwise functions (a residual add): the
# channels are those of their (first resolvable) input.
_CHANNEL_PRESERVING = (nn.Dropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, *REPLACEABLE)
_ELEMENTWISE = {
    operator.add, operator.iadd, operator.sub, operator.mul, operator.imul, torch.add, torch.mul, "add", "mul"
}
_MAX_DEPTH = 32


@dataclass(frozen=True)
class _Frame:
    """Where a traced submodule was called: resolves its placeholders to the caller's arguments."""

    owner: nn.Module
    call: fx.Node
    outer: _Frame | None


def _module_channels(module: nn.Module) -> _CallSite | None:
    """(channels, channel dim) of a layer's output, or None if the layer does not say."""
    if isinstance(module, LayerNorm2d):
        return _CallSite(module.normalized_shape[-1], 1)
    if isinstance(module, nn.modules.conv._ConvNd):
        return _CallSite(module.out_channels, 1)
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return _CallSite(module.num_features, 1)
    if isinstance(module, nn.GroupNorm):
        return _CallSite(module.num_channels, 1)
    if isinstance(module, nn.Linear):
        return _CallSite(module.out_features, -1)
    if isinstance(module, nn.LayerNorm):
        return _CallSite(module.normalized_shape[-1], -1)
    return None


def _node_site(parent: nn.Module, call: fx.Node) -> _CallSite:
    """The call site of activation node ``call``: channels of its input, or unknown."""
    value = call.args[0] if call.args else None
    return _value_channels(parent, value, None, 0) or _CallSite(None, 1)


def _value_channels(owner: nn.Module, value: Any, frame: _Frame | None, depth: int) -> _CallSite | None:
    """Channels of ``value`` in ``owner``'s traced forward: the layer that made it, found through
    channel-preserving modules, elementwise functions, submodules (traced in turn) and, for an input of a
    traced submodule, the caller's argument."""
    if not isinstance(value, fx.Node) or depth > _MAX_DEPTH:
        return None
    if value.op == "placeholder":
        return _caller_argument(value, frame, depth)
    if value.op == "call_module":
        return _module_output_channels(owner, value, frame, depth)
    if value.target in _ELEMENTWISE:
        return _first_resolved(owner, value.args, frame, depth)
    return None


def _module_output_channels(owner: nn.Module, call: fx.Node, frame: _Frame | None, depth: int) -> _CallSite | None:
    module = owner.get_submodule(call.target)
    found = _module_channels(module)
    if found is not None:
        return found
    if isinstance(module, _CHANNEL_PRESERVING):
        return _first_resolved(owner, call.args, frame, depth)
    graph = _trace_graph(module)
    if graph is None:
        return None
    output = next(node for node in graph.nodes if node.op == "output")
    return _value_channels(module, output.args[0], _Frame(owner, call, frame), depth + 1)


def _caller_argument(placeholder: fx.Node, frame: _Frame | None, depth: int) -> _CallSite | None:
    if frame is None:
        return None
    position = [node for node in placeholder.graph.nodes if node.op == "placeholder"].index(placeholder)
    if position >= len(frame.call.args):
        return None
    return _value_channels(frame.owner, frame.call.args[position], frame.outer, depth + 1)


def _first_resolved(owner: nn.Module, args: Iterable[Any], frame: _Frame | None, depth: int) -> _CallSite | None:
    for arg in args:
        found = _value_channels(owner, arg, frame, depth + 1)
        if found is not None:
            return found
    return None


def _sibling_site(parent: nn.Module, target: str) -> _CallSite:
    """One call site sized from the nearest preceding sibling layer that sets the channels."""
    children = list(parent.named_children())
    position = [child for child, _ in children].index(target)
    for _, module in reversed(children[:position]):
        found = _module_channels(module)
        if found is not None:
            return found
        if not isinstance(module, _CHANNEL_PRESERVING):
            break
    return _CallSite(None, 1)
