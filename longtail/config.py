"""Run configuration: a YAML recipe (with ``base:`` inheritance, a name or a list of names) overridden by ``key.sub=value`` arguments,
validated against a typed schema of dataclasses.

Every key a run understands is a field below; an unknown key or a value of the wrong type is a
LongtailError that names the key and the valid alternatives. The free-form ``args`` dictionaries
(``factory_args``) are passed as keyword arguments to the method, model, loss or dataset factory. Those
factories live in layers above this module, so the layer that knows them checks the args against their
signatures when a recipe resolves (``longtail.methods.recipes.resolve``, which also applies the budget).

``budget=E`` compresses a recipe to E epochs in total: every epoch-valued key is multiplied by
s = E / (total epochs of all stages) and rounded. Epoch-valued keys are ``epochs``, ``warmup_epochs`` and
``milestones`` of each schedule and stage, and, inside the ``args`` dictionaries, the options that their
factory declares as counting epochs (its ``epoch_args``, e.g. ``loss.args.drw_epoch`` of ``ldam``), which
``apply_budget`` is given as a lookup by the layer that knows the factories. An undeclared option keeps its
value whatever its name.

A compressed schedule keeps its shape: a stage keeps at least its ``min_epochs`` (a method whose later stage
needs a few epochs to train fresh heads sets it, so the total may exceed E); the warm-up and milestones of a
schedule scale with that schedule's own epochs, and a warm-up or milestone that lay inside the schedule stays
inside it, so a warm-up is always followed by at least one epoch of decay (a one-epoch schedule has none).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from longtail.errors import LongtailError, Setting, closest

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"

# Keys that may differ between a run and its resumption (they change how it runs, not what it computes).
RUNTIME_KEYS = frozenset(
    {"description", "expected", "data.num_workers", "train.progress", "train.log_every", "train.device"}
)


def bounded(default: Any, *, minimum: float | None = None, below: float | None = None) -> Any:
    """A schema field whose value (each item, for a list) must be >= ``minimum`` and < ``below``; ``from_dict``
    checks it and names the key."""
    limits = {"minimum": minimum, "below": below}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=limits)
    return field(default=default, metadata=limits)


@dataclass
class MethodConfig:
    name: str = "erm"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    name: str = "digits-lt"
    root: str | None = None
    imbalance: float = 100.0
    profile: str = "exp"
    selection: str = "shuffle"
    val_per_class: int | None = bounded(None, minimum=0)
    batch_size: int = bounded(128, minimum=1)  # global: divided among DDP processes
    eval_batch_size: int = bounded(512, minimum=1)
    augment: str | dict[str, Any] | None = "auto"  # a preset name or AugmentSpec fields; None: no augmentation
    strong_augment: str | dict[str, Any] | None = "autoaugment"  # the second view's, when two_views
    two_views: bool = False
    sampler: str | dict[str, Any] = "instance"  # a name, or name and options: {name: repeated, repeats: 3}
    num_workers: int = bounded(0, minimum=0)
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # data.args goes to the dataset's builder beside the settings above (and the seed): one key, one place.
        own_keys = {item.name: f"data.{item.name}" for item in dataclasses.fields(self)} | {"seed": "train.seed"}
        repeated = [key for key in self.args if key in own_keys]
        if repeated:
            fixes = ", ".join(f"'{own_keys[key]}' instead of 'data.args.{key}'" for key in repeated)
            raise LongtailError(f"Set {fixes}: data.args holds only the dataset's own options.")


def config_spelling(setting: Setting) -> str:
    """A dataset setting as a config override: ``data.root=<folder>``, ``data.args.download=true``."""
    own_keys = {item.name for item in dataclasses.fields(DataConfig)}
    key = f"data.{setting.name}" if setting.name in own_keys else f"data.args.{setting.name}"
    return f"{key}={setting.value}"


@dataclass
class ModelConfig:
    name: str = "resnet32"
    activation: str | None = None
    activation_options: dict[str, Any] = field(default_factory=dict)  # e.g. per_channel, lambda_grad (aglu)
    init_checkpoint: str | None = None  # weights to start from (a longtail checkpoint or a state dict)
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    name: str = "ce"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = bounded(0.1, minimum=0)
    momentum: float = bounded(0.9, minimum=0)
    nesterov: bool = False
    weight_decay: float = bounded(2e-4, minimum=0)
    betas: list[float] = bounded([0.9, 0.999], minimum=0, below=1)
    sam_rho: float = bounded(0.0, minimum=0)  # > 0 turns on sharpness-aware minimisation
    clip_grad: float | None = bounded(None, minimum=0)  # max gradient norm
    backbone_lr_scale: float = bounded(1.0, minimum=0)  # lr multiplier of every parameter outside model.head_modules()


@dataclass
class ScheduleConfig:
    name: str = "multistep"  # multistep | cosine | constant
    epochs: int = 200
    warmup_epochs: int = 0
    warmup_lr: float = 0.0  # lr at the start of the linear warm-up
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1  # multistep: lr factor at each milestone
    min_lr: float = 0.0  # cosine: final lr


@dataclass
class StageConfig:
    """A training stage after the main one (e.g. cRT). ``optim`` overrides the run's optimiser settings;
    ``schedule`` overrides the defaults of ScheduleConfig (not the run's schedule); ``loss`` replaces the
    run's loss when given."""

    name: str = "stage"
    epochs: int = bounded(1, minimum=1)
    min_epochs: int = 1  # the fewest epochs ``budget`` may compress this stage to
    trainable: str = "all"  # parameter selector: 'all', 'head' or one the method defines
    reinit_head: bool = False
    sampler: str | dict[str, Any] | None = None
    batch_size: int | None = bounded(None, minimum=1)
    optim: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    loss: LossConfig | None = None


@dataclass
class TrainConfig:
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA only) | auto (bf16 where the device computes it natively)
    channels_last: bool = False
    compile: bool = False
    ema_decay: float = 0.0  # > 0 keeps an EMA of the weights
    ema_eval: bool = True  # validate and report the EMA weights when there is an EMA (else the raw ones)
    eval_every: int = bounded(1, minimum=1)
    progress: bool = True
    log_every: int = bounded(20, minimum=1)  # steps between TensorBoard step scalars
    accumulate_steps: int = 1  # micro-batches (of data.batch_size each) per optimiser step

    def __post_init__(self) -> None:
        if self.accumulate_steps < 1:
            raise LongtailError(
                f"train.accumulate_steps must be at least 1 (micro-batches per optimiser step), got "
                f"{self.accumulate_steps}."
            )


