"""A name -> factory registry (timm-style), shared by models, datasets, losses and methods."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

from longtail.errors import LongtailError, closest, unknown_name_error

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Maps names to factories; unknown names raise a LongtailError suggesting the closest name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
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

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def check_options(
    owner: str, factory: Callable[..., Any], options: Iterable[str], reserved: Collection[str] = ()
) -> None:
    """Raise a LongtailError naming the ``options`` that ``factory`` does not take (suggesting the closest
    valid one), unless it takes ``**kwargs``. ``owner`` starts the message (e.g. "Model 'resnet32'");
    ``reserved`` are parameters the library fills in itself, so they are not listed as options."""
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    valid = [name for name in parameters if name not in reserved]
    unknown = [option for option in options if option not in valid]
    if unknown:
        guess = closest(unknown[0], valid)
        hint = f" Did you mean '{guess}'?" if guess else ""
        raise LongtailError(
            f"{owner} has no option {', '.join(map(repr, unknown))}.{hint} Valid options: {', '.join(valid) or 'none'}."
        )
