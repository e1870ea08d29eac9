"""How AGLU runs fast: eager or ``torch.compile``-fused bodies, table lookup for 16-bit inputs on the CPU, and
the C++ kernels that read AGLU's tables for bfloat16. The mathematics (the formulas these run, their
derivatives, the tables' contents) is ``longtail.models.activations``.

A bfloat16/float16 input on CPU takes only 2^16 values, so AGLU is computed once for each of them (per
channel) and read from that table when the tables are at most a quarter of the input's size
(``LOOKUP_MAX_SHARE``). For bfloat16 (the trainer's CPU autocast) the backward does the same: the three local
derivatives ∂y/∂z, ∂y/∂κ, ∂y/∂l are tabulated at all 2^16 values, and one pass gathers them (∂/∂z = g·D[z],
∂/∂κ = Σ g·K[z], ∂/∂l = Σ g·L[z]), in C++ kernels (``longtail/models/kernels/aglu_lookup.cpp``, AVX-512
gathers, built on first use by ``longtail.models.kernels``; ``LONGTAIL_CPU_KERNELS=0`` turns them off): the
elementwise derivative costs two exponentials and a logarithm per element, the lookup three table reads.
Elsewhere the elementwise forward and the backward are fused into one loop each, parameter-gradient sums
included, by ``torch.compile`` on CPU and CUDA for tensors of at least ``COMPILE_MIN_NUMEL`` elements (smaller
ones and float64 run eagerly, where compiling does not pay); ``set_aglu_kernels('auto' | 'compiled' |
'eager')`` or the environment variable ``LONGTAIL_AGLU_KERNELS`` choose ('compiled' skips the C++ kernels). If
compiling fails (no C++ compiler, no Triton), AGLU warns once and runs eagerly.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

import torch

from longtail.errors import LongtailError
from longtail.models.kernels import cpu_extension

KERNEL_MODES = ("auto", "compiled", "eager")
COMPILE_MIN_NUMEL = 1 << 18
# Inductor options per kernel. Without them, it would store the λ-gradient's long elementwise operand to
# memory before summing it, and check every table index (which the lookup keeps in range) at a third of
# the lookup's cost.
COMPILE_OPTIONS: dict[str, dict[str, Any]] = {
    "forward": {},
    "lookup": {"assert_indirect_indexing": False},
    "backward": {"realize_opcount_threshold": 1 << 16},
    "tables": {"realize_opcount_threshold": 1 << 16},
}
LOOKUP_DTYPES = (torch.bfloat16, torch.float16)
LOOKUP_SIZE = 1 << 16
LOOKUP_MAX_SHARE = 4
NATIVE_MIN_RUN = 16
_COMPILED_DEVICES = ("cpu", "cuda")


# ------------------------------------------------------------------------------------ eager or compiled


class _Kernels:
    """Chooses eager or ``torch.compile``-fused bodies for the AGLU forward and backward."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self._compiled: dict[str, Callable[..., Any]] = {}
        self._failed = False

    def run(self, name: str, body: Callable[..., Any], size_of: torch.Tensor, *args: Any) -> Any:
        """``body(*args)``, compiled if ``size_of`` (the activation's input) is worth it."""
        if self._wants_compiled(size_of):
            try:
                if name not in self._compiled:
                    self._compiled[name] = torch.compile(body, dynamic=None, options=COMPILE_OPTIONS[name])
                return self._compiled[name](*args)
            except Exception as error:  # noqa: BLE001 - any compiler failure falls back to the same math
                self._failed = True
                warnings.warn(f"AGLU: torch.compile failed ({type(error).__name__}: {error}); running eagerly.")
        return body(*args)

    def current_mode(self) -> str:
        return self.mode or os.environ.get("LONGTAIL_AGLU_KERNELS", "auto")

    def native(self, x: torch.Tensor) -> ModuleType | None:
        """The C++ lookup kernels for x (bfloat16 on the CPU, mode 'auto', outside torch.compile), or None."""
        if x.dtype != torch.bfloat16 or x.device.type != "cpu" or self.current_mode() != "auto":
            return None
        return None if torch.compiler.is_compiling() else cpu_extension("aglu_lookup")

    def _wants_compiled(self, x: torch.Tensor) -> bool:
        mode = self.current_mode()
        if mode == "eager" or self._failed or torch.compiler.is_compiling():
            return False
        if x.device.type not in _COMPILED_DEVICES:
            return False
        if mode == "compiled":
            return True
        return x.numel() >= COMPILE_MIN_NUMEL and x.dtype != torch.float64


_KERNELS = _Kernels()


def set_aglu_kernels(mode: str) -> None:
    """'auto' (C++ table-lookup kernels for large bf16 CPU tensors, torch.compile for other large tensors on
    CPU/CUDA, eager for small ones), 'compiled' (torch.compile at every size, no C++ kernels) or 'eager'."""
    if mode not in KERNEL_MODES:
        raise LongtailError(f"AGLU kernels must be one of {', '.join(KERNEL_MODES)}, got {mode!r}.")
    _KERNELS.mode = mode