@dataclass
class EvalConfig:
    tau_norm: float | None = None  # post-hoc tau-normalisation of the classifier, also reported
    logit_adjust_tau: float | None = None  # post-hoc logit adjustment, also reported
    iif: bool = False  # post-hoc IIF adjustment (+ log((N - n_c) / n_c), the APA reference's), also reported


@dataclass
class RunConfig:
    description: str = ""
    expected: dict[str, Any] = field(default_factory=dict)  # published results, shown next to ours
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    stages: list[StageConfig] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    budget: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- recipes and overrides


def list_recipes() -> dict[str, str]:
    """Recipe name -> its description, for every recipe shipped in the package (``_name`` files are bases
    that recipes inherit from, not recipes)."""
    return {
        path.stem: load_recipe(path.stem).get("description", "")
        for path in sorted(RECIPES_DIR.glob("*.yaml"))
        if not path.stem.startswith("_")
    }


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """The recipe's nested dict with its ``base:`` chain merged in (the recipe's own keys win)."""
    return _load_recipe(name_or_path, seen=())


def _load_recipe(name_or_path: str, seen: tuple[str, ...]) -> dict[str, Any]:
    path = _recipe_path(name_or_path)
    if str(path) in seen:
        raise LongtailError(f"Recipe '{name_or_path}' inherits from itself through 'base:'.")
    recipe = _read_yaml(path)
    bases = recipe.pop("base", None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = deep_merge(merged, _load_recipe(base, seen + (str(path),)))
    return deep_merge(merged, recipe)


def _recipe_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or len(candidate.parts) > 1:
        if not candidate.is_file():
            raise LongtailError(
                f"Recipe file '{name_or_path}' does not exist. Give the path of a YAML recipe, or the name of a "
                "shipped one (`longtail recipes`)."
            )
        return candidate
    path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise unknown_recipe_error(name_or_path)
    return path


def unknown_recipe_error(name: str) -> LongtailError:
    names = sorted(list_recipes())
    guess = closest(name, names)
    hint = f" Did you mean '{guess}'?" if guess else ""
    return LongtailError(
        f"Unknown recipe '{name}'.{hint} Run `longtail recipes` for the list, or pass a path to a YAML file."
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise LongtailError(f"Recipe {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise LongtailError(f"Recipe {path} must be a mapping of keys to values.")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``: non-empty mappings merge key by key; everything else, an empty
    mapping included (``expected: {}`` clears an inherited one), replaces the base's value."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and value and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``['optim.lr=0.05', 'stages.0.epochs=3']`` -> a nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise LongtailError(f"Override '{item}' must look like key.sub=value (e.g. optim.lr=0.05).")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LongtailError(f"Override '{item}' sets a key inside '{part}', which already has a value.")
        node[leaf] = value
    return nested


def apply_overrides(recipe: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge parsed overrides; numeric keys index into lists (``stages.0.epochs=3``)."""
    merged = copy.deepcopy(recipe)
    _apply(merged, overrides, prefix="")
    return merged


def _apply(node: Any, overrides: dict[str, Any], prefix: str) -> None:
    for key, value in overrides.items():
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise LongtailError(f"'{prefix}{key}': '{prefix.rstrip('.')}' has {len(node)} entries.")
            key = int(key)  # type: ignore[assignment]
            current = node[key]
        else:
            current = node.get(key)
        if isinstance(value, dict) and isinstance(current, (dict, list)):
            _apply(current, value, prefix=f"{prefix}{key}.")
        else:
            node[key] = value


# ---------------------------------------------------------------- validation


def from_dict(data: dict[str, Any]) -> RunConfig:
    """A validated RunConfig; unknown keys and wrongly typed values raise LongtailError."""
    config = _build(RunConfig, data, prefix="")
    for index in range(len(config.stages)):
        stage_optim(config, index)
        stage_schedule(config, index)
    return config


def stage_optim(config: RunConfig, index: int) -> OptimConfig:
    """The optimiser settings of extra stage ``index``: the run's, updated by the stage's overrides."""
    overrides = config.stages[index].optim
    return _build(OptimConfig, {**dataclasses.asdict(config.optim), **overrides}, prefix=f"stages.{index}.optim.")


def stage_schedule(config: RunConfig, index: int) -> ScheduleConfig:
    """The schedule of extra stage ``index``: ScheduleConfig defaults updated by the stage's overrides."""
    stage = config.stages[index]
    if "epochs" in stage.schedule:
        raise LongtailError(f"Set 'stages.{index}.epochs', not 'stages.{index}.schedule.epochs'.")
    return _build(ScheduleConfig, {**stage.schedule, "epochs": stage.epochs}, prefix=f"stages.{index}.schedule.")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise LongtailError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {data!r}.")
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in hints:
            raise _unknown_key_error(cls, f"{prefix}{key}", key, prefix)
    values = {key: _convert(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
    limits = {item.name: item.metadata for item in dataclasses.fields(cls)}
    for key, value in values.items():
        _check_limits(value, f"{prefix}{key}", **limits[key])
    return cls(**values)


def _check_limits(value: Any, key: str, minimum: float | None = None, below: float | None = None) -> None:
    for item in value if isinstance(value, list) else [value]:
        if item is None:
            continue
        if (minimum is not None and item < minimum) or (below is not None and item >= below):
            allowed = [f">= {minimum:g}"] if minimum is not None else []
            allowed += [f"< {below:g}"] if below is not None else []
            raise LongtailError(f"Config key '{key}' must be {' and '.join(allowed)}, got {value!r}.")


def _unknown_key_error(cls: type, dotted: str, key: str, prefix: str) -> LongtailError:
    valid = [f"{prefix}{name}" for name in typing.get_type_hints(cls)]
    guess = closest(dotted, valid)
    hint = f" Did you mean '{guess}'?" if guess else ""
    return LongtailError(f"Unknown config key '{dotted}'.{hint} Valid keys: {', '.join(valid)}.")


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [option for option in options if option is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, key)
        for option in inner:
            with contextlib.suppress(LongtailError):
                return _convert(option, value, key)
        names = " or ".join(_type_name(option) for option in inner)
        raise _type_error(key, value, names + (" or null" if type(None) in options else ""))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.")
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(key, value, f"a list of {_type_name(typing.get_args(hint)[0])}")
        (inner,) = typing.get_args(hint)
        return [_convert(inner, item, f"{key}.{index}") for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, "a mapping")
        return copy.deepcopy(value)
    return _convert_scalar(hint, value, key)


def _convert_scalar(hint: type, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    raise _type_error(key, value, _type_name(hint))


def _type_name(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if typing.get_origin(hint) is dict:
        return "a mapping"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _type_error(key: str, value: Any, expected: str) -> LongtailError:
    return LongtailError(f"Config key '{key}' must be {expected}, got {value!r} ({type(value).__name__}).")


# ---------------------------------------------------------------- budget and comparison


@dataclass(frozen=True)
class FactoryArgs:
    """One ``args`` mapping of a config: where it sits (``stages.0.loss.args``), the kind and the registered
    name of the factory it is passed to (``loss``, ``ldam``), and the mapping itself."""

    key: str
    kind: str
    name: str
    args: dict[str, Any]


def factory_args(config: RunConfig) -> list[FactoryArgs]:
    """Every ``args`` mapping of ``config``; kinds: ``method``, ``model``, ``loss``, ``dataset``."""
    stage_losses = [
        FactoryArgs(f"stages.{index}.loss.args", "loss", stage.loss.name, stage.loss.args)
        for index, stage in enumerate(config.stages)
        if stage.loss is not None
    ]
    return [
        FactoryArgs("method.args", "method", config.method.name, config.method.args),
        FactoryArgs("model.args", "model", config.model.name, config.model.args),
        FactoryArgs("loss.args", "loss", config.loss.name, config.loss.args),
        *stage_losses,
        FactoryArgs("data.args", "dataset", config.data.name, config.data.args),
    ]


# The options of an args mapping's factory that count epochs, as the factory declares them.
EpochArgs = Callable[[FactoryArgs], Collection[str]]


def total_epochs(config: RunConfig) -> int:
    return config.schedule.epochs + sum(stage.epochs for stage in config.stages)


def apply_budget(config: RunConfig, epoch_args: EpochArgs) -> RunConfig:
    """Compress every epoch-valued key by budget / total epochs (see the module docstring); ``epoch_args``
    names the epoch-valued options of each ``args`` mapping (``longtail.methods.recipes.declared_epoch_args``)."""
    if config.budget is None or config.budget < 1:
        raise LongtailError(f"Config key 'budget' must be a positive number of epochs, got {config.budget!r}.")
    scale = config.budget / total_epochs(config)
    data = config.to_dict()
    data["schedule"]["epochs"] = _scale_value(config.schedule.epochs, scale)
    _scale_within(data["schedule"], config.schedule.epochs, data["schedule"]["epochs"])
    for stage, original in zip(data["stages"], config.stages, strict=True):
        stage["epochs"] = max(original.min_epochs, _scale_value(original.epochs, scale))
        _scale_within(stage["schedule"], original.epochs, stage["epochs"])
    compressed = from_dict(data)
    for mapping in factory_args(compressed):  # from_dict copied each mapping: updating it changes no other config
        for key in epoch_args(mapping):
            if key in mapping.args:
                mapping.args[key] = _scale_value(mapping.args[key], scale)
    return compressed


def _scale_within(schedule: dict[str, Any], epochs: int, scaled_epochs: int) -> None:
    """Scale a schedule's warm-up and milestones from ``epochs`` to ``scaled_epochs``, keeping what lay inside
    the schedule inside it: a warm-up shorter than the schedule leaves at least one epoch after it (else a
    one-epoch stage would warm up and never decay), and a milestone before the end still fires, after the
    first epoch (a one-epoch schedule runs at its base lr)."""
    scale = scaled_epochs / epochs
    if schedule.get("warmup_epochs"):
        warmup = schedule["warmup_epochs"]
        schedule["warmup_epochs"] = min(_scale_value(warmup, scale), scaled_epochs - (warmup < epochs))
    if schedule.get("milestones"):
        schedule["milestones"] = [
            min(_scale_value(milestone, scale), max(scaled_epochs - 1, 1)) if milestone < epochs else scaled_epochs
            for milestone in schedule["milestones"]
        ]


def _scale_value(value: Any, scale: float) -> Any:
    """``value * scale`` rounded half up; a non-zero epoch count stays at least 1."""
    if isinstance(value, list):
        return [_scale_value(item, scale) for item in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return max(1, math.floor(value * scale + 0.5))
    return value


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}`` (lists of mappings are indexed: ``stages.0.epochs``)."""
    if isinstance(data, dict) and data:
        items = data.items()
    elif isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        items = ((str(index), item) for index, item in enumerate(data))
    else:
        return {prefix.rstrip("."): data}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts, ignoring RUNTIME_KEYS."""
    old_flat, new_flat = flatten(old), flatten(new)
    keys = sorted(set(old_flat) | set(new_flat))
    return [
        key
        for key in keys
        if old_flat.get(key) != new_flat.get(key) and not any(key == r or key.startswith(r + ".") for r in RUNTIME_KEYS)
    ]


def dump(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
