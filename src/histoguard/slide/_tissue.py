"""Tissue detection at thumbnail scale for H&E whole-slide images.

Pipeline, all at thumbnail resolution: HSV saturation and mean brightness (3×3 median to calm JPEG
chroma noise) → Otsu threshold on saturation, clipped to [floor, ceiling] → drop near-white and pen
ink → closing then opening → fill holes up to ``max_hole_area_um2`` → remove pen again → drop
components below ``min_tissue_area_um2``. Physical sizes go to pixels via ``mpp * downsample``.

Coordinates: mask pixel (i, j) covers level-0 ``[j*ds, (j+1)*ds) × [i*ds, (i+1)*ds)`` in (x, y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import approximate_polygon, find_contours
from skimage.morphology import disk

BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity for tissue; background is 4-connected


@dataclass(frozen=True, kw_only=True)
class TissueParams:
    """Settings of :func:`detect_tissue`; sizes are physical so one setting fits any thumbnail.

    Attributes:
        min_tissue_area_um2: components smaller than this (µm²) are dropped (dust, debris).
        max_hole_area_um2: holes up to this area (µm²) are filled; larger ones (lumina) stay.
        closing_radius_um: radius (µm) of the disk used for closing then opening; below half a
            thumbnail pixel no morphology is done.
        saturation_threshold: fixed HSV-saturation cut in [0, 1]; None uses Otsu clipped to
            [saturation_floor, saturation_ceiling].
        saturation_floor: lowest automatic cut. Glass with JPEG chroma noise reaches S≈0.05 after
            the median filter while pale eosin stroma sits at 0.1 and above.
        saturation_ceiling: highest automatic cut. On a thumbnail that is all tissue, Otsu splits
            haematoxylin from eosin (S≈0.3–0.45) and would discard pale stroma.
        max_brightness: pixels whose mean RGB (in [0, 1]) is above this are background; glass is
            0.92–0.97, pale tissue rarely above 0.88.
        reject_pen: whether red, green, blue and black ink is excluded (see :func:`pen_mask`).
        pen_margin_um: ink mask is grown by this (µm) to take the blurred halo of a stroke.
    """

    min_tissue_area_um2: float = 50_000.0
    max_hole_area_um2: float = 20_000.0
    closing_radius_um: float = 16.0
    saturation_threshold: float | None = None
    saturation_floor: float = 0.07
    saturation_ceiling: float = 0.15
    max_brightness: float = 0.90
    reject_pen: bool = True
    pen_margin_um: float = 16.0


@dataclass(frozen=True)
class Polygon:
    """One tissue component in level-0 pixel coordinates (x, y), y pointing down.

    Orientation is taken with the coordinates as-is (shoelace formula on x, y): the exterior has
    positive signed area ("counter-clockwise", RFC 7946) and holes negative. Drawn on screen with
    y down, the exterior therefore looks clockwise.

    Attributes:
        exterior: (K, 2) float64 closed ring, first point == last point.
        holes: closed (M, 2) float64 rings inside the exterior.
    """

    exterior: FloatArray
    holes: tuple[FloatArray, ...] = field(default=())


@dataclass(frozen=True)
class TissueMask:
    """A tissue mask at thumbnail scale.

    Attributes:
        mask: (H, W) bool, True = tissue.
        downsample: level-0 pixels per mask pixel, the same on x and y.
    """

    mask: BoolArray
    downsample: float

    def area_fraction(self) -> float:
        """Fraction of the mask's pixels that are tissue, in [0, 1] (0 for an empty mask)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def tile_fractions(self, coords: NDArray[np.integer], size0: float) -> FloatArray:
        """Fraction of each square tile covered by tissue, exact for the piecewise-constant mask.

        Args:
            coords: (N, 2) level-0 (x, y) of each tile's top-left corner.
            size0: tile side in level-0 pixels, > 0.

        Returns:
            (N,) float64 in [0, 1]. Tile parts outside the mask count as background.

        Raises:
            ValueError: if coords is not (N, 2) or size0 is not positive.
        """
        xy = np.asarray(coords, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"coords must have shape (N, 2), got {xy.shape}")
        if not size0 > 0:
            raise ValueError(f"size0 must be positive, got {size0}")
        h, w = self.mask.shape
        sat = np.zeros((h + 1, w + 1))  # sat[i, j] = tissue pixels in rows < i and columns < j
        sat[1:, 1:] = self.mask.cumsum(0, dtype=np.int64).cumsum(1)
        x0, y0 = xy[:, 0] / self.downsample, xy[:, 1] / self.downsample
        side = size0 / self.downsample
        x1, y1 = x0 + side, y0 + side
        # Bilinear interpolation of the summed-area table is the exact integral of the mask up to
        # a fractional corner; clipping to the mask puts zero tissue outside it.
        total = (
            _integral(sat, x1, y1) - _integral(sat, x0, y1) - _integral(sat, x1, y0)
        ) + _integral(sat, x0, y0)
        return np.clip(total / (side * side), 0.0, 1.0)

    def polygons(self, *, simplify_px: float = 1.0) -> list[Polygon]:
        """Outline every 8-connected tissue component, with its holes, in level-0 coordinates.

        Args:
            simplify_px: Douglas-Peucker tolerance in mask pixels; 0 keeps every vertex.

        Returns:
            One :class:`Polygon` per component, exteriors oriented as documented there.
        """
        labels, n = ndi.label(self.mask, structure=_EIGHT)
        polys: list[Polygon] = []
        for k, box in enumerate(ndi.find_objects(labels), start=1):
            if box is None:
                continue
            # Pad so every contour closes; 'high' joins diagonal neighbours like the labelling.
            comp = np.pad(labels[box] == k, 1).astype(np.float64)
            rings = [
                approximate_polygon(c, simplify_px) if simplify_px > 0 else c
                for c in find_contours(comp, 0.5, fully_connected="high")
            ]
            rings = [r for r in rings if len(r) >= 4]
            if not rings:
                continue
            # Contour (row, col) of the padded crop → level-0 (x, y). Pixel centre (i, j) sits at
            # ((j + 0.5) ds, (i + 0.5) ds); the -1 undoes the padding.
            offset = np.array([box[1].start - 0.5, box[0].start - 0.5])
            rings_xy = [(r[:, ::-1] + offset) * self.downsample for r in rings]
            areas = [_signed_area(r) for r in rings_xy]
            outer = int(np.argmax(np.abs(areas)))  # the outer boundary encloses all the others
            holes = tuple(_orient(r, positive=False) for i, r in enumerate(rings_xy) if i != outer)
            polys.append(Polygon(exterior=_orient(rings_xy[outer], positive=True), holes=holes))
        return polys


