"""Stain normalisers by name: one protocol, one small registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from histoguard.stain._macenko import MacenkoNormalizer
from histoguard.stain._reinhard import ReinhardNormalizer


class StainNormalizer(Protocol):
    """Anything that maps ``(B, H, W, 3)`` or ``(H, W, 3)`` uint8 tiles to the same, normalised."""

    def transform(self, tiles: np.ndarray) -> np.ndarray:
        """Normalise tiles; same shape and dtype out."""
        ...


_FITTERS: dict[str, Callable[[np.ndarray], StainNormalizer]] = {
    "macenko": MacenkoNormalizer.fit,
    "reinhard": ReinhardNormalizer.fit,
}

#: Names accepted by :func:`stain_normalizer`.
STAIN_METHODS = tuple(sorted(_FITTERS))


def stain_normalizer(method: str, reference: np.ndarray) -> StainNormalizer:
    """A normaliser of ``method`` fitted to ``reference``.

    Args:
        method: one of :data:`STAIN_METHODS` (case-insensitive).
        reference: ``(H, W, 3)`` uint8 RGB reference image.

    Raises:
        ValueError: unknown method, or a reference the method cannot fit (see its ``fit``).
    """
    fit = _FITTERS.get(method.lower())
    if fit is None:
        raise ValueError(
            f"unknown stain normalisation {method!r}; choose one of {', '.join(STAIN_METHODS)}"
        )
    return fit(reference)
