"""The slide back-end registry: back-ends register themselves with a decorator and metadata."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


_BACKENDS: dict[str, BackendInfo] = {}


def register_backend(
    name: str, *, priority: int, kinds: set[FileKind], formats: str
) -> Callable[[type[SlideReader]], type[SlideReader]]:
    """Class decorator adding a :class:`SlideReader` subclass to the registry under ``name``."""

    def decorate(cls: type[SlideReader]) -> type[SlideReader]:
        if name in _BACKENDS:
            raise ValueError(f"slide back-end {name!r} is already registered")
        cls.backend_name = name
        _BACKENDS[name] = BackendInfo(
            name=name, reader=cls, priority=priority, kinds=frozenset(kinds), formats=formats
        )
        return cls

    return decorate


def list_backends() -> list[BackendInfo]:
    """All registered back-ends, in the order they are tried."""
    return sorted(_BACKENDS.values(), key=lambda info: info.priority)


def get_backend(name: str) -> BackendInfo:
    """The back-end registered as ``name``.

    Raises:
        ValueError: no such back-end; the message lists the registered ones.
    """
    try:
        return _BACKENDS[name]
    except KeyError:
        known = ", ".join(info.name for info in list_backends())
        raise ValueError(f"unknown slide back-end {name!r}; choose one of: {known}") from None
