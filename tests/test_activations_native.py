"""AGLU's C++ table-lookup kernels (bfloat16 on the CPU, ``longtail/models/kernels/aglu_lookup.cpp``): the
same forward values as the elementwise formula, the same gradients to bfloat16 rounding, in every layout and
parameter shape they serve; fallbacks when they are off or cannot be built."""

from __future__ import annotations

import pytest
import torch

from longtail.models import kernels
from longtail.models.activations import AGLU
from longtail.models.aglu_kernels import NativeLookup, set_aglu_kernels


@pytest.fixture
def count_native(monkeypatch):
    """How many backward passes went through the C++ kernels."""
    calls = []
    original = NativeLookup.backward

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(NativeLookup, "backward", counted)
    return calls


def run(module, x, upstream, mode):
    set_aglu_kernels(mode)
    try:
        x = x.clone().requires_grad_()
        module.zero_grad()
        out = module(x)
        out.backward(upstream)
    finally:
        set_aglu_kernels("auto")
    return out.detach(), x.grad, module.lambda_param.grad.clone(), module.kappa_param.grad.clone()


def test_the_kernels_build_on_this_machine():
    assert kernels.cpu_extension("aglu_lookup") is not None


# (N, C, H, W) with sizes that leave tails after the 16-wide vector loop, each large enough for its tables
# (``LOOKUP_MAX_SHARE``); channels 1 = one (κ, λ).
CASES = [
    ((8, 2, 129, 131), 1, torch.channels_last),
    ((8, 2, 129, 131), 1, torch.contiguous_format),
    ((16, 2, 129, 131), 2, torch.contiguous_format),
    ((9, 4, 181, 181), 4, torch.contiguous_format),
]


@pytest.mark.parametrize(("shape", "channels", "layout"), CASES)
@pytest.mark.parametrize("lambda_grad", ["exact", "official"])
def test_native_kernels_match_the_elementwise_formula(shape, channels, layout, lambda_grad, count_native):
    module = AGLU(channels, lambda_grad=lambda_grad)
    x = (torch.randn(shape) * 4).bfloat16().contiguous(memory_format=layout)
    upstream = torch.randn(shape).bfloat16().contiguous(memory_format=layout)
    native = run(module, x, upstream, "auto")
    assert count_native == [1]
    eager = run(module, x, upstream, "eager")
    out, grad_x = native[0], native[1]
    assert out.dtype == grad_x.dtype == torch.bfloat16
    assert out.stride() == grad_x.stride() == x.stride()
    assert torch.equal(out, eager[0])
    # The same float32 derivatives, multiplied in another order: at most one bfloat16 rounding step apart.
    torch.testing.assert_close(grad_x.float(), eager[1].float(), rtol=2**-7, atol=1e-30)
    for got, want in zip(native[2:], eager[2:]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_per_channel_channels_last_uses_the_compiled_path(count_native):
    """Channels innermost: runs of one element per table, where the C++ kernels do not pay."""
    module = AGLU(2)
    x = torch.randn(16, 2, 129, 131).bfloat16().contiguous(memory_format=torch.channels_last)
    run(module, x, torch.ones_like(x), "auto")
    assert count_native == []


def test_special_values_follow_the_formula():
    module = AGLU()
    values = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, -3.0e38, 3.0e38])
    x = torch.cat([values, torch.randn(8 * 2 * 128 * 128 - len(values)) * 10]).reshape(8, 2, 128, 128)
    upstream = torch.ones(x.shape).bfloat16()
    native = run(module, x.bfloat16(), upstream, "auto")
    eager = run(module, x.bfloat16(), upstream, "eager")
    torch.testing.assert_close(native[0], eager[0], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(native[1].float(), eager[1].float(), rtol=2**-7, atol=1e-30, equal_nan=True)


def test_turned_off_kernels_fall_back(monkeypatch, count_native):
    monkeypatch.setenv("LONGTAIL_CPU_KERNELS", "0")
    assert kernels.cpu_extension("aglu_lookup") is None
    module = AGLU()
    x = torch.randn(8, 2, 128, 128).bfloat16()
    out = run(module, x, torch.ones_like(x), "auto")
    assert count_native == [] and torch.equal(out[0], run(module, x, torch.ones_like(x), "eager")[0])


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    kernels._build.cache_clear()
    try:
        with pytest.warns(UserWarning, match="could not build the C\\+\\+ kernel 'aglu_lookup'"):
            assert kernels.cpu_extension("aglu_lookup") is None
        assert kernels.cpu_extension("aglu_lookup") is None
    finally:
        kernels._build.cache_clear()
