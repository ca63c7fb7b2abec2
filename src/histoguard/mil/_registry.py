"""The MIL model registry: classes registered by decorator, with the metadata users need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from histoguard.mil._base import MILModel

ModelT = TypeVar("ModelT", bound=type[MILModel])


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What the registry knows about a MIL model.

    Attributes:
        name: registry name, as passed to :func:`build_model`.
        description: one line for listings.
        citation: the paper the model follows.
        cls: the :class:`MILModel` subclass; its keyword arguments are the hyperparameters.
    """

    name: str
    description: str
    citation: str
    cls: type[MILModel] = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, str]:
        """JSON-compatible metadata (everything but the class)."""
        return {"name": self.name, "description": self.description, "citation": self.citation}


_MODELS: dict[str, ModelInfo] = {}


def register_model(name: str, *, description: str, citation: str) -> Callable[[ModelT], ModelT]:
    """Register a :class:`MILModel` subclass under ``name``.

    The class must accept ``(in_dim: int, n_classes: int, **hyperparameters)`` and pass the
    hyperparameters on to ``MILModel.__init__`` so that ``config()`` can rebuild it.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorate(cls: ModelT) -> ModelT:
        if name in _MODELS:
            raise ValueError(f"MIL model {name!r} is already registered")
        cls.registry_name = name
        _MODELS[name] = ModelInfo(name=name, description=description, citation=citation, cls=cls)
        return cls

    return decorate


def list_models() -> list[ModelInfo]:
    """Every registered MIL model, sorted by name."""
    _load_builtins()
    return sorted(_MODELS.values(), key=lambda info: info.name)


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``.

    Raises:
        ValueError: no such model; the message lists the registered ones.
    """
    _load_builtins()
    try:
        return _MODELS[name]
    except KeyError:
        known = ", ".join(sorted(_MODELS))
        raise ValueError(f"unknown MIL model {name!r}; choose one of: {known}") from None


def build_model(name: str, *, in_dim: int, n_classes: int, **kwargs: Any) -> MILModel:
    """Build a registered model with random weights.

    Args:
        name: registry name (see :func:`list_models`).
        in_dim: length D of each instance feature.
        n_classes: number of bag classes C.
        **kwargs: the model's hyperparameters (hidden sizes, dropout, ...).

    Raises:
        ValueError: unknown model name or invalid hyperparameter values.
        TypeError: a hyperparameter the model does not take.
    """
    return get_model_info(name).cls(in_dim=in_dim, n_classes=n_classes, **kwargs)


def _load_builtins() -> None:
    # Imported for their registration side effect, lazily to avoid an import cycle.
    from histoguard.mil import _abmil, _clam, _dsmil, _pooling, _topk, _transmil  # noqa: F401
