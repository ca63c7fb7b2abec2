"""Tissue detection at thumbnail scale for H&E whole-slide images, and its outlines.

Mask pixel (i, j) covers level-0 ``[j*ds, (j+1)*ds) × [i*ds, (i+1)*ds)`` in (x, y).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from histoguard.errors import ConfigError
from histoguard.slide._reader import resize

BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]
_EIGHT = np.ones((3, 3), dtype=bool)  # tissue is 8-connected, so background is 4-connected


@dataclass(frozen=True, kw_only=True)
class TissueParams:
    """Settings of :func:`detect_tissue`; sizes are physical so one setting fits any thumbnail.

    Attributes:
        min_tissue_area_um2: components smaller than this (µm²) are dropped (dust, debris).
        max_hole_area_um2: holes up to this (µm²) are filled; larger ones (lumina, fat) stay.
        closing_radius_um: disk radius (µm) for closing then opening; none under half a pixel.
        saturation_threshold: fixed HSV-saturation cut in [0, 1]; None: Otsu, clipped as below.
        saturation_floor: lowest automatic cut. Glass is mostly under 0.03 after the median
            filter; JPEG chroma noise takes 1–5% of it to 0.06–0.08 (caught by brightness).
        saturation_ceiling: highest automatic cut. On an all-tissue image Otsu splits
            haematoxylin from eosin (0.25–0.45) and would discard pale stroma (0.1–0.15).
        max_brightness: mean RGB in [0, 1] above which a pixel is glass; glass measures
            0.91–0.96, pale stroma 0.76–0.86. Grey glass darker than this has no saturation.
        reject_pen: exclude red, green, blue and black ink (see :func:`pen_mask`).
        pen_margin_um: ink is grown by this (µm) to cover the blurred edge of a stroke.
        pen_halo_um: how far (µm) ink may grow over pixels with red ink's optical-density
            direction: the wide pink halo of out-of-focus red marker.
        working_um_per_px: finest scale detection works at (µm per mask pixel). Finer
            thumbnails are area-averaged down first: tissue outlines need no more, and the
            morphology costs grow with the square of the radius in pixels.
    """

    min_tissue_area_um2: float = 50_000.0
    max_hole_area_um2: float = 20_000.0
    closing_radius_um: float = 16.0
    saturation_threshold: float | None = None
    saturation_floor: float = 0.07
    saturation_ceiling: float = 0.12
    max_brightness: float = 0.90
    reject_pen: bool = True
    pen_margin_um: float = 16.0
    pen_halo_um: float = 64.0
    working_um_per_px: float = 4.0

    def __post_init__(self) -> None:
        sizes = ("min_tissue_area_um2", "max_hole_area_um2", "closing_radius_um", "pen_margin_um",
                 "pen_halo_um")  # fmt: skip
        for name in sizes:
            if not getattr(self, name) >= 0:  # NaN fails too
                raise ConfigError(f"{name} must be >= 0 (µm), got {getattr(self, name)}")
        if not self.working_um_per_px > 0:
            raise ConfigError(f"working_um_per_px must be > 0, got {self.working_um_per_px}")
        cuts = ("saturation_floor", "saturation_ceiling", "max_brightness", "saturation_threshold")
        for name in cuts:
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if self.saturation_floor > self.saturation_ceiling:
            raise ConfigError(
                f"saturation_floor ({self.saturation_floor}) must not exceed saturation_ceiling "
                f"({self.saturation_ceiling})"
            )


@dataclass(frozen=True)
class Polygon:
    """One tissue component in level-0 pixel coordinates (x, y), y pointing down.

    Orientation is that of the coordinates taken as-is (shoelace on x, y): exteriors have
    positive signed area ("counter-clockwise" as RFC 7946 asks), holes negative. On a screen
    with y down an exterior therefore runs clockwise.

    Attributes:
        exterior: (K, 2) float64 closed ring, first point == last point.
        holes: closed (M, 2) float64 rings inside the exterior.
    """

    exterior: FloatArray
    holes: tuple[FloatArray, ...] = ()


@dataclass(frozen=True)
class TissueMask:
    """A tissue mask at thumbnail scale: ``mask`` (H, W) bool, True = tissue; ``downsample``
    level-0 pixels per mask pixel, the same on x and y. Raises ValueError if either is invalid.
    """

    mask: BoolArray
    downsample: float

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != np.bool_:
            raise ValueError(f"mask must be 2-D bool, got {self.mask.dtype} {self.mask.shape}")
        if not (math.isfinite(self.downsample) and self.downsample > 0):
            raise ValueError(f"downsample must be positive, got {self.downsample}")

    def area_fraction(self) -> float:
        """Fraction of mask pixels that are tissue, in [0, 1] (0 for an empty mask)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def tile_fractions(self, coords: NDArray[np.integer], size0: float) -> FloatArray:
        """Fraction of each square tile covered by tissue, exact for the pixelwise-constant mask.

        Args:
            coords: (N, 2) level-0 (x, y) of each tile's top-left corner.
            size0: tile side in level-0 pixels, > 0.

        Returns:
            (N,) float64 in [0, 1]; tile parts outside the mask count as background. Raises
            ValueError if coords is not (N, 2) or size0 is not positive.
        """
        xy = np.asarray(coords, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"coords must have shape (N, 2), got {xy.shape}")
        if not size0 > 0:
            raise ValueError(f"size0 must be positive, got {size0}")
        h, w = self.mask.shape
        if h == 0 or w == 0:
            return np.zeros(len(xy))
        table = np.zeros((h + 1, w + 1))  # table[i, j] = tissue pixels in rows < i, columns < j
        table[1:, 1:] = self.mask.cumsum(0, dtype=np.int64).cumsum(1)
        x0, y0 = xy[:, 0] / self.downsample, xy[:, 1] / self.downsample
        side = size0 / self.downsample
        x1, y1 = x0 + side, y0 + side
        f = _integral
        inside = f(table, x1, y1) - f(table, x0, y1) - f(table, x1, y0) + f(table, x0, y0)
        return np.clip(inside / (side * side), 0.0, 1.0)

    def polygons(self, *, simplify_px: float = 1.0) -> list[Polygon]:
        """Outline every 8-connected tissue component, with its holes, in level-0 coordinates.

        Args:
            simplify_px: Douglas-Peucker tolerance in mask pixels; 0 keeps every vertex.

        Returns:
            One :class:`Polygon` per component, oriented as documented there.
        """
        # scipy and scikit-image load on first use: `import histoguard` stays fast.
        from scipy import ndimage as ndi
        from skimage.measure import approximate_polygon, find_contours

        labels, _ = ndi.label(self.mask, structure=_EIGHT)
        polys: list[Polygon] = []
        for k, box in enumerate(ndi.find_objects(labels), start=1):
            # Padding closes every contour; "high" joins diagonal neighbours, as the labelling.
            comp = np.pad(labels[box] == k, 1).astype(np.float64)
            rings = [
                approximate_polygon(c, simplify_px) if simplify_px > 0 else c
                for c in find_contours(comp, 0.5, fully_connected="high")
            ]
            rings = [r for r in rings if len(r) >= 4]
            if not rings:
                continue
            # Padded (row, col) → level-0 (x, y): pixel centre (i, j) is ((j + .5) ds, (i + .5) ds).
            offset = np.array([box[1].start - 0.5, box[0].start - 0.5])
            xy = [(r[:, ::-1] + offset) * self.downsample for r in rings]
            outer = int(np.argmax([abs(_signed_area(r)) for r in xy]))  # encloses all the others
            holes = tuple(_orient(r, positive=False) for i, r in enumerate(xy) if i != outer)
            polys.append(Polygon(exterior=_orient(xy[outer], positive=True), holes=holes))
        return polys


