"""Pictures for people: the slide thumbnail with the tissue outline and the tile grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from histoguard.slide._tissue import Polygon

TISSUE_OUTLINE_RGB = (0, 170, 60)
TILE_OUTLINE_RGBA = (20, 70, 230, 200)
TILE_FILL_RGBA = (20, 70, 230, 45)


def render_tiling_overview(
    thumbnail: np.ndarray,
    downsample: float,
    polygons: Sequence[Polygon],
    coords: np.ndarray,
    tile_size0: float,
) -> Image.Image:
    """Draw tissue outlines and tile squares over a slide thumbnail.

    Args:
        thumbnail: ``(H, W, 3)`` uint8 RGB.
        downsample: level-0 pixels per thumbnail pixel.
        polygons: tissue polygons in level-0 coordinates.
        coords: ``(N, 2)`` level-0 top-left tile corners.
        tile_size0: tile side in level-0 pixels.

    Returns:
        An RGB :class:`PIL.Image.Image` the size of the thumbnail.
    """
    base = Image.fromarray(thumbnail).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    side = tile_size0 / downsample
    for x, y in np.asarray(coords, dtype=np.float64) / downsample:
        draw.rectangle(
            (x, y, x + side, y + side), fill=TILE_FILL_RGBA, outline=TILE_OUTLINE_RGBA, width=1
        )
    line_width = max(2, round(max(base.size) / 600))
    for polygon in polygons:
        for ring in (polygon.exterior, *polygon.holes):
            points = [(float(px), float(py)) for px, py in ring / downsample]
            draw.line(points, fill=(*TISSUE_OUTLINE_RGB, 255), width=line_width)
    return Image.alpha_composite(base, overlay).convert("RGB")
