"""The slide back-end registry: back-ends register themselves with a decorator and metadata."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from histoguard.core._registry import Registry
from histoguard.slide._preflight import FileKind
from histoguard.slide._reader import SlideReader


@dataclass(frozen=True, kw_only=True)
class BackendInfo:
    """What the registry knows about a back-end.

    Attributes:
        name: the name users pass as ``backend=`` / ``--backend``.
        reader: the :class:`SlideReader` subclass.
        priority: lower is tried first when no back-end is forced.
        kinds: file kinds (from the preflight sniff) the back-end can attempt.
        formats: human-readable list of formats, for ``--help`` and error messages.
    """

    name: str
    reader: type[SlideReader]
    priority: int
    kinds: frozenset[FileKind]
    formats: str


#: Every back-end by name; the package ``__init__`` imports the back-end modules that fill it.
BACKENDS: Registry[BackendInfo] = Registry("slide back-end")


def register_backend(
    name: str, *, priority: int, kinds: set[FileKind], formats: str
) -> Callable[[type[SlideReader]], type[SlideReader]]:
    """Class decorator adding a :class:`SlideReader` subclass to the registry under ``name``.

    Raises:
        ConfigError: ``name`` is already registered (also a ``ValueError``).
    """

    def decorate(cls: type[SlideReader]) -> type[SlideReader]:
        BACKENDS.add(
            name,
            BackendInfo(
                name=name, reader=cls, priority=priority, kinds=frozenset(kinds), formats=formats
            ),
        )
        cls.backend_name = name
        return cls

    return decorate


def list_backends() -> list[BackendInfo]:
    """All registered back-ends, in the order they are tried."""
    return sorted(BACKENDS.entries(), key=lambda info: info.priority)


def get_backend(name: str) -> BackendInfo:
    """The back-end registered as ``name``.

    Raises:
        UnknownNameError: no such back-end; the message lists the registered ones and the
            closest match.
    """
    return BACKENDS.get(name)