def run_kernel(name: str, body: Callable[..., Any], size_of: torch.Tensor, *args: Any) -> Any:
    """``body(*args)`` (the kernel ``name`` of ``COMPILE_OPTIONS``), fused by ``torch.compile`` where the mode
    and ``size_of`` (the activation's input) call for it, else eagerly."""
    return _KERNELS.run(name, body, size_of, *args)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """x's memory format: channels_last (3d) for such a 4-d (5-d) tensor, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


# ------------------------------------------------------------------------------------------ table lookup


def uses_lookup(x: torch.Tensor, kappa: torch.Tensor) -> bool:
    """A 16-bit CPU input whose tables (one per channel) cost at most a quarter of computing it elementwise."""
    return (
        x.device.type == "cpu"
        and x.dtype in LOOKUP_DTYPES
        and kappa.numel() * LOOKUP_SIZE * LOOKUP_MAX_SHARE <= x.numel()
    )


@cache
def all_values(dtype: torch.dtype) -> torch.Tensor:
    """Every value of a 16-bit dtype, at index (signed bit pattern + 2^15)."""
    return torch.arange(-LOOKUP_SIZE // 2, LOOKUP_SIZE // 2, dtype=torch.int32).to(torch.int16).view(dtype)


def _lookup(bits: torch.Tensor, table: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return table[bits.to(torch.int32) + offsets]


def read_table(x: torch.Tensor, table: torch.Tensor, param_shape: torch.Size) -> torch.Tensor:
    """``table`` (one row per parameter, at every value of ``all_values(x.dtype)``) read at x, in x's layout;
    ``param_shape`` is the parameters' shape broadcast against x."""
    order = _dense_order(x)
    bits = x.permute(order).contiguous().view(torch.int16)
    offsets = _table_offsets(tuple(param_shape), tuple(order))
    return _KERNELS.run("lookup", _lookup, x, bits, table.reshape(-1), offsets).permute(_inverse(order))


def derivative_tables(d_z: torch.Tensor, d_kappa: torch.Tensor, d_l: torch.Tensor) -> torch.Tensor:
    """The C++ backward's tables from the local derivatives at every 16-bit value (a row per parameter):
    float32 rows of ∂y/∂z followed by the pairs (∂y/∂κ, ∂y/∂l) value by value."""
    pairs = torch.stack([d_kappa, d_l], dim=-1).flatten(1)
    return torch.cat([d_z, pairs], dim=1).to(torch.float32)


@dataclass(frozen=True)
class NativeLookup:
    """How the C++ kernels walk x: ``order`` (a permutation making x contiguous, or None: any dense layout
    will do with one table) as (outer, ``channels``, ``inner``) runs, one table per channel or one for all."""

    kernels: ModuleType
    channels: int
    inner: int
    order: list[int] | None

    def walked(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.order is None else tensor.permute(self.order)

    def restored(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.order is None else tensor.permute(_inverse(self.order))

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``table`` (AGLU at every bfloat16 value, a row per table) read at x by the C++ kernel."""
        return self.restored(self.kernels.forward(self.walked(x), table, self.channels, self.inner))

    def backward(
        self, x: torch.Tensor, grad: torch.Tensor, derivatives: torch.Tensor, param_shape: torch.Size,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(∂/∂z, ∂/∂κ, ∂/∂l) by one C++ pass that gathers ``derivative_tables`` (grad in x's layout); the
        parameter gradients in ``dtype``, shaped ``param_shape``."""
        grad_x, sums = self.kernels.backward(
            self.walked(x), self.walked(grad), derivatives, self.channels, self.inner
        )
        sums = sums.to(dtype)
        return self.restored(grad_x), sums[:, 0].reshape(param_shape), sums[:, 1].reshape(param_shape)


def native_lookup(x: torch.Tensor, kappa: torch.Tensor) -> NativeLookup | None:
    """The C++ kernels' walk over x where they serve it: bfloat16 on the CPU, dense, and for per-channel
    tables runs of at least ``NATIVE_MIN_RUN`` elements (a channels_last input's channels are innermost:
    runs of one, where they do not pay)."""
    kernels = _KERNELS.native(x)
    order = _dense_order(x)
    if kernels is None or not x.permute(order).is_contiguous():  # not dense: gaps or overlaps in memory
        return None
    if kappa.numel() == 1:
        return NativeLookup(kernels, 1, x.numel(), None)
    channel_dim = next(dim for dim in range(x.dim()) if kappa.shape[dim] != 1)
    inner = math.prod(x.shape[dim] for dim in order[order.index(channel_dim) + 1 :])
    return NativeLookup(kernels, x.shape[channel_dim], inner, order) if inner >= NATIVE_MIN_RUN else None


@cache
def _table_offsets(param_shape: tuple[int, ...], order: tuple[int, ...]) -> torch.Tensor:
    """Where each channel's table starts in the flat tables, plus 2^15 (see ``all_values``), permuted."""
    channels = torch.arange(math.prod(param_shape), dtype=torch.int32).reshape(param_shape)
    return (LOOKUP_SIZE // 2 + LOOKUP_SIZE * channels).permute(order)


def _dense_order(x: torch.Tensor) -> list[int]:
    """The dims of x from outermost to innermost in memory: x.permute of them is contiguous for a dense x,
    so the lookup runs over memory in order and its result keeps x's layout."""
    return sorted(range(x.dim()), key=lambda dim: -x.stride(dim))


def _inverse(order: list[int]) -> list[int]:
    return sorted(range(len(order)), key=order.__getitem__)
