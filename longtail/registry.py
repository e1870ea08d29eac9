"""A name -> factory registry (timm-style), shared by models, datasets, losses and methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from longtail.errors import unknown_name_error

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