def pen_mask(rgb: NDArray[np.uint8]) -> BoolArray:
    """Pixels coloured like marker ink: red, green, blue or black.

    H&E absorbs green more than red, so tissue has G ≤ R; eosin keeps B above 0.55 R even where
    it is most intense. Red ink has G < 0.35 R and B < 0.55 R, green/cyan/most blue inks have
    G > R + 20, violet-blue inks B > R + 60 and B > G + 40, black ink has mean RGB < 45.
    Bright red blood cells can match the red rule: :func:`detect_tissue` ignores specks.

    Args:
        rgb: (H, W, 3) uint8 RGB image.

    Returns:
        (H, W) bool, True = ink.

    Raises:
        ValueError: if rgb is not (H, W, 3) uint8.
    """
    _check_rgb(rgb)
    r, g, b = (rgb[..., k].astype(np.int16) for k in range(3))
    red = (r > 80) & (20 * g < 7 * r) & (20 * b < 11 * r)
    total = r + g + b
    green_blue = (g > r + 20) | ((g > r) & (total < 600))
    violet = (b > r + 60) & (b > g + 40)
    black = (total < 135) | ((total < 300) & (20 * b < 17 * r))
    return red | green_blue | violet | black


def detect_tissue(
    thumbnail: NDArray[np.uint8],
    *,
    downsample: float,
    mpp: float,
    params: TissueParams | None = None,
) -> TissueMask:
    """Find H&E tissue on a slide thumbnail.

    Args:
        thumbnail: (H, W, 3) uint8 RGB.
        downsample: level-0 pixels per thumbnail pixel, > 0.
        mpp: micrometres per level-0 pixel, > 0; a thumbnail pixel is (mpp * downsample)² µm².
        params: detection settings; defaults to :class:`TissueParams()`.

    Returns:
        The :class:`TissueMask` at thumbnail scale, with the given downsample.

    Raises:
        ValueError: for a thumbnail that is not (H, W, 3) uint8, or non-positive/non-finite
            downsample or mpp.
    """
    _check_rgb(thumbnail)
    for name, value in (("downsample", downsample), ("mpp", mpp)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value}")
    p = params or TissueParams()
    um_px = mpp * downsample

    rgb = thumbnail.astype(np.float64) / 255.0
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    sat = ndi.median_filter(np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0), size=3)
    bright = ndi.median_filter(rgb.mean(axis=2), size=3)

    pen = np.zeros(sat.shape, dtype=bool)
    if p.reject_pen:
        # Opening drops specks (red blood cells, dark nuclei); dilation takes the blurred edge.
        pen = _open_close(pen_mask(thumbnail), _radius(p.closing_radius_um, um_px), close=False)
        pen = ndi.binary_dilation(pen, disk(_radius(p.pen_margin_um, um_px)))

    threshold = p.saturation_threshold
    if threshold is None:
        pool = sat[~pen]
        otsu = threshold_otsu(pool) if pool.size and pool.min() < pool.max() else 0.0
        threshold = float(np.clip(otsu, p.saturation_floor, p.saturation_ceiling))
    tissue = (sat > threshold) & (bright <= p.max_brightness) & ~pen

    radius = _radius(p.closing_radius_um, um_px)
    tissue = _open_close(_open_close(tissue, radius, close=True), radius, close=False)
    holes, _ = ndi.label(ndi.binary_fill_holes(tissue) & ~tissue)
    small_hole = np.bincount(holes.ravel()) <= p.max_hole_area_um2 / um_px**2
    small_hole[0] = False
    tissue = (tissue | small_hole[holes]) & ~pen  # ink enclosed by tissue is still not tissue
    parts, _ = ndi.label(tissue, structure=_EIGHT)
    big = np.bincount(parts.ravel()) >= p.min_tissue_area_um2 / um_px**2
    big[0] = False
    return TissueMask(mask=big[parts], downsample=float(downsample))


