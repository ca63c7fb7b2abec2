"""The MIL model registry: classes registered by decorator, with the metadata users need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from histoguard.core._registry import Registry
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


#: Every MIL model by name; the package ``__init__`` imports the built-in modules that fill it.
MODELS: Registry[ModelInfo] = Registry("MIL model")


def register_model(name: str, *, description: str, citation: str) -> Callable[[ModelT], ModelT]:
    """Register a :class:`MILModel` subclass under ``name``.

    The class must accept ``(in_dim: int, n_classes: int, **hyperparameters)`` and pass the
    hyperparameters on to ``MILModel.__init__`` so that ``config()`` can rebuild it.

    Raises:
        ConfigError: ``name`` is already registered (also a ``ValueError``).
    """

    def decorate(cls: ModelT) -> ModelT:
        MODELS.add(name, ModelInfo(name=name, description=description, citation=citation, cls=cls))
        cls.registry_name = name
        return cls

    return decorate


def list_models() -> list[ModelInfo]:
    """Every registered MIL model, sorted by name."""
    return list(MODELS.entries())


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``.

    Raises:
        UnknownNameError: no such model; the message lists the registered ones and the
            closest match.
    """
    return MODELS.get(name)


def build_model(name: str, *, in_dim: int, n_classes: int, **kwargs: Any) -> MILModel:
    """Build a registered model with random weights.

    Args:
        name: registry name (see :func:`list_models`).
        in_dim: length D of each instance feature.
        n_classes: number of bag classes C.
        **kwargs: the model's hyperparameters (hidden sizes, dropout, ...).

    Raises:
        UnknownNameError: unknown model name.
        ValueError: invalid hyperparameter values.
        TypeError: a hyperparameter the model does not take.
    """
    return get_model_info(name).cls(in_dim=in_dim, n_classes=n_classes, **kwargs)
