"""Per-tile quality scores, kept with the coordinates so later steps can filter.

Besides the scores, two integrity checks run on every decoded tile: :func:`is_constant` (a
zero-filled or single-colour region, which :func:`background_fraction` would count as tissue)
and :func:`tile_digest`, whose repeats (:func:`repeated`) betray a file whose tile offsets point
several positions at the same stored tile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

#: A pixel whose three channels are all at least this bright is glass/background.
BACKGROUND_MIN_RGB = 220

#: Largest per-channel spread (max - min, 0-255 levels) of a tile that counts as constant. A
#: zero-filled or blank region decodes to exactly one colour when stored uncompressed or with
#: deflate, but JPEG rounding and the area-averaging resize to the target mpp move a flat region
#: by a level or two; real tissue, even pale and out of focus, varies by far more than 2 levels
#: across a tile (stain, nuclei, sensor noise).
CONSTANT_MAX_SPREAD = 2

#: Bytes of the BLAKE2b digest of a tile's pixels: 16 bytes make an accidental collision between
#: two different tiles of a cohort (2**-128 per pair) impossible in practice.
DIGEST_BYTES = 16


def background_fraction(tile: np.ndarray) -> float:
    """Fraction of near-white pixels (all channels >= 220) in an ``(H, W, 3)`` uint8 tile."""
    return float(np.mean(tile.min(axis=2) >= BACKGROUND_MIN_RGB))


def blur_score(tile: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image (0-255 scale); low means blurry.

    Args:
        tile: ``(H, W, 3)`` uint8 RGB with H, W >= 3.
    """
    grey = tile.astype(np.float32).mean(axis=2)
    laplacian = (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    )
    return float(laplacian.var())


def is_constant(tile: np.ndarray) -> bool:
    """Whether every channel of an ``(H, W, C)`` uint8 tile spans at most
    :data:`CONSTANT_MAX_SPREAD` levels: a blank, zero-filled or single-colour tile, never tissue."""

    def spread(pixels: np.ndarray) -> int:
        flat = pixels.reshape(-1, pixels.shape[-1])
        return int((flat.max(axis=0).astype(np.int16) - flat.min(axis=0)).max())

    # A sparse sample spreads no wider than the tile, so it rules tissue out at a fraction of
    # the cost; only tiles that pass it are checked in full.
    if spread(tile[::16, ::16]) > CONSTANT_MAX_SPREAD:
        return False
    return spread(tile) <= CONSTANT_MAX_SPREAD


def tile_digest(tile: np.ndarray) -> bytes:
    """BLAKE2b digest (:data:`DIGEST_BYTES` bytes) of a tile's shape and pixels: equal digests
    mean identical tiles."""
    pixels = np.ascontiguousarray(tile)
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    digest.update(repr((pixels.shape, pixels.dtype.str)).encode())
    digest.update(pixels.data)
    return digest.digest()


def repeated(digests: Sequence[bytes | None]) -> np.ndarray:
    """``(N,)`` bool: True for each entry whose digest occurs more than once (None never does).

    Every member of a group of identical tiles is marked, the first included: when several
    positions give the same pixels there is no telling which one, if any, is really there.
    """
    counts: dict[bytes, int] = {}
    for digest in digests:
        if digest is not None:
            counts[digest] = counts.get(digest, 0) + 1
    return np.array([d is not None and counts[d] > 1 for d in digests], dtype=bool)