def pen_mask(rgb: NDArray[np.uint8]) -> BoolArray:
    """Pixels coloured like marker ink: red, green, blue or black.

    Rules on 8-bit values: red ink G < 0.35 R and B < 0.55 R (eosin keeps B above 0.55 R even at
    its most intense); green, cyan and most blue inks G > R + 20, or G > R when not near-white
    (H&E absorbs more green than red, so tissue has G < R); violet-blue ink B > R + 60 and
    B > G + 40; black ink mean RGB < 45, or < 100 with B < 0.85 R (markers scan as very dark
    brown-red, while H&E that dark is haematoxylin, B ≳ R). Red blood cells and dense blood can
    match the red or dark rule; :func:`detect_tissue` ignores small specks.

    Args:
        rgb: (H, W, 3) uint8 RGB image.

    Returns:
        (H, W) bool, True = ink. Raises ValueError if rgb is not (H, W, 3) uint8.
    """
    _check_rgb(rgb)
    r, g, b = (rgb[..., k].astype(np.int16) for k in range(3))
    total = r + g + b
    red = (r > 80) & (20 * g < 7 * r) & (20 * b < 11 * r)
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

    HSV saturation and mean brightness (3×3 median against JPEG noise) → Otsu on saturation,
    clipped → drop glass and pen ink → closing, opening → fill small holes → drop small parts.

    Args:
        thumbnail: (H, W, 3) uint8 RGB.
        downsample: level-0 pixels per thumbnail pixel, > 0.
        mpp: micrometres per level-0 pixel, > 0; a thumbnail pixel is (mpp * downsample)² µm².
        params: detection settings; default :class:`TissueParams()`.

    Returns:
        The :class:`TissueMask` at thumbnail scale.

    Raises:
        ValueError: if thumbnail is not (H, W, 3) uint8, or downsample or mpp is not a positive
            finite number.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    _check_rgb(thumbnail)
    for name, value in (("downsample", downsample), ("mpp", mpp)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value}")
    p = params or TissueParams()
    factor = math.floor(p.working_um_per_px / (mpp * downsample))
    if factor >= 2:
        height, width = thumbnail.shape[0] // factor, thumbnail.shape[1] // factor
        if min(height, width) >= 1:
            thumbnail = resize(thumbnail[: height * factor, : width * factor], width, height)
            downsample *= factor
    um_px = mpp * downsample
    rgb = thumbnail.astype(np.float64) / 255.0
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    sat = ndi.median_filter(np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0), size=3)
    bright = ndi.median_filter(rgb.mean(axis=2), size=3)

    pen = _ink(thumbnail, p, um_px) if p.reject_pen else np.zeros(sat.shape, dtype=bool)
    threshold = p.saturation_threshold
    if threshold is None:
        pool = sat[~pen]
        otsu = threshold_otsu(pool) if pool.size and pool.min() < pool.max() else 0.0
        threshold = float(np.clip(otsu, p.saturation_floor, p.saturation_ceiling))
    tissue = (sat > threshold) & (bright <= p.max_brightness) & ~pen

    radius = _radius(p.closing_radius_um, um_px)
    tissue = _morph(_morph(tissue, radius, ndi.binary_closing), radius, ndi.binary_opening)
    holes, _ = ndi.label(ndi.binary_fill_holes(tissue) & ~tissue)
    small = np.bincount(holes.ravel()) <= p.max_hole_area_um2 / um_px**2
    small[0] = False
    tissue = (tissue | small[holes]) & ~pen  # ink enclosed by tissue is still not tissue
    parts, _ = ndi.label(tissue, structure=_EIGHT)
    big = np.bincount(parts.ravel()) >= p.min_tissue_area_um2 / um_px**2
    big[0] = False
    return TissueMask(mask=big[parts], downsample=float(downsample))


