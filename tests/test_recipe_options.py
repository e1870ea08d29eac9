"""A recipe's free-form options are checked against the factories they go to when it resolves, and ``budget=E``
scales the options that the factories declare as counting epochs (``epoch_args``), not those named like epochs."""

from __future__ import annotations

import inspect

import pytest

from longtail.cli.main import main
from longtail.config import FactoryArgs, apply_budget, from_dict
from longtail.data.datasets import DATASETS
from longtail.data.samplers import SAMPLERS
from longtail.engine.trainer import train
from longtail.errors import LongtailError
from longtail.losses import LOSSES
from longtail.methods.base import METHODS, import_method_modules
from longtail.methods.recipes import check_factory_options, declared_epoch_args, resolve
from longtail.models import MODELS
from longtail.models.activations import ACTIVATIONS
from longtail.registry import Registry

import_method_modules()  # the papers' losses and methods register when their modules are imported
ALL_REGISTRIES = (METHODS, MODELS, LOSSES, DATASETS, SAMPLERS, ACTIVATIONS)


@pytest.mark.parametrize(
    ("recipe", "override", "owner", "typo", "closest"),
    [
        ("cifar10-lt-if100-ldam-drw", "loss.args.drw_epochs=160", "loss 'ldam' (loss.args)", "drw_epochs", "drw_epoch"),
        ("cifar10-lt-if100-ldam-drw", "model.args.haed=cosine", "model 'resnet32' (model.args)", "haed", "head"),
        ("ride-cifar10-lt-if100", "method.args.router_topk=10", "method 'ride' (method.args)", "router_topk",
         "router_top_k"),
        ("digits-shike", "stages.0.loss.args.balanced_from_epochs=3", "loss 'shike' (stages.0.loss.args)",
         "balanced_from_epochs", "balanced_from_epoch"),
        ("cifar10-lt-if100-resnet32-aglu-budget", "model.activation_options.per_chanel=true",
         "activation 'aglu' (model.activation_options)", "per_chanel", "per_channel"),
        ("digits-ce", "data.args.image_sise=16", "dataset 'digits-lt' (data.args)", "image_sise", "image_size"),
        ("deit-lt-cifar10-lt-if100", "data.sampler.repeat=3", "sampler 'repeated' (data.sampler)", "repeat",
         "repeats"),
        ("cifar10-lt-if100-crt", "stages.0.sampler={name: repeated, repeat: 2}",
         "sampler 'repeated' (stages.0.sampler)", "repeat", "repeats"),
        ("digits-mdcs", "data.augment.rotatoin=15", "augmentation (data.augment)", "rotatoin", "rotation"),
    ],
)
def test_a_misspelt_option_names_the_recipe_the_key_and_the_closest(recipe, override, owner, typo, closest):
    with pytest.raises(LongtailError) as error:
        resolve(recipe, [override])
    message = str(error.value)
    assert message.startswith(f"Recipe '{recipe}': {owner} has no option '{typo}'. Did you mean '{closest}'? ")
    assert closest in message.split("Valid options: ")[1].rstrip(".").split(", ")


def test_the_valid_options_are_the_factorys_parameters_less_those_the_library_fills_in():
    with pytest.raises(LongtailError) as error:
        resolve("cifar10-lt-if100-ldam-drw", ["loss.args.margin=0.5"])
    valid = str(error.value).split("Valid options: ")[1].rstrip(".").split(", ")
    assert valid == [name for name in inspect.signature(LOSSES.get("ldam")).parameters if name != "class_counts"]


