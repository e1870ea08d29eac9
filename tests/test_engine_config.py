"""Config schema, recipes, overrides and the budget: every bad input gives one clear LongtailError."""

from __future__ import annotations

import pytest

from longtail.config import (
    RunConfig,
    apply_budget,
    differing_keys,
    from_dict,
    list_recipes,
    load_recipe,
    parse_overrides,
    stage_schedule,
)
from longtail.engine.optim import lr_factor
from longtail.errors import LongtailError
from longtail.methods.recipes import declared_epoch_args, resolve


def test_defaults_validate_and_round_trip():
    config = from_dict({})
    assert isinstance(config, RunConfig)
    assert from_dict(config.to_dict()) == config


def test_unknown_key_lists_valid_keys_and_suggests_the_closest():
    with pytest.raises(LongtailError) as error:
        from_dict({"optim": {"lrr": 0.1}})
    message = str(error.value)
    assert "'optim.lrr'" in message and "Did you mean 'optim.lr'?" in message
    assert "optim.weight_decay" in message


def test_unknown_key_inside_a_stage_override_is_caught():
    with pytest.raises(LongtailError, match=r"stages\.0\.optim\.lx.*Did you mean 'stages\.0\.optim\.lr'"):
        from_dict({"stages": [{"name": "crt", "epochs": 2, "optim": {"lx": 1.0}}]})


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"optim": {"lr": "fast"}}, "optim.lr", "a number"),
        ({"train": {"deterministic": 1}}, "train.deterministic", "true or false"),
        ({"schedule": {"milestones": [160, "x"]}}, "schedule.milestones.1", "an integer"),
        ({"schedule": {"epochs": 2.5}}, "schedule.epochs", "an integer"),
        ({"data": {"augment": 3}}, "data.augment", "a string or a mapping or null"),
        ({"model": {"args": [1]}}, "model.args", "a mapping"),
        ({"stages": {"name": "crt"}}, "stages", "a list"),
    ],
)
def test_wrong_type_names_key_and_expected_type(data, key, expected):
    with pytest.raises(LongtailError) as error:
        from_dict(data)
    assert f"'{key}' must be {expected}" in str(error.value)


def test_scientific_notation_strings_are_numbers():
    assert from_dict({"optim": {"lr": "1e-3"}}).optim.lr == pytest.approx(1e-3)


def test_overrides_parse_yaml_values_and_index_lists():
    recipe = {"stages": [{"name": "crt", "epochs": 10}], "optim": {"lr": 0.1}}
    config = resolve_dict(recipe, ["optim.lr=0.05", "stages.0.epochs=3", "train.deterministic=true"])
    assert config.optim.lr == 0.05 and config.stages[0].epochs == 3 and config.train.deterministic is True


def resolve_dict(recipe, overrides):
    from longtail.config import apply_overrides

    return from_dict(apply_overrides(recipe, parse_overrides(overrides)))


@pytest.mark.parametrize("override", ["optim.lr", "=3", "optim.lr.x=3"])
def test_malformed_overrides(override):
    with pytest.raises(LongtailError):
        resolve_dict({"optim": {"lr": 0.1}}, [override])


def test_every_shipped_recipe_resolves_with_its_options_checked():
    """``resolve`` checks every option of a recipe against the factory it goes to (``longtail.methods.recipes``),
    so a misspelt option in a shipped recipe fails here."""
    recipes = list_recipes()
    assert {"digits-ce", "cifar10-lt-if100-ce", "cifar100-lt-if50-ldam-drw", "cifar10-lt-if10-balanced-softmax"} <= set(recipes)
    assert not any(name.startswith("_") for name in recipes)
    for name in recipes:
        resolve(name)
        resolve(name, ["budget=10"])


