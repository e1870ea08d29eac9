"""The activation switch: every activation of every registered backbone (and torchvision's ResNets, which reuse
one ReLU module per block) becomes its own module, per call site; per-channel sizes; edge cases."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

from longtail.errors import LongtailError
from longtail.models import create, list_models
from longtail.models.activations import AGLU, APA, GateReLU, is_replaceable, replace_activations

# The ResNet-152 variants only add depth to what the ResNet-50 ones test (and take seconds to build).
MODELS = [pytest.param(name, marks=pytest.mark.slow) if "152" in name else name for name in list_models()]
SMALL_OPTIONS = {"metafg_0": {"img_size": 64}, "metafg_1": {"img_size": 64}, "metafg_2": {"img_size": 64}}


def activation_calls(model: nn.Module, images: torch.Tensor) -> list[nn.Module]:
    """The activation module of every activation call in one forward pass, in call order."""
    calls: list[nn.Module] = []
    handles = [
        module.register_forward_hook(lambda module, inputs, output: calls.append(module))
        for module in model.modules()
        if is_replaceable(module)
    ]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return calls


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def input_for(name: str) -> torch.Tensor:
    size = 32 if "32" in name else 64
    return torch.randn(2, 3, size, size)


def check_every_call_has_its_own_aglu(model: nn.Module, images: torch.Tensor, per_channel: bool = False) -> None:
    """Each activation call gets its own AGLU, sized to its input's channels with ``per_channel``; the model
    gains the AGLUs' (κ, λ) and loses the parameters of the activations it had."""
    before = activation_calls(model, images)
    before_params = count(model) - sum(count(m) for m in {id(m): m for m in before}.values())
    replace_activations(model, "aglu", per_channel=per_channel)
    sizes_match = []
    handles = [
        module.register_forward_hook(
            lambda module, inputs, output: sizes_match.append(
                module.num_parameters in (1, inputs[0].shape[module.channel_dim])
            )
        )
        for module in model.modules()
        if isinstance(module, AGLU)
    ]
    calls = activation_calls(model, images)
    for handle in handles:
        handle.remove()
    assert len(calls) == len(before)
    assert all(isinstance(module, AGLU) for module in calls)
    assert len({id(module) for module in calls}) == len(calls)
    assert not [m for m in model.modules() if is_replaceable(m) and not isinstance(m, AGLU)]
    aglus = [m for m in model.modules() if isinstance(m, AGLU)]
    assert len(aglus) == len(calls)
    assert count(model) - before_params == sum(2 * m.num_parameters for m in aglus)
    assert all(m.num_parameters > 1 for m in aglus) if per_channel else all(m.num_parameters == 1 for m in aglus)
    assert all(sizes_match)


