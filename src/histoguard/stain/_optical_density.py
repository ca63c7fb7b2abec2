"""Optical density (Beer-Lambert) and the tile-batch conventions shared by the normalisers.

Optical density per channel is ``OD = -ln((I + 1) / Io)`` for 8-bit intensity ``I``; stains add
up linearly in OD. ``Io`` = 240 is the usual bright-field background level (the value used by
Macenko et al.'s reference code, torchstain and staintools), so glass maps to OD <= 0.
"""

from __future__ import annotations

import numpy as np

#: Background (glass) intensity of bright-field H&E, 8-bit.
DEFAULT_IO = 240.0

#: A pixel is stained when its OD is at least this in every channel (Macenko's beta).
DEFAULT_BETA = 0.15


def rgb_to_od(rgb: np.ndarray, io: float = DEFAULT_IO) -> np.ndarray:
    """``(..., 3)`` uint8 RGB -> ``(..., 3)`` float32 optical density (unitless, ln base)."""
    od: np.ndarray = -np.log((rgb.astype(np.float32) + 1.0) / np.float32(io))
    return od


def od_to_rgb(od: np.ndarray, io: float = DEFAULT_IO) -> np.ndarray:
    """``(..., 3)`` optical density -> ``(..., 3)`` uint8 RGB, rounded and clipped to 0-255."""
    # In place on one float32 buffer: the same operations as io * exp(-od) - 1, fewer passes.
    rgb = np.negative(od, dtype=np.float32)
    np.exp(rgb, out=rgb)
    rgb *= np.float32(io)
    rgb -= np.float32(1.0)
    np.rint(rgb, out=rgb)
    np.clip(rgb, 0, 255, out=rgb)
    out: np.ndarray = rgb.astype(np.uint8)
    return out


def stained(od: np.ndarray, beta: float = DEFAULT_BETA) -> np.ndarray:
    """``(..., 3)`` OD -> ``(...)`` bool: pixels with OD >= ``beta`` in every channel."""
    # Three comparisons rather than np.all over the short last axis, which is ~10x slower.
    mask: np.ndarray = (od[..., 0] >= beta) & (od[..., 1] >= beta) & (od[..., 2] >= beta)
    return mask


def as_tile_batch(tiles: np.ndarray) -> tuple[np.ndarray, bool]:
    """Accept ``(H, W, 3)`` or ``(B, H, W, 3)`` uint8; return the batch and whether it was single.

    Raises:
        ValueError: another shape or dtype.
    """
    tiles = np.asarray(tiles)
    if tiles.dtype != np.uint8 or tiles.ndim not in (3, 4) or tiles.shape[-1] != 3:
        raise ValueError(
            f"expected (H, W, 3) or (B, H, W, 3) uint8 RGB, got {tiles.shape} {tiles.dtype}"
        )
    single = tiles.ndim == 3
    return (tiles[None] if single else tiles), single