def _check_rgb(rgb: NDArray[np.generic]) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB array, got {getattr(rgb, 'dtype', type(rgb))}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected shape (H, W, 3) with H, W > 0, got {rgb.shape}")


def _ink(rgb: NDArray[np.uint8], p: TissueParams, um_px: float) -> BoolArray:
    """Pen strokes: :func:`pen_mask` cleaned by a majority vote, grown over their halo."""
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    size = 2 * _radius(p.closing_radius_um, um_px) + 1
    ink = pen_mask(rgb)
    # The vote keeps strokes whose ink is patchy over tissue, and drops specks (blood, nuclei).
    pen = ndi.uniform_filter(ink.astype(np.float64), size) > 0.5
    # Out-of-focus red ink fades to a pink that passes for eosin in RGB, but keeps its optical-
    # density direction: blue absorbed about as much as green (eosin absorbs far less blue).
    od = -np.log(np.maximum(rgb, 1) / 255.0)
    red_od = (od[..., 2] > 0.8 * od[..., 1]) & (od[..., 1] > 2 * od[..., 0]) & (od[..., 1] > 0.1)
    halo = ndi.uniform_filter((ink | red_od).astype(np.float64), size) > 0.5
    if (steps := _radius(p.pen_halo_um, um_px)) > 0:
        pen = ndi.binary_dilation(pen, iterations=steps, mask=halo | pen)
    grown: BoolArray = ndi.binary_dilation(pen, disk(_radius(p.pen_margin_um, um_px)))
    return grown


def _radius(um: float, um_px: float) -> int:
    """A physical length in whole thumbnail pixels, rounded half up."""
    return int(um / um_px + 0.5)


def _morph(mask: BoolArray, radius: int, op: Callable[..., BoolArray]) -> BoolArray:
    """Binary closing or opening with a disk; edge padding keeps tissue at the border intact."""
    from skimage.morphology import disk

    if radius < 1:
        return mask
    out: BoolArray = op(np.pad(mask, radius, mode="edge"), disk(radius))
    return out[radius:-radius, radius:-radius]


def _integral(table: FloatArray, x: FloatArray, y: FloatArray) -> FloatArray:
    """Integral of the mask over [0, x] × [0, y] (mask pixels): bilinear interpolation of its
    summed-area table is exact for a pixelwise-constant mask; clipping makes outside empty."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    x, y = np.clip(x, 0, w), np.clip(y, 0, h)
    j = np.minimum(np.floor(x).astype(np.intp), w - 1)  # the far edge uses the last cell, u = 1
    i = np.minimum(np.floor(y).astype(np.intp), h - 1)
    u, v = x - j, y - i
    top = table[i, j] * (1 - u) + table[i, j + 1] * u
    bottom = table[i + 1, j] * (1 - u) + table[i + 1, j + 1] * u
    out: FloatArray = top * (1 - v) + bottom * v
    return out


def _signed_area(ring: FloatArray) -> float:
    """Shoelace area of a closed ring, coordinates as-is: positive = counter-clockwise."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _orient(ring: FloatArray, *, positive: bool) -> FloatArray:
    """The ring, reversed if needed so that the sign of its area is the one asked for."""
    return ring if (_signed_area(ring) > 0) == positive else ring[::-1].copy()
