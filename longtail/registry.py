"""A name -> factory registry (timm-style), shared by models, datasets, losses and methods.

A factory declares which of its options count epochs in an ``epoch_args`` attribute (a class attribute of a
loss, method or model class, e.g. ``epoch_args = ("drw_epoch",)``): ``budget=E``, which compresses a recipe's
schedule, scales exactly those (``Registry.epoch_args``); an option that is not declared keeps its value.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar

from longtail.errors import LongtailError, closest, unknown_name_error

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Maps names to factories; unknown names raise a LongtailError suggesting the closest name.

    ``reserved`` are the parameters that the library passes to every factory itself (a model's
    ``num_classes``), so they are not options that a config sets."""

    def __init__(self, kind: str, reserved: Collection[str] = ()) -> None:
        self.kind = kind
        self.reserved = tuple(reserved)
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[F], F]:
        def decorator(factory: F) -> F:
            key = name or factory.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise unknown_name_error(self.kind, name, self._entries)
        return self._entries[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def check_options(self, name: str, options: Iterable[str], owner: str | None = None) -> None:
        """Raise a LongtailError naming the ``options`` that ``name``'s factory does not take (see
        ``check_options``); ``owner`` starts the message, by default e.g. "Loss 'ldam'"."""
        check_options(owner or f"{self.kind.capitalize()} '{name}'", self.get(name), options, self.reserved)

    def epoch_args(self, name: str) -> tuple[str, ...]:
        """The options of ``name`` that count epochs, as its factory declares them (see the module docstring)."""
        factory = self.get(name)
        while isinstance(factory, functools.partial):
            factory = factory.func
        return tuple(getattr(factory, "epoch_args", ()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def factory_options(factory: Callable[..., Any], reserved: Collection[str] = ()) -> list[str] | None:
    """The keyword options of ``factory``: its parameters less ``reserved``, or None when it takes ``**kwargs``."""
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return [name for name in parameters if name not in reserved]


def check_options(
    owner: str, factory: Callable[..., Any], options: Iterable[str], reserved: Collection[str] = ()
) -> None:
    """Raise a LongtailError naming the ``options`` that ``factory`` does not take (suggesting the closest
    valid one), unless it takes ``**kwargs``. ``owner`` starts the message (e.g. "Model 'resnet32'");
    ``reserved`` are parameters the library fills in itself, so they are not listed as options."""
    valid = factory_options(factory, reserved)
    if valid is not None:
        reject_unknown_options(owner, options, valid)


def reject_unknown_options(owner: str, options: Iterable[str], valid: Sequence[str]) -> None:
    """Raise a LongtailError naming the ``options`` outside ``valid``, suggesting the closest valid one."""
    unknown = [option for option in options if option not in valid]
    if unknown:
        guess = closest(unknown[0], valid)
        hint = f" Did you mean '{guess}'?" if guess else ""
        raise LongtailError(
            f"{owner} has no option {', '.join(map(repr, unknown))}.{hint} Valid options: {', '.join(valid) or 'none'}."
        )
