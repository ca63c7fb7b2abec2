"""The perturbation registry: severity-graded tile perturbations by name, with their scales.

The registry imports none of its entries: :mod:`histoguard.augment._perturbations` and
:mod:`histoguard.augment._macenko_jitter` register the built-in perturbations, and the package
``__init__`` imports them for that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histoguard.core._registry import Registry
from histoguard.errors import AuditDataError, ConfigError

#: ``(tiles (B, H, W, 3) uint8, level, rng) -> (B, H, W, 3) uint8``.
PerturbationFunction = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True, kw_only=True)
class PerturbationInfo:
    """A perturbation and its severity scale.

    Attributes:
        name: registry name.
        unit: what ``levels`` measure, in words a report can print.
        levels: the physical parameter at severities 1, 2, …; severity 0 is the identity.
        description: one line for listings.
        stochastic: draws randomness (per tile, from the seed and the tile's index).
        function: ``(tiles, level, rng) -> tiles``.
    """

    name: str
    unit: str
    levels: tuple[float, ...]
    description: str = ""
    stochastic: bool = False
    function: PerturbationFunction = field(repr=False, compare=False)

    @property
    def max_severity(self) -> int:
        """The highest severity (the number of levels)."""
        return len(self.levels)

    def level(self, severity: int) -> float:
        """The physical parameter at ``severity`` (1..max_severity), in :attr:`unit`.

        Raises:
            AuditDataError: severity outside 1..max_severity.
        """
        self._check_severity(severity, lowest=1)
        return self.levels[severity - 1]

    def apply(
        self, tiles: np.ndarray, severity: int, *, seed: int = 0, first_index: int = 0
    ) -> np.ndarray:
        """Perturb ``(B, H, W, 3)`` uint8 tiles at ``severity`` (0 returns a copy).

        Args:
            tiles: ``(B, H, W, 3)`` uint8 RGB.
            severity: 0..max_severity.
            seed: non-negative; stochastic perturbations draw tile ``i``'s randomness from
                ``default_rng([seed, first_index + i])``.
            first_index: position of ``tiles[0]`` in the full set, when perturbing it in
                batches, so results do not depend on the batch size.

        Returns:
            ``(B, H, W, 3)`` uint8, a new array.

        Raises:
            AuditDataError: bad tile array, severity out of range, negative seed, or the
                function returned another shape or dtype.
        """
        check_tiles(tiles, allow_empty=True)
        self._check_severity(severity, lowest=0)
        if seed < 0 or first_index < 0:
            raise AuditDataError(f"seed and first_index must be >= 0, got {seed}, {first_index}")
        if severity == 0 or len(tiles) == 0:
            return tiles.copy()
        level = self.levels[severity - 1]
        if not self.stochastic:
            out = self.function(tiles, level, np.random.default_rng(seed))
        else:
            out = np.concatenate(
                [
                    self.function(tiles[i : i + 1], level, np.random.default_rng([seed, index]))
                    for i, index in enumerate(range(first_index, first_index + len(tiles)))
                ]
            )
        if out.shape != tiles.shape or out.dtype != np.uint8:
            raise AuditDataError(
                f"perturbation {self.name!r} returned {out.shape} {out.dtype} for tiles "
                f"{tiles.shape} uint8; it must keep shape and dtype"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible metadata (everything but the function)."""
        return {
            "name": self.name,
            "unit": self.unit,
            "levels": list(self.levels),
            "description": self.description,
            "stochastic": self.stochastic,
        }

    def _check_severity(self, severity: int, *, lowest: int) -> None:
        if not lowest <= severity <= self.max_severity:
            raise AuditDataError(
                f"severity {severity} is outside {lowest}..{self.max_severity} for perturbation "
                f"{self.name!r}; choose a severity in that range"
            )


def check_tiles(tiles: np.ndarray, what: str = "tiles", *, allow_empty: bool = False) -> None:
    """Check a ``(B, H, W, 3)`` uint8 RGB tile batch (non-empty unless ``allow_empty``).

    Raises:
        AuditDataError: another shape or dtype, or an empty batch; ``what`` names the input.
    """
    if not isinstance(tiles, np.ndarray) or tiles.ndim != 4 or tiles.shape[3] != 3:
        shape = getattr(tiles, "shape", None)
        raise AuditDataError(f"{what} must be a (B, H, W, 3) RGB array, got shape {shape}")
    if tiles.dtype != np.uint8 or (len(tiles) == 0 and not allow_empty):
        raise AuditDataError(
            f"{what} must be a non-empty uint8 array (0–255 RGB), got {len(tiles)} tiles of "
            f"{tiles.dtype}; convert with (x * 255).round().astype(np.uint8)"
        )


#: Every registered perturbation by name.
PERTURBATIONS: Registry[PerturbationInfo] = Registry("perturbation")


def register_perturbation(
    name: str,
    *,
    unit: str,
    levels: tuple[float, ...],
    description: str = "",
    stochastic: bool = False,
) -> Callable[[PerturbationFunction], PerturbationFunction]:
    """Register ``(tiles (B, H, W, 3) uint8, level, rng) -> (B, H, W, 3) uint8`` under ``name``.

    ``levels`` are the parameter values (in ``unit``) at severities 1, 2, …; the function is
    never called for severity 0. Stochastic functions are called one tile at a time.

    Raises:
        ConfigError: the name is taken, or no levels are given (also a ``ValueError``).
    """

    def decorate(function: PerturbationFunction) -> PerturbationFunction:
        if not levels:
            raise ConfigError(f"perturbation {name!r} needs at least one level")
        PERTURBATIONS.add(
            name,
            PerturbationInfo(
                name=name,
                unit=unit,
                levels=tuple(float(v) for v in levels),
                description=description,
                stochastic=stochastic,
                function=function,
            ),
        )
        return function

    return decorate


def list_perturbations() -> list[PerturbationInfo]:
    """Every registered perturbation, sorted by name."""
    return list(PERTURBATIONS.entries())


def get_perturbation(name: str) -> PerturbationInfo:
    """The registry entry for ``name``.

    Raises:
        UnknownNameError: no such perturbation; the message lists the registered ones and the
            closest match.
    """
    return PERTURBATIONS.get(name)
