"""Models: parameter counts against the official models, shapes of every registered model, multi-expert
semantics, heads, options and errors."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longtail.errors import LongtailError
from longtail.models import MODELS, create, list_models
from longtail.models.base import Network
from longtail.models.cifar_resnet import make_cifar_stage
from longtail.models.heads import CosineHead, LWSHead, TauNormHead, create_head, tau_normalize
from longtail.models.multi_expert import MultiExpertNetwork, adjust_expert_logits

MY_MODULES = {
    "longtail.models.cifar_resnet",
    "longtail.models.torchvision_resnet",
    "longtail.models.ride_resnet",
    "longtail.models.shike",
}
MY_MODELS = [name for name in list_models() if MODELS.get(name).__module__ in MY_MODULES]
CIFAR_MODELS = {"resnet32", "ride_resnet32", "shike_resnet32"}
MDCS_EXPONENTS = [-0.5, 1.0, 2.5]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_buffers(module: nn.Module) -> int:
    """Buffer elements as the official per-expert model holds them: batched experts (``ride_resnet32``) keep one
    BatchNorm batch counter for all K experts where the official model has K."""
    counters = sum(
        getattr(layer, "num_experts", 1) - 1 for layer in module.modules() if isinstance(layer, nn.BatchNorm2d)
    )
    return sum(b.numel() for b in module.buffers()) + counters


@pytest.fixture(scope="module")
def facts(golden) -> dict:
    return json.loads((golden / "model_facts.json").read_text())


# (model_facts key, field, model name, kwargs)
OFFICIAL_COUNTS = [
    ("RIDE_ResNet32_3experts_reduce_C100", "params_total", "ride_resnet32", {"num_classes": 100}),
    ("RIDE_ResNet32_3experts_reduce_C10", "params_total", "ride_resnet32", {"num_classes": 10}),
    (
        "RIDE_ResNet32_1expert_LDAM_C100",
        "params_total",
        "ride_resnet32",
        {"num_classes": 100, "num_experts": 1, "reduce_dimension": False},
    ),
    ("RIDE_ResNet32_1expert_LDAM_C100", "params_total", "resnet32", {"num_classes": 100, "head": "cosine"}),
    (
        "MDCS_ResNet32_3experts_reduce_C100",
        "params_used_by_forward",
        "ride_resnet32",
        {"num_classes": 100, "logit_adjust_exponents": MDCS_EXPONENTS},
    ),
    (
        "MDCS_ResNet32_3experts_reduce_C10",
        "params_used_by_forward",
        "ride_resnet32",
        {"num_classes": 10, "logit_adjust_exponents": MDCS_EXPONENTS},
    ),
    ("SHIKE_resnet32_3exps_norm_C100", "params_total", "shike_resnet32", {"num_classes": 100}),
    ("SHIKE_resnet32_3exps_norm_C10", "params_total", "shike_resnet32", {"num_classes": 10}),
    (
        "SHIKE_resnet32_3exps_norm_C100",
        "params_without_rt_classifiers",
        "shike_resnet32",
        {"num_classes": 100, "retrain_heads": False},
    ),
    ("DeiTLT_teacher_resnet32_C10_use_normFalse", "params_total", "resnet32", {"num_classes": 10, "head": "linear"}),
    ("DeiTLT_teacher_resnet32_C10_use_normTrue", "params_total", "resnet32", {"num_classes": 10, "head": "cosine"}),
    ("DeiTLT_teacher_resnet32_C100_use_normFalse", "params_total", "resnet32", {"num_classes": 100, "head": "linear"}),
    ("DeiTLT_teacher_resnet32_C100_use_normTrue", "params_total", "resnet32", {"num_classes": 100, "head": "cosine"}),
]


@pytest.mark.parametrize(("fact", "field", "name", "kwargs"), OFFICIAL_COUNTS, ids=lambda v: str(v)[:40])
def test_parameter_count_matches_official(facts, fact, field, name, kwargs):
    model = create(name, **kwargs)
    assert count(model) == facts[fact][field]
    if field == "params_total":
        assert count_buffers(model) == facts[fact]["buffer_elements"]


@pytest.mark.parametrize(
    "fact", ["DeiTLT_teacher_resnet32_C10_use_normFalse", "DeiTLT_teacher_resnet32_C100_use_normTrue"]
)
def test_resnet32_per_child_counts(facts, fact):
    expected = facts[fact]["params_per_top_level_child"]
    head = "cosine" if fact.endswith("True") else "linear"
    model = create("resnet32", num_classes=facts[fact]["forward_output"][1], head=head)
    children = dict(model.named_children())
    for name in ("conv1", "bn1", "layer1", "layer2", "layer3"):
        assert count(children[name]) == expected[name]
    assert count(model.head) == expected["linear"]


@pytest.mark.parametrize("fact", ["SHIKE_resnet32_3exps_norm_C100", "SHIKE_resnet32_3exps_norm_C10"])
def test_shike_per_part_counts(facts, fact):
    expected = facts[fact]["params_per_top_level_child"]
    model = create("shike_resnet32", num_classes=_classes(fact))
    assert count(model.trunk) == sum(expected[k] for k in ("conv1", "bn1", "layer1", "layer2"))
    assert count(model.trunk.upper) == expected["layer2"]
    assert sum(count(branch.deep) for branch in model.experts) == expected["layer3s"]
    assert sum(count(branch.shallow) for branch in model.experts) == expected["shallow_exps"]
    assert count(model.heads) == expected["classifiers"]
    assert count(model.retrain_heads) == expected["rt_classifiers"]
    assert [branch.depth for branch in model.experts] == facts[fact]["exp_depth"]


def _classes(fact: str) -> int:
    return 100 if fact.endswith("C100") else 10


@pytest.mark.parametrize(
    "fact", ["RIDE_ResNet32_3experts_reduce_C100", "MDCS_ResNet32_3experts_reduce_C10", "SHIKE_resnet32_3exps_norm_C10"]
)
def test_cifar_output_shapes_match_official(facts, fact):
    info = facts[fact]
    name = "shike_resnet32" if fact.startswith("SHIKE") else "ride_resnet32"
    model = create(name, num_classes=_classes(fact)).eval()
    with torch.no_grad():
        out = model(torch.randn(*info["forward_input"]))
    batch, classes = info["forward_input"][0], _classes(fact)
    assert out.logits.shape == (batch, classes)
    assert out.expert_logits.shape == (3, batch, classes)
    official_features = {"RIDE": lambda: info["backbone.feat"], "MDCS": lambda: info["forward_output"]["feat"]}
    if fact.split("_")[0] in official_features:
        batch_, experts, dim = official_features[fact.split("_")[0]]()  # official layout (B, K, D)
        assert out.expert_features.shape == (experts, batch_, dim)


def _device_and_shape(name: str) -> tuple[str, tuple[int, ...]]:
    """CIFAR models and ResNet-10s run for real; the big ImageNet models propagate shapes on the meta
    device (no memory, no arithmetic), which keeps this test fast."""
    if name in CIFAR_MODELS:
        return "cpu", (2, 3, 32, 32)
    return ("cpu" if name.endswith("resnet10") else "meta"), (2, 3, 64, 64)


@pytest.mark.parametrize("name", MY_MODELS)
def test_every_model_outputs_logits_and_features(name):
    device, shape = _device_and_shape(name)
    with torch.device(device), torch.no_grad():
        model = create(name, num_classes=5).eval()
        out = model(torch.randn(*shape))
        features = model.forward_features(torch.randn(*shape))
    assert isinstance(model, Network)
    assert out.logits.shape == (2, 5)
    assert out.features.shape == features.shape and features.shape[0] == 2
    if device == "cpu":
        assert torch.isfinite(out.logits).all()
    if isinstance(model, MultiExpertNetwork):
        assert len(model.head_modules()) == model.num_experts == 3
        assert out.expert_logits.shape == (3, 2, 5)
        assert out.expert_features.shape == (3, 2, features.shape[1])
    else:
        assert model.head_modules() == [model.head]


def test_multi_expert_output_is_mean_of_experts():
    model = create("ride_resnet32", num_classes=7, num_experts=4).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(images)
        first_two = model(images, num_experts=2)
        shared = model.forward_trunk(images)
        logits_2, features_2 = model.forward_expert(shared, 2)
    torch.testing.assert_close(out.logits, out.expert_logits.mean(0))
    torch.testing.assert_close(out.features, out.expert_features.mean(0))
    torch.testing.assert_close(first_two.expert_logits, out.expert_logits[:2])
    torch.testing.assert_close(first_two.logits, out.expert_logits[:2].mean(0))
    torch.testing.assert_close(logits_2, out.expert_logits[2])
    torch.testing.assert_close(features_2, out.expert_features[2])
    assert not torch.allclose(out.expert_logits[0], out.expert_logits[1])
    with pytest.raises(LongtailError, match="between 1 and 4"):
        model(images, num_experts=5)


def _random_batchnorm(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            nn.init.uniform_(layer.weight, 0.5, 1.5)
            nn.init.uniform_(layer.bias, -0.5, 0.5)
            layer.running_mean.uniform_(-0.2, 0.2)
            layer.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_batched_experts_compute_each_separate_expert_and_load_per_expert_checkpoints(shortcut):
    """ride_resnet32 runs its experts side by side; expert k must equal a layer2 + layer3 of its own with the
    same weights (float64, training and eval mode), and a per-expert checkpoint must load into it."""
    torch.manual_seed(0)
    model = create("ride_resnet32", num_classes=5, num_experts=3, shortcut=shortcut).double()
    branches = [
        nn.Sequential(
            OrderedDict(layer2=make_cifar_stage(16, 24, 2, shortcut), layer3=make_cifar_stage(24, 48, 2, shortcut))
        ).double()
        for _ in range(3)
    ]
    state = {name: value for name, value in model.state_dict().items() if not name.startswith("experts.")}
    for index, branch in enumerate(branches):
        _random_batchnorm(branch)
        state.update({f"experts.{index}.{name}": value for name, value in branch.state_dict().items()})
    model.load_state_dict(state)
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    for training in (True, False):
        for module in (model, *branches):
            module.train(training)
        out = model(images)
        shared = model.forward_trunk(images)
        for index, (branch, head) in enumerate(zip(branches, model.heads)):
            features = torch.flatten(F.adaptive_avg_pool2d(branch(shared), 1), 1)
            torch.testing.assert_close(out.expert_features[index], features)
            torch.testing.assert_close(out.expert_logits[index], head(features))
        logits_1, _ = model.forward_expert(shared, 1)  # one expert alone: its own channels and statistics
        features_1 = torch.flatten(F.adaptive_avg_pool2d(branches[1](shared), 1), 1)
        torch.testing.assert_close(logits_1, model.heads[1](features_1))
    running = torch.cat([branch.layer3[4].bn2.running_var for branch in branches])
    torch.testing.assert_close(model.experts.layer3[4].bn2.running_var, running)


def test_cosine_expert_logits_are_bounded_by_scale():
    model = create("ride_resnet32", num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 32, 32))
    assert out.expert_logits.abs().max() <= 30.0 + 1e-4


def test_per_expert_logit_adjustment():
    model = create("ride_resnet32", num_classes=4, logit_adjust_exponents=MDCS_EXPONENTS).eval()
    counts = [100, 30, 10, 2]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    adjusted = model.adjusted_expert_logits(out.expert_logits, counts)
    log_counts = torch.tensor(counts, dtype=torch.float32).log()
    for k, lam in enumerate(MDCS_EXPONENTS):
        torch.testing.assert_close(adjusted[k], out.expert_logits[k] + lam * log_counts)
    torch.testing.assert_close(out.logits, out.expert_logits.mean(0))  # prediction stays the raw mean
    torch.testing.assert_close(model.adjusted_expert_logits(out.expert_logits[:2], counts), adjusted[:2])
    assert adjust_expert_logits(out.expert_logits.double(), torch.tensor(counts), MDCS_EXPONENTS).dtype == torch.float64


def test_logit_adjustment_errors():
    logits = torch.zeros(3, 2, 4)
    with pytest.raises(LongtailError, match="one per expert"):
        create("ride_resnet32", num_classes=4, logit_adjust_exponents=[1.0, 2.0])
    with pytest.raises(LongtailError, match="without logit_adjust_exponents"):
        create("ride_resnet32", num_classes=4).adjusted_expert_logits(logits, [1, 2, 3, 4])
    with pytest.raises(LongtailError, match="> 0"):
        adjust_expert_logits(logits, [1, 0, 3, 4], MDCS_EXPONENTS)
    with pytest.raises(LongtailError, match="classes"):
        adjust_expert_logits(logits, [1, 2, 3], MDCS_EXPONENTS)


def test_shike_dkf_feature_is_pooled_product():
    model = create("shike_resnet32", num_classes=10, num_experts=2, expert_depths=[2, 1]).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(images)
        low, high = model.trunk(images)
        assert low.shape == (2, 16, 32, 32) and high.shape == (2, 32, 16, 16)
        for k, source in enumerate((low, high)):
            branch = model.experts[k]
            deep, shallow = branch.deep(high), branch.shallow(source)
            assert deep.shape == shallow.shape == (2, 64, 8, 8)
            torch.testing.assert_close(out.expert_features[k], (deep * shallow).mean(dim=(2, 3)))


def test_shike_retrain_heads_switch():
    model = create("shike_resnet32", num_classes=10).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        model.select_heads("retrain")
        after = model(images)
    assert model.head_modules() == list(model.retrain_heads)
    torch.testing.assert_close(after.expert_features, before.expert_features)
    assert not torch.allclose(after.logits, before.logits)
    with pytest.raises(LongtailError, match="without re-training heads"):
        create("shike_resnet32", num_classes=10, retrain_heads=False).select_heads("retrain")
    with pytest.raises(LongtailError, match="Head set"):
        model.select_heads("other")


def test_imagenet_shike_shapes():
    with torch.device("meta"), torch.no_grad():
        model = create("shike_resnet50", num_classes=3, num_experts=2, retrain_heads=False).eval()
        low, high = model.trunk(torch.randn(1, 3, 64, 64))
        branch = model.experts[0]
        assert branch.depth == 2 and low.shape[1] == 512 and high.shape[1] == 1024
        assert branch.shallow(low).shape == branch.deep(high).shape == (1, 2048, 2, 2)
        assert model.experts[1].shallow(high).shape == (1, 2048, 2, 2)


def test_resnet32_shortcut_b_adds_projection_convs():
    option_a = create("resnet32", num_classes=10)
    option_b = create("resnet32", num_classes=10, shortcut="B")
    # 1x1 conv + BN where the shape changes: 16->32 and 32->64.
    assert count(option_b) - count(option_a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert count(option_a.layer2[0].shortcut) == 0


def test_activations_are_separate_modules():
    model = create("resnet32", num_classes=10)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 + 3 * 5 * 2 and len({id(m) for m in relus}) == len(relus)
    calls = []
    for relu in relus:
        relu.register_forward_hook(lambda module, inputs, output: calls.append(module))
    model(torch.randn(1, 3, 32, 32))
    assert len(calls) == len(relus)


def test_ride_imagenet_reduced_planes():
    model = create("ride_resnext50_32x4d", num_classes=5, num_experts=1)
    layer3, layer4 = model.experts[0].layer3, model.experts[0].layer4
    assert layer3[0].conv3.out_channels == 192 * 4 and layer4[0].conv3.out_channels == 384 * 4
    assert layer3[0].conv2.groups == 32 and model.heads[0].in_features == 1536


def test_pretrained_path_loads_local_weights(tmp_path):
    from torchvision.models.resnet import BasicBlock, ResNet

    source = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=9)
    path = tmp_path / "resnet10.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    single = create("resnet10", num_classes=4, pretrained_path=str(path))
    torch.testing.assert_close(single.body.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert single.head.out_features == 4
    multi = create("ride_resnet10", num_classes=4, num_experts=2, reduce_dimension=False, pretrained_path=str(path))
    torch.testing.assert_close(multi.trunk.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    for branch in multi.experts:
        torch.testing.assert_close(branch.layer4[0].bn2.running_var, source.layer4[0].bn2.running_var)
    with pytest.raises(LongtailError, match="reduce_dimension=False"):
        create("ride_resnet10", num_classes=4, pretrained_path=str(path))
    with pytest.raises(LongtailError, match="not found"):
        create("resnet10", num_classes=4, pretrained_path=str(tmp_path / "missing.pth"))
    incomplete = tmp_path / "incomplete.pth"
    torch.save({k: v for k, v in source.state_dict().items() if not k.startswith("layer1.")}, incomplete)
    with pytest.raises(LongtailError, match="do not fit.*missing layer1"):
        create("resnet10", num_classes=4, pretrained_path=str(incomplete))


def test_unknown_model_and_option_errors():
    with pytest.raises(LongtailError, match="Did you mean 'resnet32'"):
        create("resnet33", num_classes=10)
    with pytest.raises(LongtailError, match="no option.*num_expert"):
        create("ride_resnet32", num_classes=10, num_expert=2)
    with pytest.raises(LongtailError, match="shortcut"):
        create("resnet32", num_classes=10, shortcut="C")
    with pytest.raises(LongtailError, match="expert_depths"):
        create("shike_resnet32", num_classes=10, expert_depths=[3, 1, 2])
    with pytest.raises(LongtailError, match="at least 1"):
        create("ride_resnet32", num_classes=10, num_experts=0)
    with pytest.raises(LongtailError, match="Unknown head"):
        create("resnet32", num_classes=10, head="cosin")
    with pytest.raises(LongtailError, match="no option.*tau"):
        create("resnet32", num_classes=10, head="cosine", head_options={"tau": 1.0})


def test_cosine_head_is_scaled_cosine_similarity():
    head = create_head("cosine", 8, 5)
    features = torch.randn(4, 8)
    expected = 30.0 * nn.functional.normalize(features, dim=1) @ nn.functional.normalize(head.weight, dim=1).T
    torch.testing.assert_close(head(features), expected)
    torch.testing.assert_close(head(3.0 * features), head(features))  # invariant to the feature norm
    assert count(head) == 40
    learnable = create_head("cosine", 8, 5, scale=16.0, learnable_scale=True)
    assert isinstance(learnable.scale, nn.Parameter) and count(learnable) == 41
    learnable(features).sum().backward()
    assert learnable.scale.grad is not None


def test_tau_normalisation():
    linear = create_head("linear", 6, 4)
    with torch.no_grad():
        linear.weight.mul_(torch.tensor([[1.0], [2.0], [5.0], [0.5]]))
    features = torch.randn(3, 6)
    torch.testing.assert_close(tau_normalize(linear, 0.0)(features), linear(features))
    unit = tau_normalize(linear, 1.0)
    torch.testing.assert_close(unit.normalized_weight().norm(dim=1), torch.ones(4))
    torch.testing.assert_close(unit.bias, linear.bias)
    half = TauNormHead.from_linear(linear, 0.5)
    norms = linear.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(half.normalized_weight(), linear.weight / norms.sqrt())
    with pytest.raises(LongtailError, match="linear head"):
        tau_normalize(CosineHead(6, 4), 1.0)


def test_lws_trains_only_the_class_scales():
    linear = create_head("linear", 6, 4)
    lws = LWSHead.from_head(linear)
    features = torch.randn(3, 6)
    torch.testing.assert_close(lws(features), linear(features))
    assert [name for name, p in lws.named_parameters() if p.requires_grad] == ["scales"]
    with torch.no_grad():
        lws.scales.copy_(torch.tensor([1.0, 2.0, 0.5, 3.0]))
    torch.testing.assert_close(lws(features), linear(features) * lws.scales)
    assert linear.weight.requires_grad  # the trained head itself is untouched
    fresh = create_head("lws", 6, 4)
    assert sum(p.numel() for p in fresh.parameters() if p.requires_grad) == 4


def test_replace_heads_single_and_multi_expert():
    single = create("resnet32", num_classes=10)
    single.replace_heads(lambda head: tau_normalize(head, 1.0))
    assert isinstance(single.head, TauNormHead) and single.head_modules() == [single.head]
    multi = create("ride_resnet32", num_classes=10, num_experts=2)
    multi.replace_heads(LWSHead.from_head)
    assert all(isinstance(head, LWSHead) for head in multi.heads)
    assert multi(torch.randn(1, 3, 32, 32)).logits.shape == (1, 10)
