"""Macenko-concentration jitter: each tile's own stains, their amounts randomly scaled and shifted.

HED jitter (:mod:`histoguard.augment._perturbations`) deconvolves every tile with the same fixed
Ruifrok-Johnston stain vectors; on a tile whose haematoxylin and eosin differ from those vectors
the jitter leaks between stains. Here each tile's H and E vectors are estimated from the tile
itself (Macenko et al. 2009, :func:`histoguard.stain.estimate_stains`), the per-pixel
concentrations ``C`` (least squares, ``OD ≈ C S``) are jittered per stain,

    C' = C (1 + sigma a) + sigma b,      a, b ~ N(0, 1), one draw per tile and stain,

and the change ``(C' - C) S`` is added to the tile's optical density, so whatever the two stains
do not explain (the residual) is kept and ``a = b = 0`` gives the tile back exactly. A tile with
too little stained tissue to estimate from (background) uses Macenko's standard H&E vectors.
"""

from __future__ import annotations

import numpy as np

from histoguard.augment._registry import register_perturbation
from histoguard.stain import estimate_stains
from histoguard.stain._optical_density import od_to_rgb, rgb_to_od

#: Macenko's reference H&E OD vectors (rows H, E; R, G, B), as in his code and torchstain.
STANDARD_HE_STAINS = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]])
STANDARD_HE_STAINS = STANDARD_HE_STAINS / np.linalg.norm(STANDARD_HE_STAINS, axis=1, keepdims=True)


@register_perturbation(
    "macenko_jitter",
    unit="relative H/E concentration scale and OD shift (sigma), along the tile's own stains",
    levels=(0.02, 0.05, 0.1, 0.15, 0.2),
    description="per-tile random scale 1 + sigma N(0,1) and shift sigma N(0,1) OD of the "
    "haematoxylin and eosin concentrations along the tile's own Macenko stain vectors",
    stochastic=True,
)
def _macenko_jitter(tiles: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    # Draws do not depend on sigma, so every severity scales the same jitter.
    draws = rng.standard_normal(size=(len(tiles), 2, 2))
    # A scale below zero would turn a stain into its complement; clip (|a| > 1/sigma >= 5 sd).
    scale = np.maximum(1.0 + sigma * draws[:, 0], 0.0)
    shift = sigma * draws[:, 1]
    stains, ok = estimate_stains(tiles)
    stains = np.where(ok[:, None, None], stains, STANDARD_HE_STAINS)
    od = rgb_to_od(tiles).reshape(len(tiles), -1, 3).astype(np.float64)
    concentrations = od @ np.linalg.pinv(stains)  # (B, P, 2)
    change = concentrations * (scale[:, None, :] - 1.0) + shift[:, None, :]
    return od_to_rgb(od + change @ stains).reshape(tiles.shape)
