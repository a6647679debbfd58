"""One registry type for everything atrous finds by name: models, losses, datasets, training
features (and loggers and engines as they come). A registry maps names to entries, refuses a
second entry under a taken name, and answers an unknown name with one error that lists the
known ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from atrous.errors import UserError

T = TypeVar("T")


class UnknownName(UserError, ValueError):
    """A name no entry of a registry carries: "unknown model 'x'; choose one of: a, b"."""


class Registry(Generic[T]):
    """Entries by name, in the order they were added. `kind` names them in errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._keys: dict[str, object] = {}

    def add(self, name: str, entry: T, *, key: object = None) -> T:
        """Register `entry` under `name`. Registering the same thing again (`key`, by default
        the entry: a module imported twice) is allowed; another thing under a taken name is not."""
        key = entry if key is None else key
        if name in self._keys and self._keys[name] is not key:
            raise ValueError(f"a {self.kind} named '{name}' is already registered")
        self._entries[name], self._keys[name] = entry, key
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self._entries)}")
        return self._entries[name]

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)
        self._keys.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    def values(self) -> Iterator[T]:
        return iter(self._entries.values())
