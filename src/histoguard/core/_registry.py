"""One registry type for everything histoguard looks up by name.

Slide back-ends, encoders, MIL models, perturbations and stain normalisation methods are each a
:class:`Registry` of metadata entries. A registry holds entries and nothing else: it never
imports the modules that define them. Each room's package ``__init__`` imports its built-in
modules for their registration side effect, so the registry is full as soon as the room is.

An unknown name raises :class:`~histoguard.errors.UnknownNameError` (or the subclass a registry
was built with, e.g. :class:`~histoguard.errors.UnknownEncoderError`), whose message lists the
registered names and the closest match.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from histoguard.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of type ``T`` (a metadata record) by name.

    Args:
        kind: what the registry holds, in words for messages (``"encoder"``, ``"MIL model"``).
        error: the :class:`UnknownNameError` subclass :meth:`get` raises.
        case_sensitive: False to fold names to lower case on :meth:`add` and lookup.

    Example:
        >>> colours: Registry[int] = Registry("colour")
        >>> colours.add("red", 1)
        1
        >>> colours.names()
        ('red',)
    """

    def __init__(
        self,
        kind: str,
        *,
        error: type[UnknownNameError] = UnknownNameError,
        case_sensitive: bool = True,
    ) -> None:
        self.kind = kind
        self._error = error
        self._case_sensitive = case_sensitive
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name`` and return it.

        Raises:
            ConfigError: ``name`` is empty or already registered (also a ``ValueError``).
        """
        key = self._key(name)
        if not key:
            raise ConfigError(f"a {self.kind} needs a non-empty name")
        if key in self._entries:
            raise ConfigError(f"{self.kind} {name!r} is already registered; choose another name")
        self._entries[key] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry registered under ``name``.

        Raises:
            UnknownNameError: (or the registry's subclass) no such name; the message lists the
                registered names and the closest match.
        """
        try:
            return self._entries[self._key(name)]
        except KeyError:
            raise self._error(self.kind, name, self._entries) from None

    def check(self, name: str, *, field: str) -> T:
        """The entry for a configuration field's value ``name``.

        Raises:
            ConfigError: no such name; the message names ``field`` and, as
                :meth:`get` does, the registered names and the closest match.
        """
        try:
            return self.get(name)
        except UnknownNameError as error:
            raise ConfigError(f"{field}: {error}") from error

    def names(self) -> tuple[str, ...]:
        """Every registered name, sorted."""
        return tuple(sorted(self._entries))

    def entries(self) -> tuple[T, ...]:
        """Every entry, sorted by name."""
        return tuple(self._entries[name] for name in self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={list(self.names())})"

    def _key(self, name: str) -> str:
        return name if self._case_sensitive else name.lower()
