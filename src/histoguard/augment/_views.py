"""Augmented views of tiles: a chain of registered perturbations, seeded per view and per tile.

An augmentation is written ``NAME`` or ``NAME:SEVERITY`` (``hed_jitter:3``); without a severity
it is applied at :data:`DEFAULT_SEVERITY` (or the perturbation's highest, for the single-severity
D4 transforms). View ``k`` of a tile set applies the chain in the order given, step ``j`` seeded
with :func:`view_seed` ``(seed, k, j)``; each stochastic step then draws tile ``i``'s randomness
from that seed and ``i`` (see :meth:`PerturbationInfo.apply`), so a view does not depend on the
batch it is computed in, and a rerun gives identical pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from histoguard.augment._registry import PERTURBATIONS
from histoguard.errors import ConfigError

#: Severity of an augmentation given without one (``hed_jitter`` means ``hed_jitter:2``).
DEFAULT_SEVERITY = 2


@dataclass(frozen=True, kw_only=True)
class Augmentation:
    """One step of an augmentation chain.

    Attributes:
        name: a registered perturbation (``histoguard.augment.list_perturbations()``).
        severity: 1..its highest severity.
    """

    name: str
    severity: int

    def __post_init__(self) -> None:
        info = PERTURBATIONS.check(self.name, field="augment")
        if not 1 <= self.severity <= info.max_severity:
            raise ConfigError(
                f"augment: severity {self.severity} is outside 1..{info.max_severity} for "
                f"{self.name!r}; write {self.name}:S with S in that range"
            )

    @classmethod
    def parse(cls, text: str) -> Augmentation:
        """``"NAME"`` or ``"NAME:SEVERITY"`` -> an :class:`Augmentation`.

        Raises:
            ConfigError: unknown name (the message lists the registered ones), a severity that
                is not an integer or outside the perturbation's scale.
        """
        name, _, severity = text.strip().partition(":")
        info = PERTURBATIONS.check(name, field="augment")
        if not severity:
            return cls(name=name, severity=min(DEFAULT_SEVERITY, info.max_severity))
        try:
            level = int(severity)
        except ValueError:
            raise ConfigError(
                f"augment: {text!r} has severity {severity!r}; write NAME or NAME:S with an "
                f"integer S in 1..{info.max_severity}"
            ) from None
        return cls(name=name, severity=level)

    def __str__(self) -> str:
        return f"{self.name}:{self.severity}"


def parse_augmentations(specs: Sequence[str]) -> tuple[Augmentation, ...]:
    """Parse ``NAME[:SEVERITY]`` strings, in order (see :meth:`Augmentation.parse`).

    Raises:
        ConfigError: a spec that does not parse.
    """
    return tuple(Augmentation.parse(spec) for spec in specs)


def view_seed(seed: int, view: int, step: int = 0) -> int:
    """The seed of chain step ``step`` in augmented view ``view`` of a run seeded ``seed``.

    Independent streams per (seed, view, step) from numpy's ``SeedSequence``; all non-negative.
    """
    state = np.random.SeedSequence([seed, view, step]).generate_state(1, dtype=np.uint32)
    return int(state[0])


def augment_view(
    tiles: np.ndarray,
    augmentations: Sequence[Augmentation],
    *,
    seed: int,
    view: int,
    indices: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Augmented view ``view`` of ``(B, H, W, 3)`` uint8 tiles.

    Args:
        tiles: ``(B, H, W, 3)`` uint8 RGB.
        augmentations: the chain, applied in order.
        seed: the run's seed (non-negative).
        view: which view (0, 1, …); each view draws other randomness.
        indices: ``(B,)`` each tile's position among all of a slide's tiles (default
            ``0..B-1``), so a tile's view does not depend on how, or with which failed reads,
            the tiles were batched.

    Returns:
        ``(B, H, W, 3)`` uint8, a new array (a copy when the chain is empty).

    Raises:
        AuditDataError: bad tile array (see :meth:`PerturbationInfo.apply`).
    """
    positions = np.arange(len(tiles)) if indices is None else np.asarray(indices, np.int64)
    if positions.shape != (len(tiles),):
        raise ConfigError(f"{len(positions)} tile indices for {len(tiles)} tiles")
    # Runs of consecutive indices: apply() numbers tiles from first_index on.
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    out = tiles.copy()
    if not len(out):
        return out
    for step, augmentation in enumerate(augmentations):
        info = PERTURBATIONS.get(augmentation.name)
        step_seed = view_seed(seed, view, step)
        runs = [
            info.apply(out[run], augmentation.severity, seed=step_seed, first_index=first)
            for run, first in _runs(positions, breaks)
        ]
        out = np.concatenate(runs)
    return out


def _runs(positions: np.ndarray, breaks: np.ndarray) -> list[tuple[slice, int]]:
    """Slices of consecutive positions, each with its first position."""
    starts = [0, *breaks.tolist()]
    ends = [*breaks.tolist(), len(positions)]
    return [(slice(a, b), int(positions[a])) for a, b in zip(starts, ends, strict=True)]