@pytest.mark.parametrize("name", MODELS)
def test_switch_reaches_every_activation_of_every_model(name):
    """Per-channel AGLU everywhere (the harder case: every input's channels must be found). Shapes propagate
    on the meta device: no memory, no arithmetic, fast for the big models."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create(name, num_classes=5, **SMALL_OPTIONS.get(name, {})).eval()
        check_every_call_has_its_own_aglu(model, input_for(name), per_channel=True)


@pytest.mark.parametrize(
    ("builder", "device"), [(torchvision.models.resnet18, "cpu"), (torchvision.models.resnet50, "meta")]
)
def test_torchvision_reused_relu_gets_one_module_per_call(builder, device):
    with torch.device(device):
        model = builder(num_classes=10).eval()
        check_every_call_has_its_own_aglu(model, torch.randn(1, 3, 32, 32))
    block = model.layer1[0]
    calls_per_block = 2 if isinstance(block, torchvision.models.resnet.BasicBlock) else 3
    names = [name for name, _ in block.named_children() if name.startswith("relu")]
    assert names == ["relu", "relu_1", "relu_2"][:calls_per_block]
    assert type(block).forward is not type(builder().layer1[0]).forward


def test_rewritten_forward_computes_what_the_original_did():
    model = torchvision.models.resnet18(num_classes=10).eval()
    reference = copy.deepcopy(model)
    replace_activations(model, "aglu")
    replace_activations(model, "relu")
    assert isinstance(model.layer1[0], torchvision.models.resnet.BasicBlock)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images))


def test_rewritten_model_deepcopies_trains_and_switches_again():
    model = torchvision.models.resnet18(num_classes=3)
    replace_activations(model, "aglu", per_channel=True)
    clone = copy.deepcopy(model)
    clone(torch.randn(2, 3, 16, 16)).sum().backward()
    aglus = [m for m in clone.modules() if isinstance(m, AGLU)]
    assert all(m.lambda_param.grad is not None and m.kappa_param.grad is not None for m in aglus)
    assert clone.layer1[0].relu_1.lambda_param is not model.layer1[0].relu_1.lambda_param
    replace_activations(model, "gelu")
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == len(aglus)


def test_create_with_activation_and_options():
    model = create("resnet32", num_classes=10, activation="aglu")
    aglus = [m for m in model.modules() if isinstance(m, AGLU)]
    assert len(aglus) == 31 and all(m.num_parameters == 1 for m in aglus)
    replace_activations(model, "aglu", lambda_grad="official")
    assert all(m.lambda_grad == "official" for m in model.modules() if isinstance(m, AGLU))
    assert isinstance(replace_activations(nn.ReLU(), "silu"), nn.SiLU)


def test_gates_are_left_alone():
    gate = nn.Sequential(nn.Linear(8, 2), GateReLU(), nn.Linear(2, 8), nn.Sigmoid(), APA())
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4, 8), gate)
    replace_activations(model, "aglu", per_channel=True)
    assert isinstance(model[1], AGLU) and model[1].num_parameters == 8
    assert [type(m) for m in gate] == [nn.Linear, GateReLU, nn.Linear, nn.Sigmoid, APA]


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.conv(x))
        return self.act(out) if out.sum() > 0 else out


class ModeDependent(DataDependent):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.conv(x))
        return self.act(out) if self.training else out


@pytest.mark.parametrize(("module", "reason"), [(DataDependent(), "cannot trace"), (ModeDependent(), "train and eval")])
def test_untraceable_forward_shares_one_replacement_and_warns(module, reason):
    with pytest.warns(UserWarning, match=reason):
        replace_activations(module, "aglu", per_channel=True)
    assert isinstance(module.act, AGLU) and module.act.num_parameters == 4
    assert not hasattr(module, "act_1") and type(module).forward is type(module).__mro__[0].forward
    assert module(torch.randn(1, 3, 2, 2)).shape == (1, 4, 2, 2)


def test_batched_ride_experts_get_per_channel_aglu_and_run_a_subset_of_experts():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create("ride_resnet32", num_classes=10, activation="aglu", activation_options={"per_channel": True})
    block = model.experts.layer3[0]
    assert isinstance(block.relu1, AGLU) and block.relu1.num_parameters == 3 * 48
    model.eval()
    images = torch.randn(4, 3, 32, 32)
    full = model(images).expert_logits
    torch.testing.assert_close(model(images, num_experts=2).expert_logits, full[:2], rtol=1e-5, atol=1e-5)


def test_new_parameters_follow_the_model_dtype():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).double()
    replace_activations(model, "aglu")
    assert model[1].lambda_param.dtype == torch.float64


def test_bad_names_and_options():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(LongtailError, match="Did you mean 'aglu'"):
        replace_activations(model, "aglue")
    with pytest.raises(LongtailError, match="per_channel"):
        replace_activations(model, "relu", per_channel=True)
    with pytest.raises(LongtailError, match="Bad option"):
        replace_activations(model, "relu", negative_slope=0.1)
    assert isinstance(model[1], nn.ReLU)