def test_a_misspelt_option_in_a_recipe_file_stops_training_before_it_starts(tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("base: digits-ce\nloss:\n  name: ldam\n  args: {drw_epoc: 3}\n")
    run_dir = tmp_path / "run"
    assert main(["train", "--recipe", str(recipe), "--run-dir", str(run_dir)]) == 2
    error = capsys.readouterr().err
    assert f"Recipe '{recipe}': loss 'ldam' (loss.args) has no option 'drw_epoc'. Did you mean 'drw_epoch'?" in error
    assert not run_dir.exists()


def test_the_trainer_checks_a_config_that_did_not_come_from_a_recipe(tmp_path):
    config = from_dict({"loss": {"name": "ce", "args": {"label_smoothin": 0.1}}, "train": {"progress": False}})
    with pytest.raises(LongtailError, match=r"^loss 'ce' \(loss.args\) has no option 'label_smoothin'. Did you mean"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_unknown_factory_name_fails_when_the_recipe_resolves():
    with pytest.raises(LongtailError, match="Unknown loss 'ldma'. Did you mean 'ldam'?"):
        resolve("digits-ce", ["loss.name=ldma"])


def test_a_timm_backbone_keeps_its_options_to_timm():
    config = from_dict({"model": {"name": "timm:vit_small_patch16_224", "args": {"drop_path_rate": 0.1}}})
    check_factory_options(config)
    assert declared_epoch_args(FactoryArgs("model.args", "model", config.model.name, config.model.args)) == ()


# ---------------------------------------------------------------- epoch options declared for the budget


def looks_like_epochs(option: str) -> bool:
    """The rule by which ``budget`` used to find epoch-valued options: by their names alone."""
    return option in ("epochs", "milestones") or option.endswith(("_epoch", "_epochs"))


def named_options(registry: Registry, name: str) -> list[str]:
    """The named parameters of ``name``'s factory that a config sets (a dataset builder's ``**common`` aside)."""
    parameters = inspect.signature(registry.get(name)).parameters.values()
    return [p.name for p in parameters if p.kind is not p.VAR_KEYWORD and p.name not in registry.reserved]


def every_factory() -> list[tuple[Registry, str]]:
    return [(registry, name) for registry in ALL_REGISTRIES for name in registry.names()]


def test_every_option_named_like_epochs_is_declared():
    """Declarations replaced the name rule without changing what it scaled; a new option named like epochs
    must be declared too (or renamed)."""
    undeclared = [
        f"{registry.kind} '{name}': {option}"
        for registry, name in every_factory()
        for option in named_options(registry, name)
        if looks_like_epochs(option) and option not in registry.epoch_args(name)
    ]
    assert not undeclared, f"declare these in the class's epoch_args: {undeclared}"


def test_declared_epoch_options_are_options_of_their_factory():
    wrong = [
        f"{registry.kind} '{name}': {option}"
        for registry, name in every_factory()
        for option in registry.epoch_args(name)
        if option not in named_options(registry, name)
    ]
    assert not wrong, f"epoch_args names options the factory does not take: {wrong}"
    assert MODELS.epoch_args("metafg_0") == ("meta_mask_epochs",)  # passed on by register_variant
    assert LOSSES.epoch_args("ride_distill") == ("drw_epoch",)  # a functools.partial of RIDELoss


def test_budget_scales_the_declared_epoch_options_and_no_other():
    every_mapping = {"ramp_epochs": 100, "warmup_epochs": 100, "start": 100}
    config = from_dict({
        "budget": 20,
        "schedule": {"epochs": 200},
        **{section: {"args": dict(every_mapping)} for section in ("method", "model", "loss", "data")},
        "stages": [{"epochs": 1, "loss": {"args": dict(every_mapping)}}],
    })
    compressed = apply_budget(config, lambda mapping: ("ramp_epochs", "start"))
    scaled = {"ramp_epochs": 10, "warmup_epochs": 100, "start": 10}  # warmup_epochs is not declared: kept
    assert [compressed.method.args, compressed.model.args, compressed.loss.args, compressed.data.args,
            compressed.stages[0].loss.args] == [scaled] * 5
    assert config.loss.args == every_mapping  # the budget leaves the config it compresses as it was


def test_a_recipes_declared_epoch_options_follow_the_budget():
    config = resolve("digits-mdcs", ["loss.args.ramp_epochs=50", "budget=10"])
    full = resolve("digits-mdcs", ["loss.args.ramp_epochs=50"])
    assert config.loss.args["ramp_epochs"] == round(50 * 10 / full.schedule.epochs)
