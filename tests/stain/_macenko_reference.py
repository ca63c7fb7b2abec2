"""The Macenko transform as histoguard computed it before the batched fast path (a3cac1c).

A frozen copy, kept only so that tests can hold the fast path in
``histoguard.stain._macenko`` to the results it replaced: masked float64 arrays over every
pixel of a chunk, percentiles by full sorts.
"""

from __future__ import annotations

import numpy as np

from histoguard.stain import MacenkoNormalizer
from histoguard.stain._optical_density import as_tile_batch, od_to_rgb, rgb_to_od, stained

_MAX_STAIN_COSINE = 0.99
_MIN_STAIN_COMPONENT = -0.1
_CONCENTRATION_PERCENTILE = 99.0


def reference_transform(normalizer: MacenkoNormalizer, tiles: np.ndarray) -> np.ndarray:
    """``normalizer.transform(tiles)`` as it was computed before the fast path."""
    batch, single = as_tile_batch(tiles)
    out = np.stack([_transform_tile(normalizer, tile[None])[0] for tile in batch])
    return out[0] if single else out


def reference_estimate_stains(
    tiles: np.ndarray, beta: float = 0.15, io: float = 240.0
) -> tuple[np.ndarray, np.ndarray]:
    """``estimate_stains(tiles)`` with the default settings, as before the fast path."""
    od = rgb_to_od(tiles, io).reshape(len(tiles), -1, 3)
    return _estimate_stains(od, stained(od, beta), 1.0, 0.01)


def _transform_tile(self: MacenkoNormalizer, tiles: np.ndarray) -> np.ndarray:
    od = rgb_to_od(tiles, self.io).reshape(len(tiles), -1, 3)
    mask = stained(od, self.beta)
    stains, ok = _estimate_stains(
        od, mask, self.alpha, self.min_stained_fraction, centred=self.centred
    )
    stains = np.where(ok[:, None, None], stains, self.stain_matrix)
    concentrations = _concentrations(od, stains)
    over = mask if self.percentile_over == "stained" else np.ones_like(mask)
    max_c = np.where(ok[:, None], _max_concentrations(concentrations, over), 1.0)
    reference_c = np.where(ok[:, None], self.max_concentrations, 1.0)
    scale = reference_c / np.maximum(max_c, 1e-6)
    normalised_od = (concentrations * scale[:, None, :]) @ self.stain_matrix
    return od_to_rgb(normalised_od, self.io).reshape(tiles.shape)


def _estimate_stains(
    od: np.ndarray, mask: np.ndarray, alpha: float, min_fraction: float, *, centred: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile H and E unit OD vectors.

    Args:
        od: ``(B, P, 3)`` optical density of each tile's pixels.
        mask: ``(B, P)`` stained pixels.
        alpha: angular percentile.
        min_fraction: least fraction of stained pixels to estimate from.
        centred: plane from the covariance (torchstain) instead of the second moment.

    Returns:
        ``(B, 2, 3)`` stain matrices (rows H, E) and ``(B,)`` bool: estimate usable. Unusable
        rows hold finite placeholders.
    """
    n_stained = mask.sum(axis=1)
    weighted = np.where(mask[..., None], od, 0.0).astype(np.float64)
    # Uncentred second moment: the stain plane passes through the origin of OD space.
    moments = weighted.transpose(0, 2, 1) @ weighted / np.maximum(n_stained, 1)[:, None, None]
    if centred:
        mean = weighted.sum(axis=1) / np.maximum(n_stained, 1)[:, None]
        moments = moments - mean[:, :, None] * mean[:, None, :]
    _, vectors = np.linalg.eigh(moments)  # ascending eigenvalues
    first, second = vectors[:, :, 2], vectors[:, :, 1]
    # Orient the main direction along the mean stained OD so every stained pixel projects
    # positively on it; angles then stay inside (-pi/2, pi/2), away from arctan2's wrap-around.
    mean_od = weighted.sum(axis=1)
    first *= np.where(np.einsum("bc,bc->b", mean_od, first) < 0, -1.0, 1.0)[:, None]
    angles = np.arctan2(weighted @ second[:, :, None], weighted @ first[:, :, None])[..., 0]
    low = _masked_percentile(angles, mask, alpha)
    high = _masked_percentile(angles, mask, 100.0 - alpha)

    def direction(angle: np.ndarray) -> np.ndarray:
        vector: np.ndarray = np.cos(angle)[:, None] * first + np.sin(angle)[:, None] * second
        return vector

    v_low, v_high = direction(low), direction(high)
    # Haematoxylin absorbs red more than eosin does: the vector with larger red OD is H.
    h_first = (v_low[:, 0] >= v_high[:, 0])[:, None]
    stains = np.stack([np.where(h_first, v_low, v_high), np.where(h_first, v_high, v_low)], 1)

    enough = n_stained >= max(3.0, min_fraction * od.shape[1])
    finite = np.isfinite(stains).all(axis=(1, 2))
    distinct = np.abs(np.einsum("bc,bc->b", stains[:, 0], stains[:, 1])) < _MAX_STAIN_COSINE
    physical = stains.min(axis=(1, 2)) >= _MIN_STAIN_COMPONENT
    ok = enough & finite & distinct & physical
    return np.where(ok[:, None, None], stains, 0.0), ok


def _concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Least-squares H and E concentrations: ``(B, P, 3)`` OD, ``(B, 2, 3)`` -> ``(B, P, 2)``."""
    inverse = np.linalg.pinv(stains.astype(np.float64))  # (B, 3, 2)
    out: np.ndarray = od.astype(np.float64) @ inverse
    return out


def _max_concentrations(concentrations: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(B, 2)`` 99th percentile of each stain's concentration over the stained pixels."""
    return np.stack(
        [
            _masked_percentile(concentrations[..., k], mask, _CONCENTRATION_PERCENTILE)
            for k in range(2)
        ],
        axis=1,
    )


def _masked_percentile(values: np.ndarray, mask: np.ndarray, q: float) -> np.ndarray:
    """``(B,)`` q-th percentile (numpy's linear method) of each row's masked values; 0 if none."""
    ordered = np.sort(np.where(mask, values, np.inf), axis=1)
    last = np.maximum(mask.sum(axis=1) - 1, 0)
    position = q / 100.0 * last
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, last)
    lo = np.take_along_axis(ordered, below[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(ordered, above[:, None], axis=1)[:, 0]
    with np.errstate(invalid="ignore"):  # rows with nothing masked: inf - inf, replaced below
        result = lo + (hi - lo) * (position - below)
    out: np.ndarray = np.where(mask.any(axis=1) & np.isfinite(result), result, 0.0)
    return out