def test_cifar_recipes_reproduce_the_published_schedule():
    config = resolve("cifar100-lt-if100-ldam-drw")
    assert (config.data.name, config.data.imbalance, config.data.batch_size) == ("cifar100-lt", 100.0, 128)
    assert (config.optim.name, config.optim.lr, config.optim.momentum, config.optim.weight_decay) == ("sgd", 0.1, 0.9, 2e-4)
    schedule = config.schedule
    assert (schedule.epochs, schedule.warmup_epochs, schedule.milestones, schedule.gamma) == (200, 5, [160, 180], 0.01)
    assert config.loss.name == "ldam" and config.loss.args["drw_epoch"] == 160
    assert config.model.name == "resnet32" and config.model.args["head"] == "cosine"


def test_recipe_inheritance_merges_bases_in_order():
    recipe = load_recipe("cifar10-lt-if100-crt")
    assert recipe["loss"]["name"] == "ce" and recipe["stages"][0]["name"] == "crt"
    assert recipe["expected"] == {}  # an empty mapping clears the inherited one


def test_unknown_recipe_suggests_the_closest():
    with pytest.raises(LongtailError, match="Unknown recipe 'digit-ce'. Did you mean 'digits-ce'?"):
        resolve("digit-ce")


def test_budget_compresses_every_epoch_valued_key():
    config = resolve("cifar10-lt-if100-crt", ["budget=21", "loss.args.drw_epoch=160"])
    assert config.schedule.epochs == 20 and config.schedule.milestones == [16, 18]
    assert config.schedule.warmup_epochs == 1  # a non-zero epoch count never vanishes
    assert config.stages[0].epochs == 3  # cRT's min_epochs: 10 * 21 / 210 = 1 would leave a fresh head untrained
    assert config.loss.args["drw_epoch"] == 16


def test_budget_keeps_a_compressed_stage_a_real_stage():
    """SHIKE's 20-epoch stage 2 (5 warm-up epochs, cosine) at budget=10 was one epoch of warm-up that never
    decayed; it keeps its floor of epochs and a decay after the warm-up."""
    config = resolve("shike-cifar10-lt-if100", ["budget=10"])
    stage, schedule = config.stages[0], stage_schedule(config, 0)
    assert stage.epochs == 3
    assert 0 < schedule.warmup_epochs < schedule.epochs
    assert lr_factor(schedule, 0.1, stage.epochs - 0.01) < 0.01  # decays to ~0 by the end


def test_budget_drops_a_warmup_that_would_fill_a_one_epoch_schedule():
    full = from_dict({"budget": 2, "schedule": {"epochs": 20, "warmup_epochs": 5}, "stages": [
        {"epochs": 20, "schedule": {"warmup_epochs": 5, "name": "multistep", "milestones": [10, 19]}},
        {"epochs": 20, "min_epochs": 3, "schedule": {"name": "multistep", "milestones": [19, 20]}}]})
    config = apply_budget(full, declared_epoch_args)
    assert (config.schedule.epochs, config.schedule.warmup_epochs) == (1, 0)
    stage = stage_schedule(config, 0)
    assert (stage.epochs, stage.warmup_epochs, stage.milestones) == (1, 0, [1, 1])  # a one-epoch stage runs at its base lr
    assert stage_schedule(config, 1).milestones == [2, 3]  # the last epoch's milestone still fires; the end's never


def test_budget_scales_a_stage_schedule_with_the_stage_it_keeps():
    full = from_dict({"budget": 20, "schedule": {"epochs": 190}, "stages": [
        {"epochs": 10, "min_epochs": 4, "schedule": {"warmup_epochs": 5, "name": "multistep", "milestones": [8]}}]})
    config = apply_budget(full, declared_epoch_args)
    stage = stage_schedule(config, 0)
    assert (config.schedule.epochs, stage.epochs, stage.warmup_epochs, stage.milestones) == (19, 4, 2, [3])


def test_budget_must_be_positive():
    with pytest.raises(LongtailError, match="budget"):
        apply_budget(from_dict({"budget": 0}), declared_epoch_args)


def test_differing_keys_ignores_runtime_settings():
    old = from_dict({}).to_dict()
    new = from_dict({"optim": {"lr": 0.2}, "train": {"progress": False}, "data": {"num_workers": 3}}).to_dict()
    assert differing_keys(old, new) == ["optim.lr"]
