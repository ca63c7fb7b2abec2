"""Tile geometry: which pyramid level to read, how many pixels, and where the tiles go.

Sizes are kept apart on purpose (as in wsidata's ``TileSpec``): the requested tile size at the
target mpp, the size read at the chosen level, and the footprint in level-0 pixels.

At the right and bottom edges a slide rarely ends on a whole tile. ``edge="pad"`` (the default,
as in CLAM and TRIDENT) keeps the partial tiles there, read with white beyond the slide, so
tissue that touches the edge is tiled; ``edge="drop"`` keeps whole tiles only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np

from histoguard.errors import TilingError

#: A level whose mpp is at most this fraction coarser than the target counts as the target's
#: resolution (scanners report e.g. 0.2527 µm/px for a nominal 0.25; level downsamples such as
#: 2.0005 come from odd level-0 sizes).
DEFAULT_MPP_TOLERANCE = 0.01

#: What happens to the partial tiles at a slide's right and bottom edges.
Edge = Literal["pad", "drop"]
EDGE_MODES: tuple[str, ...] = get_args(Edge)


@dataclass(frozen=True, kw_only=True)
class TileSpec:
    """How square tiles at a target resolution map onto one slide's pyramid.

    Attributes:
        mpp: target micrometres per pixel of the output tiles.
        tile_size: output tile side in pixels at ``mpp``.
        overlap: pixels (at ``mpp``) shared by neighbouring tiles.
        slide_mpp: micrometres per level-0 pixel of the slide.
        level: pyramid level the pixels are read from.
        level_downsample: level-0 pixels per pixel of ``level``.
        read_size: side of the region read at ``level``, in pixels of that level.
        level0_tile_size: tile footprint in level-0 pixels (rounded to an integer).
        level0_stride: distance between neighbouring tiles in level-0 pixels (exact, not rounded:
            tile ``i`` starts at ``round(i * level0_stride)`` so errors never accumulate).
    """

    mpp: float
    tile_size: int
    overlap: int
    slide_mpp: float
    level: int
    level_downsample: float
    read_size: int
    level0_tile_size: int
    level0_stride: float

    @classmethod
    def for_slide(
        cls,
        *,
        slide_mpp: float,
        level_downsamples: Sequence[float],
        mpp: float,
        tile_size: int,
        overlap: int = 0,
        tolerance: float = DEFAULT_MPP_TOLERANCE,
    ) -> TileSpec:
        """Plan tiles of ``tile_size`` px at ``mpp`` µm/px on a slide.

        Reads from the coarsest level that is at least as fine as the target (within
        ``tolerance``), then resizes down; never upsamples.

        Raises:
            ValueError: non-positive sizes, or an overlap not smaller than the tile.
            TilingError: the target is finer than the slide's level-0 resolution.
        """
        if tile_size <= 0:
            raise ValueError(f"tile_size must be positive, got {tile_size}")
        if not 0 <= overlap < tile_size:
            raise ValueError(f"overlap must be in [0, tile_size), got {overlap}")
        if not (mpp > 0 and slide_mpp > 0 and math.isfinite(mpp) and math.isfinite(slide_mpp)):
            raise ValueError(f"mpp values must be positive, got mpp={mpp}, slide_mpp={slide_mpp}")
        target_downsample = mpp / slide_mpp
        if target_downsample < 1.0 - tolerance:
            raise TilingError(
                f"tiles at {mpp} µm/px need upsampling: the slide's finest level is "
                f"{slide_mpp:.4g} µm/px. Choose mpp >= {slide_mpp:.4g}"
            )
        limit = target_downsample * (1.0 + tolerance)
        level = max(
            (i for i, ds in enumerate(level_downsamples) if ds <= limit),
            key=lambda i: level_downsamples[i],
        )
        level_downsample = float(level_downsamples[level])
        return cls(
            mpp=mpp,
            tile_size=tile_size,
            overlap=overlap,
            slide_mpp=slide_mpp,
            level=level,
            level_downsample=level_downsample,
            read_size=max(1, round(tile_size * target_downsample / level_downsample)),
            level0_tile_size=max(1, round(tile_size * target_downsample)),
            level0_stride=(tile_size - overlap) * target_downsample,
        )

    @property
    def needs_resize(self) -> bool:
        """Whether tiles read at ``level`` must be resized to ``tile_size``."""
        return self.read_size != self.tile_size

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-compatible values."""
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TileSpec:
        """The spec recorded in a tile or feature file's attributes (see :meth:`to_dict`).

        Raises:
            KeyError: a field is missing (the file was not written by histoguard's tiling).
        """
        return cls(**{name: attrs[name] for name in cls.__dataclass_fields__})


def grid_positions(length: int, size0: int, stride0: float, *, edge: Edge = "pad") -> np.ndarray:
    """Level-0 start positions of the tiles along one axis.

    Args:
        length: slide extent along the axis, level-0 pixels.
        size0: tile footprint, level-0 pixels.
        stride0: distance between tile starts, level-0 pixels (may be fractional).
        edge: ``"drop"`` keeps whole tiles only (``position + size0 <= length``); ``"pad"`` also
            keeps the first tile that runs past the end, so every pixel ``< length`` is covered.

    Returns:
        ``(n,)`` int64 positions ``round(i * stride0)``, increasing.

    Raises:
        ValueError: ``edge`` is neither ``"pad"`` nor ``"drop"``.
    """
    if edge not in EDGE_MODES:
        raise ValueError(f"edge must be one of {', '.join(EDGE_MODES)}, got {edge!r}")
    if edge == "pad":
        if length <= 0:
            return np.zeros(0, dtype=np.int64)
        # Enough candidates to pass the end; keep up to the first one that reaches it.
        count = math.floor(max(length - size0, 0) / stride0) + 2
        candidates: np.ndarray = np.rint(np.arange(count + 1) * stride0).astype(np.int64)
        candidates = candidates[candidates < length]
        reaching = np.flatnonzero(candidates + size0 >= length)
        last = int(reaching[0]) if len(reaching) else len(candidates) - 1
        return candidates[: last + 1]
    if length < size0:
        return np.zeros(0, dtype=np.int64)
    count = math.floor((length - size0) / stride0) + 1
    positions: np.ndarray = np.rint(np.arange(count + 1) * stride0).astype(np.int64)
    return positions[positions + size0 <= length]


def tile_grid(dimensions: tuple[int, int], spec: TileSpec, *, edge: Edge = "pad") -> np.ndarray:
    """All tiles of a slide, row by row.

    Args:
        dimensions: level-0 ``(width, height)``.
        spec: the tile plan.
        edge: keep (``"pad"``) or leave out (``"drop"``) partial tiles at the right and bottom
            edges; see :func:`grid_positions`.

    Returns:
        ``(N, 2)`` int64 level-0 ``(x, y)`` top-left corners, sorted by y then x.
    """
    xs = grid_positions(dimensions[0], spec.level0_tile_size, spec.level0_stride, edge=edge)
    ys = grid_positions(dimensions[1], spec.level0_tile_size, spec.level0_stride, edge=edge)
    grid_x, grid_y = np.meshgrid(xs, ys)
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.int64)
