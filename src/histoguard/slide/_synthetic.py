"""Generated slides: pyramidal TIFFs with H&E-like tissue of a known shape.

Used by the demo when no real slide is at hand, and by the tests, which need slides whose tissue
geometry, resolution and pyramid are known exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoguard.slide._reader import resize

_BACKGROUND_RGB = (243, 241, 244)
_STROMA_RGB = (226, 152, 190)
_NUCLEUS_RGB = (105, 62, 150)


@dataclass(frozen=True, kw_only=True)
class Ellipse:
    """An axis-aligned ellipse of tissue, in level-0 pixels."""

    cx: float
    cy: float
    rx: float
    ry: float

    def mask(self, width: int, height: int) -> np.ndarray:
        """``(height, width)`` bool, True inside (pixel centres)."""
        ys, xs = np.ogrid[:height, :width]
        return ((xs + 0.5 - self.cx) / self.rx) ** 2 + ((ys + 0.5 - self.cy) / self.ry) ** 2 <= 1.0


@dataclass(frozen=True, kw_only=True)
class Rectangle:
    """An axis-aligned rectangle of tissue ``[x0, x1) x [y0, y1)``, in level-0 pixels."""

    x0: int
    y0: int
    x1: int
    y1: int

    def mask(self, width: int, height: int) -> np.ndarray:
        """``(height, width)`` bool, True inside."""
        out = np.zeros((height, width), dtype=bool)
        out[max(self.y0, 0) : self.y1, max(self.x0, 0) : self.x1] = True
        return out


Shape = Ellipse | Rectangle


def synthetic_tissue(
    width: int, height: int, shapes: Sequence[Shape], *, seed: int = 0
) -> np.ndarray:
    """An H&E-like RGB image: pink stroma with purple nuclei inside ``shapes``, glass elsewhere.

    Returns:
        ``(height, width, 3)`` uint8.
    """
    tissue = np.zeros((height, width), dtype=bool)
    for shape in shapes:
        tissue |= shape.mask(width, height)
    texture = _texture(seed)
    reps = (-(-height // texture.shape[0]), -(-width // texture.shape[1]), 1)
    tiled = np.tile(texture, reps)[:height, :width]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = _BACKGROUND_RGB
    image[tissue] = tiled[tissue]
    return image


def synthetic_tile(size: int = 224, *, nuclei_per_px: float = 1 / 150, seed: int = 0) -> np.ndarray:
    """One H&E-like ``(size, size, 3)`` uint8 tile; raise ``nuclei_per_px`` for a denser,
    more cellular (tumour-like) tile."""
    return _texture(seed, side=size, nuclei_per_px=nuclei_per_px)


def _texture(seed: int, side: int = 509, nuclei_per_px: float = 1 / 150) -> np.ndarray:
    """A ``(side, side, 3)`` uint8 patch of stroma with nuclei, tiled to cover the tissue.

    ``side`` is prime so the repeat never lines up with tile grids.
    """
    rng = np.random.default_rng(seed)
    nuclei = np.zeros((side, side), dtype=bool)
    # ~1 nucleus per 150 px², radius 3 px: enough texture for blur scores and colour.
    count = int(side * side * nuclei_per_px)
    centres_y, centres_x = rng.integers(0, side, count), rng.integers(0, side, count)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            if dx * dx + dy * dy <= 9:
                nuclei[(centres_y + dy) % side, (centres_x + dx) % side] = True
    patch = np.empty((side, side, 3), dtype=np.float64)
    patch[:] = _STROMA_RGB
    patch[nuclei] = _NUCLEUS_RGB
    patch += rng.normal(0.0, 6.0, size=(side, side, 1))
    return np.clip(patch, 0, 255).astype(np.uint8)


def write_synthetic_slide(
    path: str | Path,
    *,
    width: int = 4096,
    height: int = 3072,
    mpp: float = 0.25,
    shapes: Sequence[Shape] | None = None,
    levels: int = 3,
    tile: int = 256,
    compression: str = "jpeg",
    seed: int = 0,
) -> Path:
    """Write a tiled, pyramidal TIFF (halving per level) that OpenSlide and tiffslide both read.

    Args:
        path: output file (``.tiff``).
        width, height: level-0 size in pixels.
        mpp: micrometres per level-0 pixel, stored as the TIFF resolution.
        shapes: tissue regions in level-0 pixels; default: two ellipses.
        levels: number of pyramid levels (each half the size of the previous).
        tile: TIFF tile side in pixels (multiple of 16).
        compression: TIFF compression (``"jpeg"``, ``"zlib"``, ``"none"``).
        seed: random seed of the texture.

    Returns:
        ``path`` as a :class:`Path`.
    """
    import tifffile

    path = Path(path)
    if shapes is None:
        shapes = (
            Ellipse(cx=width * 0.32, cy=height * 0.5, rx=width * 0.2, ry=height * 0.33),
            Ellipse(cx=width * 0.72, cy=height * 0.45, rx=width * 0.14, ry=height * 0.22),
        )
    image = synthetic_tissue(width, height, shapes, seed=seed)
    codec = None if compression == "none" else compression
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            scale = 2**level
            if level:
                image = resize(image, max(1, image.shape[1] // 2), max(1, image.shape[0] // 2))
            pixels_per_cm = 1e4 / (mpp * scale)
            tif.write(
                image,
                tile=(tile, tile),
                photometric="rgb",
                compression=codec,
                resolution=(pixels_per_cm, pixels_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
                metadata=None,
            )
    return path
