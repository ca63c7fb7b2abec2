"""Per-tile quality scores, kept with the coordinates so later steps can filter."""

from __future__ import annotations

import numpy as np

#: A pixel whose three channels are all at least this bright is glass/background.
BACKGROUND_MIN_RGB = 220


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
