"""Reinhard colour transfer: match each tile's CIELAB channel means and deviations to a reference.

Reinhard et al., "Color transfer between images", IEEE CG&A 2001, in CIELAB (scikit-image's
``rgb2lab``/``lab2rgb``, D65) as most pathology toolkits do. Statistics are over the whole tile,
as in the original; tiles with almost no stained tissue are returned unchanged, because matching a
blank tile's statistics to a tissue reference would paint glass in tissue colours.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from histoguard.stain._optical_density import (
    DEFAULT_BETA,
    DEFAULT_IO,
    as_tile_batch,
    rgb_to_od,
    stained,
)

#: Tiles with a smaller fraction of stained pixels are returned unchanged.
DEFAULT_MIN_STAINED_FRACTION = 0.01

# A channel whose spread is below this (LAB units) is flat; dividing by it would amplify noise.
_MIN_STD = 1e-3


@dataclass(frozen=True, eq=False)
class ReinhardNormalizer:
    """A Reinhard normaliser fitted to a reference; build it with :meth:`fit`.

    Attributes:
        means: ``(3,)`` reference L*, a*, b* means (L* 0-100).
        stds: ``(3,)`` reference L*, a*, b* standard deviations.
        min_stained_fraction: tiles with fewer pixels at OD >= beta in every channel (fraction
            of the tile) pass through unchanged.
        beta: OD threshold for a stained pixel.
    """

    means: np.ndarray
    stds: np.ndarray
    min_stained_fraction: float = DEFAULT_MIN_STAINED_FRACTION
    beta: float = DEFAULT_BETA

    @classmethod
    def fit(
        cls,
        reference: np.ndarray,
        *,
        min_stained_fraction: float = DEFAULT_MIN_STAINED_FRACTION,
        beta: float = DEFAULT_BETA,
    ) -> ReinhardNormalizer:
        """Measure the reference's LAB statistics.

        Args:
            reference: ``(H, W, 3)`` uint8 RGB image, or ``(B, H, W, 3)`` tiles whose pixels are
                pooled.
            min_stained_fraction, beta: see the class attributes.

        Raises:
            ValueError: bad shape or dtype.
        """
        batch, _ = as_tile_batch(reference)
        lab = _rgb_to_lab(batch).reshape(-1, 3)
        return cls(
            means=_frozen(lab.mean(axis=0)),
            stds=_frozen(lab.std(axis=0)),
            min_stained_fraction=min_stained_fraction,
            beta=beta,
        )

    def transform(self, tiles: np.ndarray) -> np.ndarray:
        """Match each tile's LAB means and standard deviations to the reference's.

        Args:
            tiles: ``(B, H, W, 3)`` or ``(H, W, 3)`` uint8 RGB.

        Returns:
            The same shape, uint8; each tile is transformed with its own statistics.

        Raises:
            ValueError: bad shape or dtype.
        """
        batch, single = as_tile_batch(tiles)
        out = batch.copy()
        fraction = stained(rgb_to_od(batch, DEFAULT_IO), self.beta).mean(axis=(1, 2))
        todo = np.flatnonzero(fraction >= self.min_stained_fraction)
        if len(todo):
            lab = _rgb_to_lab(batch[todo])
            means = lab.mean(axis=(1, 2), keepdims=True)
            stds = np.maximum(lab.std(axis=(1, 2), keepdims=True), _MIN_STD)
            matched = (lab - means) * (self.stds / stds) + self.means
            out[todo] = _lab_to_rgb(matched)
        return out[0] if single else out


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    lab: np.ndarray = rgb2lab(rgb, channel_axis=-1)
    return lab


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    from skimage.color import lab2rgb

    with warnings.catch_warnings():
        # Matched colours can fall outside the sRGB gamut; lab2rgb clips them, which is intended.
        warnings.simplefilter("ignore", UserWarning)
        rgb = lab2rgb(lab, channel_axis=-1)
    out: np.ndarray = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return out


def _frozen(array: np.ndarray) -> np.ndarray:
    copy = np.array(array, dtype=np.float64)
    copy.setflags(write=False)
    return copy
