"""Name → class registries for components (backbones, methods, encoders, LLM backends)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from intentrec.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests that register a throwaway component); unknown names are an error."""
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(f"unknown {self.kind} '{name}' (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_modules(package: str, names: Iterable[str]) -> None:
    """Import ``package.<name>`` for each name (modules that register components on import).

    Every listed module ships with intentrec, so a failing import is raised: a broken component
    never silently disappears from its registry. (Optional third-party packages are imported inside
    the component that needs them, which then says what to install.)
    """
    for name in names:
        importlib.import_module(f"{package}.{name}")
