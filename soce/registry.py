"""Registries: a config group's options by name, each the class that holds its settings and
does its work. Adding an option is one registered class (and its YAML file); nothing else
names it."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from soce.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> classes of one config group (`group`: its name on the command line)."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """A class decorator: the class is this group's option `name` (its schema's key)."""
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.group} {name!r} is registered twice")
            self._entries[name] = entry
            return entry
        return add

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"{self.group}={name!r}: expected one of {', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self):
        return self._entries.items()
