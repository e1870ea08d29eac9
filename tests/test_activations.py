"""APA / AGLU: golden parity with the official Unified / UniRect (values and gradients, float64), the special
cases, gradcheck of the fused function, bf16 stability, shapes, dtypes, layouts and the compiled kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.errors import LongtailError
from longtail.models import aglu_kernels
from longtail.models.activations import (
    AGLU,
    AGLU_LAMBDA_EPS,
    APA,
    _aglu_values,
    _AGLUFunction,
    _broadcast,
    _kernel_params,
    aglu,
    apa,
)
from longtail.models.aglu_kernels import set_aglu_kernels, uses_lookup

GOLDEN_TOL = {"rtol": 1e-9, "atol": 1e-12}
GRADS = ("gx", "gl", "gk")


@pytest.fixture(scope="module")
def fixture(load_golden, golden_manifest):
    arrays = load_golden("apa_aglu")
    entries = (entry for entry in golden_manifest.values() if isinstance(entry, dict))
    meta = next(entry for entry in entries if entry.get("file") == "apa_aglu.npz")
    return arrays, meta


def run_module(module, lam, kappa, x, upstream):
    """Output and (x, λ, κ) gradients of Σ upstream·module(x) in float64 with the given parameters."""
    module = module.double()
    with torch.no_grad():
        module.lambda_param.copy_(torch.as_tensor(lam, dtype=torch.float64).reshape(-1))
        module.kappa_param.copy_(torch.as_tensor(kappa, dtype=torch.float64).reshape(-1))
    x = torch.as_tensor(x).clone().requires_grad_()
    out = module(x)
    (out * torch.as_tensor(upstream)).sum().backward()
    return {"out": out.detach(), "gx": x.grad, "gl": module.lambda_param.grad, "gk": module.kappa_param.grad}


def assert_matches(result, arrays, prefix, suffix=""):
    for key in ("out", *GRADS):
        name = f"{prefix}_{key}" + (suffix if key != "out" else "")
        expected = arrays[name]
        np.testing.assert_allclose(result[key].numpy().reshape(expected.shape), expected, **GOLDEN_TOL, err_msg=name)


def test_apa_scalar_cases_match_official(fixture):
    arrays, meta = fixture
    for case in meta["apa_scalar_cases"]:
        result = run_module(APA(), case["lambda"], case["kappa"], arrays["x"], arrays["upstream_grad"])
        assert_matches(result, arrays, f"apa{case['index']}")


@pytest.mark.parametrize(("lambda_grad", "suffix"), [("exact", "_autograd"), ("official", "")])
def test_aglu_scalar_cases_match_official(fixture, lambda_grad, suffix):
    """Default: the true derivative (autograd through the official forward); 'official': its custom backward."""
    arrays, meta = fixture
    for case in meta["aglu_scalar_cases"]:
        module = AGLU(lambda_grad=lambda_grad)
        result = run_module(module, case["lambda"], case["kappa"], arrays["x"], arrays["upstream_grad"])
        assert_matches(result, arrays, f"aglu{case['index']}", suffix)


def test_per_channel_cases_match_official(fixture):
    arrays, _ = fixture
    x, upstream = arrays["x_channel"], arrays["upstream_grad_channel"]
    channels = x.shape[1]
    apa_result = run_module(APA(channels), arrays["apa_channel_lambda"], arrays["apa_channel_kappa"], x, upstream)
    assert_matches(apa_result, arrays, "apa_channel")
    for lambda_grad, suffix in (("exact", "_autograd"), ("official", "")):
        module = AGLU(channels, lambda_grad=lambda_grad)
        result = run_module(module, arrays["aglu_channel_lambda"], arrays["aglu_channel_kappa"], x, upstream)
        assert_matches(result, arrays, "aglu_channel", suffix)


def test_official_lambda_gradient_differs_from_the_true_one(fixture):
    arrays, meta = fixture
    case = next(c for c in meta["aglu_scalar_cases"] if c["lambda"] == 0.01)
    inputs = (case["lambda"], case["kappa"], arrays["x"], arrays["upstream_grad"])
    exact = run_module(AGLU(), *inputs)["gl"]
    official = run_module(AGLU(lambda_grad="official"), *inputs)["gl"]
    assert not torch.allclose(exact, official, rtol=0.5)


def scalar(value):
    return torch.tensor([value], dtype=torch.float64)


X = torch.linspace(-30, 30, 2001, dtype=torch.float64)


def test_lambda_kappa_one_is_sigmoid_and_silu():
    torch.testing.assert_close(apa(X, scalar(1.0), scalar(1.0)), torch.sigmoid(X), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(aglu(X, scalar(1.0), scalar(1.0)), F.silu(X), rtol=1e-7, atol=1e-12)


def test_lambda_to_zero_is_gumbel_cdf():
    """APA clamps λ at 1e-4; with u = e^{−κz}, p − exp(−u) ≈ exp(−u)·l·u²/2 ≤ 2l/e²."""
    kappa = scalar(0.7)
    gumbel = torch.exp(-torch.exp(-kappa * X))
    assert (apa(X, scalar(0.0), kappa) - gumbel).abs().max() <= 2 * 1e-4 / np.e**2 * 1.001
    torch.testing.assert_close(aglu(X, scalar(-1.0), kappa), X * gumbel, rtol=1e-6, atol=1e-9)


def test_large_kappa_approaches_relu():
    torch.testing.assert_close(aglu(X, scalar(0.5), scalar(200.0)), F.relu(X), rtol=0, atol=0.02)


def gradcheck_inputs(shape, channels):
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    param_shape = [1] * len(shape)
    param_shape[1] = channels
    l = (torch.rand(param_shape, generator=generator, dtype=torch.float64) * 1.5 + 0.05).requires_grad_()
    kappa = (torch.rand(param_shape, generator=generator, dtype=torch.float64) * 2 - 0.5).requires_grad_()
    return x, l, kappa


@pytest.mark.parametrize("channels", [1, 3])
def test_fused_function_gradcheck(channels):
    x, l, kappa = gradcheck_inputs((2, 3, 4, 5), channels)
    assert torch.autograd.gradcheck(lambda *a: _AGLUFunction.apply(*a, True), (x, l, kappa))


def test_apa_gradcheck_per_channel_tokens():
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    lam = (torch.rand(3, dtype=torch.float64) + 0.1).requires_grad_()
    kappa = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: apa(a, b, c, channel_dim=-1), (x, lam, kappa))


EXTREME_PARAMS = [(-1.0, 1.0), (0.0, 50.0), (1e-6, 1.0), (1e-3, -5.0), (1.0, 0.0), (10.0, 3.0), (100.0, 0.01)]


@pytest.mark.parametrize(("lam", "kappa"), EXTREME_PARAMS)
def test_bf16_autocast_is_finite_over_a_wide_range(lam, kappa):
    x = torch.linspace(-1e4, 1e4, 17 * 241).reshape(1, 1, 17, 241).bfloat16().requires_grad_()
    for module in (AGLU(), APA()):
        with torch.no_grad():
            module.lambda_param.fill_(lam)
            module.kappa_param.fill_(kappa)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x)
        out.float().sum().backward()
        assert out.dtype == torch.bfloat16
        for tensor in (out, x.grad, module.lambda_param.grad, module.kappa_param.grad):
            assert torch.isfinite(tensor).all(), (type(module).__name__, lam, kappa)
        x.grad = None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_output_and_gradient_keep_dtype_and_layout(dtype):
    module = AGLU(4)
    x = torch.randn(2, 4, 5, 6, dtype=dtype).to(memory_format=torch.channels_last).requires_grad_()
    out = module(x)
    out.backward(torch.ones(2, 4, 5, 6, dtype=dtype))
    assert out.dtype == x.grad.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    reference = aglu(x.detach().double(), module.lambda_param.double(), module.kappa_param.double())
    tolerance = {torch.bfloat16: 2e-2, torch.float16: 2e-3}.get(dtype, 1e-6)
    torch.testing.assert_close(out.double(), reference, rtol=tolerance, atol=tolerance)


def test_per_channel_parameters_broadcast_over_2d_3d_4d_inputs():
    channels = 6
    module = AGLU(channels)
    for x in (torch.randn(3, channels), torch.randn(3, channels, 4, 4)):
        out = module(x)
        manual = aglu(x.movedim(1, -1), module.lambda_param, module.kappa_param, channel_dim=-1).movedim(-1, 1)
        torch.testing.assert_close(out, manual)
    tokens = AGLU(channels, channel_dim=-1)
    assert tokens(torch.randn(2, 7, channels)).shape == (2, 7, channels)
    with pytest.raises(LongtailError, match="per-channel"):
        module(torch.randn(2, channels + 1, 3, 3))


def test_initialisation_follows_the_reference():
    torch.manual_seed(0)
    aglu_module, apa_module = AGLU(1000), APA(1000)
    assert 0.8 <= aglu_module.kappa_param.min() and aglu_module.kappa_param.max() <= 1.2
    assert 0.0 <= aglu_module.lambda_param.min() and aglu_module.lambda_param.max() <= 1.0
    assert -1.0 <= apa_module.kappa_param.min() and apa_module.kappa_param.max() <= 0.0
    assert aglu_module.kappa_param.std() > 0.05 and apa_module.lambda_param.std() > 0.1


def test_bad_options_are_named():
    with pytest.raises(LongtailError, match="lambda_grad"):
        AGLU(lambda_grad="truncated")
    with pytest.raises(LongtailError, match="num_parameters"):
        AGLU(0)
    with pytest.raises(LongtailError, match="kernels"):
        set_aglu_kernels("fast")


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "channels"), [(torch.float32, 16), (torch.bfloat16, 16), (torch.bfloat16, 1)])
def test_compiled_kernels_match_eager(dtype, channels):
    """torch.compile'd forward/backward (what large tensors use; bf16 with one κ, λ: the table lookup)
    against the eager bodies."""
    torch.manual_seed(0)
    module = AGLU(channels)
    x = (torch.randn(8, 16, 48, 48) * 4).to(dtype).to(memory_format=torch.channels_last)
    results = {}
    try:
        for mode in ("eager", "compiled"):
            set_aglu_kernels(mode)
            x_mode = x.clone().requires_grad_()
            module.zero_grad()
            out = module(x_mode)
            out.backward(torch.ones_like(out))
            results[mode] = (out, x_mode.grad, module.lambda_param.grad.clone(), module.kappa_param.grad.clone())
    finally:
        set_aglu_kernels("auto")
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    for eager, compiled in zip(results["eager"], results["compiled"]):
        assert compiled.dtype == eager.dtype
        torch.testing.assert_close(compiled.float(), eager.float(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels", [1, 2])
def test_table_lookup_gives_the_elementwise_values_and_layout(dtype, channels):
    """Large 16-bit inputs read AGLU from a table of all 2^16 input values (per channel)."""
    torch.manual_seed(0)
    module = AGLU(channels)
    x = (torch.randn(8, 2, 128, 256) * 4).to(dtype).to(memory_format=torch.channels_last)
    l = F.relu(module.lambda_param) + AGLU_LAMBDA_EPS
    kappa, log_l, inv_l = _kernel_params(x, _broadcast(l, x, 1), _broadcast(module.kappa_param, x, 1))
    assert uses_lookup(x, kappa) and not uses_lookup(x.float(), kappa)
    set_aglu_kernels("eager")
    try:
        with torch.no_grad():
            out = module(x)
    finally:
        set_aglu_kernels("auto")
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, _aglu_values(x, kappa, log_l, inv_l), rtol=0, atol=0)


def test_compile_failure_falls_back_to_the_eager_kernels(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(aglu_kernels, "_KERNELS", aglu_kernels._Kernels())
    monkeypatch.setattr(torch, "compile", no_compiler)
    torch.manual_seed(0)
    module = AGLU()
    x = (torch.randn(8, 2, 128, 256) * 4).bfloat16().requires_grad_()
    with pytest.warns(UserWarning, match="torch.compile failed"):
        out = module(x)
    out.backward(torch.ones_like(out))
    x64 = x.detach().double().requires_grad_()
    reference = aglu(x64, module.lambda_param.double(), module.kappa_param.double())
    reference.backward(torch.ones_like(reference))
    torch.testing.assert_close(out.double(), reference, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=2e-2, atol=2e-2)
