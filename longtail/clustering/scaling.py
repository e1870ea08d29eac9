"""Building blocks of the scaling (Sinkhorn-type) solvers of :mod:`.ppot` and :mod:`.sppot`.

Kernel. For a cost ``C`` (N, K), row duals ``u`` (N,) and column duals ``v`` (K+1,) the kernel of the
problem extended by a zero-cost virtual column is ``M = [kernel, virtual]`` with::

    kernel  = exp((u - C + v[:K]ᵀ) / epsilon)      (N, K)
    virtual = exp((u + v[K]) / epsilon)             (N,)

:func:`build_kernel` writes ``kernel`` into one buffer (no full-size temporaries) and sets subnormal entries
to 0. The virtual column is kept apart so that the (N, K) block is contiguous and can become the plan in place.

Fused pass. One scaling half-step pair needs ``a = alpha / (M b)`` and then ``Mᵀ a``. :func:`scaling_pass`
computes both in one sweep over row blocks of ``kernel``: for a block ``B`` of rows,
``a_B = alpha / (kernel_B b[:K] + virtual_B b[K])`` and ``(Mᵀ a)[:K] += kernel_Bᵀ a_B`` while the block is
still in cache, so the memory-bound kernel is read once per iteration instead of twice.

Anderson acceleration. :class:`AndersonMixer` accelerates a fixed-point iteration ``x -> g(x)`` (here
``x = log b``). With the residual ``r = g(x) - x`` and the last ``m`` differences ``dX``, ``dR`` of iterates
and residuals, it solves ``gamma = argmin ||r - dR gamma||`` (ridge-regularised normal equations) and proposes
``x_next = x + r - (dX + dR) gamma`` (Walker & Ni 2011, type II). The solvers add the safeguard (fall back to
the plain step when the residual does not decrease).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CACHE_BLOCK_BYTES = 2 * 1024 * 1024
RIDGE = 1e-10


def block_rows(kernel: Tensor) -> int:
    """Rows per block of the fused pass: about 2 MiB on the CPU (a block stays in the L2 cache between its
    two products); on an accelerator one block, since there the two full products are bandwidth-bound anyway
    and a Python loop of small launches would cost more."""
    if kernel.device.type != "cpu":
        return max(kernel.shape[0], 1)
    row_bytes = max(kernel.shape[1], 1) * kernel.element_size()
    return max(CACHE_BLOCK_BYTES // row_bytes, 1)


def build_kernel(exponents: Tensor) -> Tensor:
    """``exp(exponents)`` in place, subnormal results set to 0: they change no sum that matters and make
    CPU matrix-vector products several times slower."""
    kernel = exponents.exp_()
    return F.threshold_(kernel, torch.finfo(kernel.dtype).tiny, 0.0)


def write_exponents(out: Tensor, cost: Tensor, u: Tensor, v: Tensor, epsilon: float) -> Tensor:
    """``out = (u - C + v[:K]ᵀ) / epsilon`` in place (the same operation order as the dense expression)."""
    torch.sub(u.reshape(-1, 1), cost, out=out)
    return out.add_(v[:-1].reshape(1, -1)).div_(epsilon)


def virtual_exponents(u: Tensor, v: Tensor, epsilon: float) -> Tensor:
    """``(u + v[K]) / epsilon`` (N,): the exponents of the zero-cost virtual column."""
    return (u + v[-1]) / epsilon


def scaling_pass(
    kernel: Tensor, virtual: Tensor, b: Tensor, alpha: Tensor, a_out: Tensor, rows: int | None = None
) -> tuple[Tensor, Tensor]:
    """``a = alpha / (M b)`` (written to ``a_out``, (N,)) and ``Mᵀ a`` (K+1,) in one row-blocked sweep.

    ``M = [kernel, virtual]``; ``alpha`` is a 0-dim tensor (the row marginal, equal for every row).
    """
    rows = rows or block_rows(kernel)
    b_real, b_virtual = b[:-1], b[-1]
    column_sums = kernel.new_zeros(kernel.shape[1])
    for start in range(0, kernel.shape[0], rows):
        block, a_block = kernel[start : start + rows], a_out[start : start + rows]
        torch.mul(virtual[start : start + rows], b_virtual, out=a_block).addmv_(block, b_real)
        torch.div(alpha, a_block, out=a_block)
        column_sums.addmv_(block.T, a_block)
    return a_out, torch.cat([column_sums, torch.dot(virtual, a_out).reshape(1)])


class AndersonMixer:
    """Anderson acceleration of depth ``depth`` for a fixed-point map on vectors (see the module docstring)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._last: tuple[Tensor, Tensor] | None = None
        self._iterate_steps: list[Tensor] = []
        self._residual_steps: list[Tensor] = []

    def reset(self) -> None:
        """Forget the history (after a change of variables or a non-finite proposal)."""
        self._last = None
        self._iterate_steps.clear()
        self._residual_steps.clear()

    def record(self, x: Tensor, mapped: Tensor) -> None:
        """Add the evaluation ``g(x) = mapped`` to the history (the oldest difference drops out at ``depth``)."""
        residual = mapped - x
        if self._last is not None:
            self._iterate_steps.append(x - self._last[0])
            self._residual_steps.append(residual - self._last[1])
            if len(self._iterate_steps) > self.depth:
                self._iterate_steps.pop(0)
                self._residual_steps.pop(0)
        self._last = (x, residual)

    def __call__(self, x: Tensor, mapped: Tensor) -> tuple[Tensor, bool]:
        """Record ``g(x)`` and return the next iterate and whether it is an extrapolation (without history it
        is the plain step ``g(x)``)."""
        self.record(x, mapped)
        if not self._iterate_steps:
            return mapped, False
        d_iterates = torch.stack(self._iterate_steps, dim=1)
        d_residuals = torch.stack(self._residual_steps, dim=1)
        gamma = _ridge_solve(d_residuals, mapped - x)
        return mapped - (d_iterates + d_residuals) @ gamma, True


def _ridge_solve(matrix: Tensor, target: Tensor) -> Tensor:
    """``argmin ||target - matrix gamma||² + RIDGE * trace(matrixᵀ matrix) ||gamma||²`` (a few columns)."""
    gram = matrix.T @ matrix
    shift = RIDGE * gram.diagonal().sum() + torch.finfo(gram.dtype).tiny
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + shift * eye, matrix.T @ target)
