"""SE-ResNets with APA squeeze-excitation gates and AGLU activations: structure as the reference, outputs,
gradients, bf16, and the ReLU baseline through the activation switch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from longtail.models import ModelOutput, create
from longtail.models.activations import AGLU, APA, GateReLU
from longtail.models.base import SingleHeadNetwork
from longtail.models.heads import CosineHead
from longtail.models.se_resnet import APASqueezeExcitation


def modules_of(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def test_se_resnet32_structure_matches_the_reference():
    model = create("se_resnet32", num_classes=10)
    gates = modules_of(model, APASqueezeExcitation)
    assert len(gates) == 15 and len(modules_of(model, AGLU)) == 1 + 15 * 2
    for gate in gates:
        channels = gate.norm.normalized_shape[0]
        first, relu, second, dropout = gate.excitation
        assert (first.in_features, first.out_features, second.out_features) == (channels, channels // 4, channels)
        assert first.bias is None and second.bias is None
        assert isinstance(relu, GateReLU) and dropout.p == 0.1
        assert isinstance(gate.gate, APA) and gate.gate.num_parameters == 1
    assert isinstance(model.head, CosineHead) and isinstance(model.head.scale, nn.Parameter)


def test_se_resnet32_forward_backward():
    model = create("se_resnet32", num_classes=10)
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(model, SingleHeadNetwork) and isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 10) and out.features.shape == (2, 64)
    assert model.head_modules() == [model.head]
    out.logits.logsumexp(dim=1).sum().backward()
    adaptive = modules_of(model, AGLU) + modules_of(model, APA)
    assert all(m.lambda_param.grad is not None and m.kappa_param.grad is not None for m in adaptive)


def test_se_resnet32_bf16_channels_last():
    model = create("se_resnet32", num_classes=10).to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert torch.isfinite(out.logits).all()


def test_gate_is_apa_of_normalised_squeeze():
    torch.manual_seed(0)
    gate = APASqueezeExcitation(8, 4).eval()
    x = torch.randn(2, 8, 3, 3)
    squeezed = gate.norm(x.mean(dim=(2, 3)))
    weights = gate.gate(gate.excitation(squeezed))
    torch.testing.assert_close(gate(x), x * weights[:, :, None, None])


@pytest.mark.parametrize(("name", "groups"), [("se_resnet50", 1), ("se_resnext50_32x4d", 32)])
def test_imagenet_se_resnets(name, groups):
    with torch.device("meta"):
        model = create(name, num_classes=7)
        out = model(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, 7) and out.features.shape == (2, 2048)
    block = model.body.layer1[0]
    assert block.conv2.groups == groups
    assert block.se.excitation[0].out_features == 256 // 16
    assert len(modules_of(model, APASqueezeExcitation)) == 16
    assert len(modules_of(model, AGLU)) == 1 + 16 * 3
    relus = modules_of(model, nn.ReLU)
    assert len(relus) == 16 and all(isinstance(m, GateReLU) for m in relus)


def test_relu_baseline_keeps_the_apa_gate():
    model = create("se_resnet32", num_classes=10, activation="relu")
    assert not modules_of(model, AGLU)
    assert len([m for m in model.modules() if type(m) is nn.ReLU]) == 31
    assert len(modules_of(model, GateReLU)) == len(modules_of(model, APA)) == 15
    assert model(torch.randn(2, 3, 32, 32)).logits.shape == (2, 10)


def test_head_options():
    fixed = create("se_resnet32", num_classes=5, head_options={"learnable_scale": False, "scale": 16.0})
    assert fixed.head.scale == 16.0
    linear = create("se_resnet32", num_classes=5, head="linear")
    assert isinstance(linear.head, nn.Linear)
