"""GeoJSON export that QuPath imports: tissue outlines as annotations, tiles with measurements.

Coordinates are level-0 pixels (x, y), which is what QuPath expects for a slide's GeoJSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from histoguard.slide._tissue import Polygon


def tissue_geojson(
    polygons: Sequence[Polygon],
    *,
    name: str = "Tissue",
    color: tuple[int, int, int] = (0, 160, 0),
) -> dict[str, Any]:
    """A FeatureCollection with one unlocked QuPath annotation per tissue polygon.

    Args:
        polygons: tissue outlines in level-0 coordinates (see :meth:`TissueMask.polygons`).
        name: QuPath classification name.
        color: classification colour, RGB 0–255.

    Returns:
        A JSON-serialisable dict; each geometry is ``[exterior, *holes]``, rings closed, [x, y]
        floats rounded to 2 decimals.
    """
    rgb = [int(c) for c in color]
    features = [
        _feature(
            [poly.exterior, *poly.holes],
            {
                "objectType": "annotation",
                "classification": {"name": name, "color": list(rgb)},
                "isLocked": False,
            },
        )
        for poly in polygons
    ]
    return {"type": "FeatureCollection", "features": features}


def tile_geojson(
    coords: ArrayLike, size0: float, values: Mapping[str, ArrayLike] | None = None
) -> dict[str, Any]:
    """A FeatureCollection with one square QuPath tile per coordinate, for measurement maps.

    Args:
        coords: (N, 2) level-0 (x, y) top-left corners.
        size0: tile side in level-0 pixels, > 0.
        values: measurement name → (N,) values; each tile gets ``{name: float}``, with None
            for a non-finite value (strict JSON has no NaN; QuPath reads a missing value as NaN).

    Returns:
        A JSON-serialisable dict with ``"objectType": "tile"`` and ``"measurements"`` properties.

    Raises:
        ValueError: if coords is not (N, 2), size0 is not positive, or a value array is not (N,).
    """
    xy = np.asarray(coords, dtype=np.float64)
    if xy.size == 0:
        xy = xy.reshape(0, 2)  # an empty list of tiles is a valid, empty collection
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coords must have shape (N, 2), got {xy.shape}")
    if not size0 > 0:
        raise ValueError(f"size0 must be positive, got {size0}")
    columns = {k: np.asarray(v, dtype=np.float64) for k, v in (values or {}).items()}
    for key, col in columns.items():
        if col.shape != (len(xy),):
            raise ValueError(f"values[{key!r}] must have shape ({len(xy)},), got {col.shape}")
    # Counter-clockwise with coordinates taken as-is, like the tissue exteriors.
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], dtype=np.float64) * size0
    return {
        "type": "FeatureCollection",
        "features": [
            _feature(
                [square + corner],
                {
                    "objectType": "tile",
                    "measurements": {k: _number(col[i]) for k, col in columns.items()},
                },
            )
            for i, corner in enumerate(xy)
        ],
    }


def _feature(rings: Sequence[np.ndarray], properties: dict[str, Any]) -> dict[str, Any]:
    """One Polygon Feature; numpy values become plain rounded floats for json."""
    coordinates = [(np.round(ring, 2) + 0.0).tolist() for ring in rings]  # + 0.0: no "-0.0"
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": coordinates},
        "properties": properties,
    }


def _number(value: np.float64) -> float | None:
    return float(value) if np.isfinite(value) else None
