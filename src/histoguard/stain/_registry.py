"""Stain normalisers by name: one protocol, one registry of fitting functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from histoguard.core._registry import Registry


class StainNormalizer(Protocol):
    """Anything that maps ``(B, H, W, 3)`` or ``(H, W, 3)`` uint8 tiles to the same, normalised."""

    def transform(self, tiles: np.ndarray) -> np.ndarray:
        """Normalise tiles; same shape and dtype out."""
        ...


#: ``reference (H, W, 3) uint8 RGB -> fitted normaliser``.
StainFitter = Callable[[np.ndarray], StainNormalizer]


@dataclass(frozen=True, kw_only=True)
class StainMethodInfo:
    """What the registry knows about a stain normalisation method.

    Attributes:
        name: registry name (``--stain-normalize NAME``), lower case.
        description: one line for listings.
        fit: fits a normaliser to a ``(H, W, 3)`` uint8 RGB reference image.
    """

    name: str
    description: str = ""
    fit: StainFitter = field(repr=False, compare=False)


#: Every stain normalisation method by name (case-insensitive); ``histoguard.stain`` registers
#: the built-in ones.
STAIN_REGISTRY: Registry[StainMethodInfo] = Registry("stain normalisation", case_sensitive=False)


def register_stain_method(name: str, fit: StainFitter, *, description: str = "") -> StainFitter:
    """Register ``fit`` (reference ``(H, W, 3)`` uint8 -> normaliser) under ``name``.

    Names are case-insensitive and stored in lower case.

    Raises:
        ConfigError: ``name`` is already registered (also a ``ValueError``).
    """
    STAIN_REGISTRY.add(name, StainMethodInfo(name=name.lower(), description=description, fit=fit))
    return fit


def stain_normalizer(method: str, reference: np.ndarray) -> StainNormalizer:
    """A normaliser of ``method`` fitted to ``reference``.

    Args:
        method: a registered method, e.g. ``"macenko"`` or ``"reinhard"`` (case-insensitive;
            see :data:`STAIN_METHODS`).
        reference: ``(H, W, 3)`` uint8 RGB reference image.

    Raises:
        UnknownNameError: unknown method; the message lists the registered ones and the
            closest match.
        ValueError: a reference the method cannot fit (see its ``fit``).
    """
    return STAIN_REGISTRY.get(method).fit(reference)