def _check_rgb(rgb: NDArray[np.generic]) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB array, got {getattr(rgb, 'dtype', type(rgb))}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected shape (H, W, 3) with H, W > 0, got {rgb.shape}")


def _radius(um: float, um_px: float) -> int:
    """A physical radius in whole thumbnail pixels (0 when under half a pixel)."""
    return int(round(um / um_px))


def _open_close(mask: BoolArray, radius: int, *, close: bool) -> BoolArray:
    """Binary closing (or opening) with a disk; edge padding keeps tissue at the border intact."""
    if radius < 1:
        return mask
    padded = np.pad(mask, radius, mode="edge")
    op = ndi.binary_closing if close else ndi.binary_opening
    out: BoolArray = op(padded, disk(radius))[radius:-radius, radius:-radius]
    return out


def _integral(sat: FloatArray, x: FloatArray, y: FloatArray) -> FloatArray:
    """Integral of the mask over [0, x] × [0, y] (mask pixels) from its summed-area table."""
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    x, y = np.clip(x, 0, w), np.clip(y, 0, h)
    j, i = np.minimum(np.floor(x).astype(np.intp), w - 1), np.minimum(np.floor(y).astype(np.intp), h - 1)
    u, v = x - j, y - i
    top = sat[i, j] * (1 - u) + sat[i, j + 1] * u
    bottom = sat[i + 1, j] * (1 - u) + sat[i + 1, j + 1] * u
    out: FloatArray = top * (1 - v) + bottom * v
    return out


def _signed_area(ring: FloatArray) -> float:
    """Shoelace area of a closed ring with coordinates as-is: positive = counter-clockwise."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _orient(ring: FloatArray, *, positive: bool) -> FloatArray:
    """The ring with the requested sign of area."""
    return ring if (_signed_area(ring) > 0) == positive else ring[::-1].copy()
