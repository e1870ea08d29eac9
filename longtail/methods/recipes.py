"""Recipes resolved against the factories they configure: ``resolve(recipe, overrides)`` is how a recipe name
becomes a RunConfig (``longtail train``, ``benchmarks/reproduce.py``, the tests).

``longtail.config`` validates every typed key but sits below the factories that its free-form mappings go to,
so it cannot check them; this module sees every registry and completes the job when a recipe resolves, before
any data is read:

- every key of ``method.args``, ``model.args``, ``model.activation_options``, ``loss.args`` (and each stage's),
  ``data.args``, of a sampler mapping (``data.sampler``, a stage's ``sampler``) and of an augmentation mapping
  (``data.augment``, ``data.strong_augment``) is checked against the signature of the factory it goes to: a
  misspelt option is one LongtailError naming the recipe, the key, the closest valid option and all of them;
- ``budget=E`` scales the ``args`` options that their factory declares as counting epochs (its ``epoch_args``,
  ``longtail.registry``), and no other.

The options of a timm backbone (``model.name: timm:<name>``) are timm's own; timm checks them when it builds.
"""

from __future__ import annotations

from collections.abc import Sequence

from longtail.config import (
    FactoryArgs,
    RunConfig,
    apply_budget,
    apply_overrides,
    factory_args,
    from_dict,
    load_recipe,
    parse_overrides,
)
from longtail.data.augment import AugmentSpec
from longtail.data.datasets import DATASETS, check_dataset_options
from longtail.data.samplers import SAMPLERS, sampler_options
from longtail.losses import LOSSES
from longtail.methods.base import METHODS, import_method_modules
from longtail.models import MODELS
from longtail.models.activations import check_activation_options
from longtail.models.backbones import TIMM_PREFIX
from longtail.registry import Registry, check_options

# The registry of each kind of ``args`` mapping (``longtail.config.factory_args``).
REGISTRIES: dict[str, Registry] = {"method": METHODS, "model": MODELS, "loss": LOSSES, "dataset": DATASETS}


def resolve(recipe: str, overrides: Sequence[str] = ()) -> RunConfig:
    """The validated config of ``recipe`` (a shipped recipe's name or a YAML file) with ``overrides``
    (``key.sub=value``): every option checked against its factory, then the budget applied."""
    config = from_dict(apply_overrides(load_recipe(recipe), parse_overrides(list(overrides))))
    check_factory_options(config, where=f"Recipe '{recipe}'")
    return apply_budget(config, declared_epoch_args) if config.budget is not None else config


def check_factory_options(config: RunConfig, where: str | None = None) -> None:
    """Raise a LongtailError for the first mapping of ``config`` with an option that the factory it goes to
    does not take (see the module docstring); ``where`` (e.g. "Recipe 'digits-ce'") starts the message."""
    import_method_modules()  # the papers' losses register when their method modules are imported
    prefix = f"{where}: " if where else ""
    for mapping in factory_args(config):
        owner = f"{prefix}{mapping.kind} '{mapping.name}' ({mapping.key})"
        if mapping.kind == "dataset":
            check_dataset_options(mapping.name, mapping.args, owner)
        elif not is_timm_model(mapping):
            REGISTRIES[mapping.kind].check_options(mapping.name, mapping.args, owner)
    model = config.model
    if model.activation is not None:
        owner = f"{prefix}activation '{model.activation}' (model.activation_options)"
        check_activation_options(model.activation, model.activation_options, owner)
    stage_samplers = [(f"stages.{index}.sampler", stage.sampler) for index, stage in enumerate(config.stages)]
    for key, spec in [("data.sampler", config.data.sampler), *stage_samplers]:
        if spec is not None:
            name, options = sampler_options(spec)
            SAMPLERS.check_options(name, options, f"{prefix}sampler '{name}' ({key})")
    for key in ("augment", "strong_augment"):
        spec = getattr(config.data, key)
        if isinstance(spec, dict):
            check_options(f"{prefix}augmentation (data.{key})", AugmentSpec, spec)


def declared_epoch_args(mapping: FactoryArgs) -> tuple[str, ...]:
    """The options of ``mapping``'s factory that count epochs, as the factory declares them (``epoch_args``)."""
    if is_timm_model(mapping):
        return ()
    return REGISTRIES[mapping.kind].epoch_args(mapping.name)


def is_timm_model(mapping: FactoryArgs) -> bool:
    """Whether ``mapping`` holds the options of a timm backbone (``model.name: timm:<name>``)."""
    return mapping.kind == "model" and mapping.name.startswith(TIMM_PREFIX)
