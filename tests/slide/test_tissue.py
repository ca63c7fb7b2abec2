"""Tissue detection: synthetic truth, exact tile fractions, outlines, and the real fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from PIL import Image
from skimage.draw import disk, line, polygon, rectangle

from histoguard.slide import Polygon, TissueMask, TissueParams, detect_tissue, pen_mask
from histoguard.slide._tissue import _signed_area

# Synthetic thumbnails at 8 µm per pixel (0.5 µm/px slide, downsample 16): the default minimum
# area is 781 px, the largest filled hole 312 px, the closing radius 2 px.
MPP, DS = 0.5, 16.0
SHAPE = (400, 400)
EOSIN, HAEMATOXYLIN = np.array([232, 150, 192]), np.array([150, 88, 172])


def _iou(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    return float((a & b).sum() / (a | b).sum())


def _paint(image: NDArray[np.float64], mask: NDArray[np.bool_], rgb: tuple[int, int, int]) -> None:
    image[mask] = rgb


def _mask(shape: tuple[int, int], rr: NDArray[np.intp], cc: NDArray[np.intp]) -> NDArray[np.bool_]:
    out = np.zeros(shape, dtype=bool)
    out[rr, cc] = True
    return out


def _synthetic() -> dict[str, NDArray]:
    """A glass background with H&E-like tissue, holes, a speck and four pen strokes."""
    rng = np.random.default_rng(7)
    disc = _mask(SHAPE, *disk((130, 130), 90, shape=SHAPE))
    lumen = _mask(SHAPE, *disk((110, 150), 22, shape=SHAPE))  # 1,513 px: stays a hole
    pinhole = _mask(SHAPE, *disk((170, 90), 6, shape=SHAPE))  # 109 px: filled
    block = _mask(SHAPE, *rectangle((250, 200), end=(369, 379), shape=SHAPE))
    speck = _mask(SHAPE, *disk((340, 60), 10, shape=SHAPE))  # 305 px: dropped
    green = _mask(SHAPE, *rectangle((20, 250), end=(31, 389), shape=SHAPE))
    blue = _mask(SHAPE, *rectangle((60, 300), end=(200, 311), shape=SHAPE))
    red = _mask(SHAPE, *rectangle((380, 20), end=(391, 170), shape=SHAPE))
    black = np.zeros(SHAPE, dtype=bool)
    for off in range(-3, 4):  # a 7 px wide marker line across the block and onto the glass
        rr, cc = line(230 + off, 180, 390 + off, 390)
        keep = (rr >= 0) & (rr < SHAPE[0]) & (cc >= 0) & (cc < SHAPE[1])
        black[rr[keep], cc[keep]] = True
    tissue = (disc & ~lumen & ~pinhole) | block | speck

    mix = rng.uniform(0, 1, SHAPE)[..., None]  # haematoxylin/eosin blend per pixel
    stain = mix * HAEMATOXYLIN + (1 - mix) * EOSIN
    image = np.full((*SHAPE, 3), (238.0, 236.0, 240.0))
    image[tissue] = stain[tissue]
    _paint(image, green, (50, 160, 140))
    _paint(image, blue, (40, 90, 200))
    _paint(image, red, (200, 30, 45))
    _paint(image, black, (30, 28, 34))
    image += rng.normal(0, 4, image.shape)
    truth = (disc & ~lumen) | block
    return {
        "rgb": np.clip(image, 0, 255).astype(np.uint8),
        "truth": truth & ~black,
        "lumen": lumen,
        "pinhole": pinhole,
        "speck": speck,
        "pen": green | blue | red | black,
    }


@pytest.fixture(scope="module")
def synthetic() -> dict[str, NDArray]:
    return _synthetic()


@pytest.fixture(scope="module")
def detected(synthetic: dict[str, NDArray]) -> TissueMask:
    return detect_tissue(synthetic["rgb"], downsample=DS, mpp=MPP)


def test_mask_matches_the_drawn_tissue(synthetic: dict[str, NDArray], detected: TissueMask) -> None:
    assert detected.mask.shape == SHAPE and detected.mask.dtype == np.bool_
    assert detected.downsample == DS
    assert _iou(detected.mask, synthetic["truth"]) > 0.95


def test_speck_dropped_big_hole_kept_small_hole_filled(
    synthetic: dict[str, NDArray], detected: TissueMask
) -> None:
    assert not detected.mask[synthetic["speck"]].any()
    assert detected.mask[synthetic["lumen"]].mean() < 0.05
    assert detected.mask[synthetic["pinhole"]].all()


def test_pen_strokes_are_not_tissue(synthetic: dict[str, NDArray], detected: TissueMask) -> None:
    assert detected.mask[synthetic["pen"]].mean() < 0.02
    # Without pen rejection the saturated strokes do pass as tissue.
    raw = detect_tissue(
        synthetic["rgb"], downsample=DS, mpp=MPP, params=TissueParams(reject_pen=False)
    )
    assert raw.mask[synthetic["pen"]].mean() > 0.3


def test_area_thresholds_scale_with_physical_size(synthetic: dict[str, NDArray]) -> None:
    # The 305 px speck is 19,520 µm² at 8 µm/px but 78,080 µm² at 16 µm/px, where it stays.
    coarse = detect_tissue(synthetic["rgb"], downsample=2 * DS, mpp=MPP)
    assert coarse.mask[synthetic["speck"]].mean() > 0.9


def test_pen_mask_separates_ink_from_stain() -> None:
    stains = [(232, 150, 192), (203, 85, 122), (150, 88, 172), (84, 27, 94), (212, 159, 183)]
    inks = [(200, 30, 45), (106, 38, 58), (50, 160, 140), (40, 90, 200), (30, 28, 34)]
    rgb = np.array([stains, inks], dtype=np.uint8)
    assert pen_mask(rgb).tolist() == [[False] * 5, [True] * 5]


@pytest.mark.parametrize(
    ("image", "kwargs"),
    [
        (np.zeros((10, 10, 3), dtype=np.float32), {}),
        (np.zeros((10, 10), dtype=np.uint8), {}),
        (np.zeros((10, 10, 4), dtype=np.uint8), {}),
        (np.zeros((0, 10, 3), dtype=np.uint8), {}),
        (np.zeros((10, 10, 3), dtype=np.uint8), {"mpp": 0.0}),
        (np.zeros((10, 10, 3), dtype=np.uint8), {"downsample": -1.0}),
        (np.zeros((10, 10, 3), dtype=np.uint8), {"mpp": float("nan")}),
    ],
)
def test_detect_tissue_rejects_bad_input(image: NDArray, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        detect_tissue(image, **{"downsample": 4.0, "mpp": 0.5, **kwargs})


def test_blank_glass_has_no_tissue() -> None:
    glass = np.full((64, 64, 3), 240, dtype=np.uint8)
    assert detect_tissue(glass, downsample=8, mpp=0.5).area_fraction() == 0.0


# --- tile fractions -------------------------------------------------------------------------


def test_tile_fractions_exact_for_pixel_aligned_tiles() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[:, :4] = True  # left half tissue
    tm = TissueMask(mask=mask, downsample=4.0)  # 32 x 32 level-0 px
    coords = np.array([[0, 0], [16, 16], [8, 0], [0, 16], [-8, 0], [24, 24], [40, 0]])
    got = tm.tile_fractions(coords, 16.0)
    np.testing.assert_array_equal(got, [1.0, 0.0, 0.5, 1.0, 0.5, 0.0, 0.0])
    assert got.dtype == np.float64


def test_tile_fractions_handle_fractional_pixels() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 1] = True
    tm = TissueMask(mask=mask, downsample=2.0)  # the pixel covers level-0 [2, 4) x [2, 4)
    got = tm.tile_fractions(np.array([[3, 3], [1, 1], [0, 0]]), 2.0)
    np.testing.assert_allclose(got, [0.25, 0.25, 0.0])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(1, 4),
    side=st.integers(1, 24),
    corners=st.lists(st.tuples(st.integers(-12, 40), st.integers(-12, 40)), min_size=1, max_size=8),
)
def test_tile_fractions_equal_brute_force(
    seed: int, k: int, side: int, corners: list[tuple[int, int]]
) -> None:
    # Tiles on a 1/k-pixel grid: counting on the mask upsampled k times is exact.
    mask = np.random.default_rng(seed).random((7, 9)) > 0.5
    fine = np.pad(np.kron(mask, np.ones((k, k), dtype=bool)), 40)  # outside = background
    expect = [fine[y + 40 : y + 40 + side, x + 40 : x + 40 + side].mean() for x, y in corners]
    # One fine pixel = 2 level-0 px, so the mask's downsample is 2k.
    tm = TissueMask(mask=mask, downsample=2.0 * k)
    got = tm.tile_fractions(2 * np.array(corners, dtype=np.int64), 2.0 * side)
    np.testing.assert_allclose(got, expect, atol=1e-9)


def test_tile_fractions_reject_bad_arguments() -> None:
    tm = TissueMask(mask=np.ones((4, 4), dtype=bool), downsample=1.0)
    with pytest.raises(ValueError):
        tm.tile_fractions(np.zeros((3, 3), dtype=np.int64), 2.0)
    with pytest.raises(ValueError):
        tm.tile_fractions(np.zeros((3, 2), dtype=np.int64), 0.0)


def test_tissue_mask_validates_itself() -> None:
    with pytest.raises(ValueError):
        TissueMask(mask=np.ones((4, 4)), downsample=1.0)
    with pytest.raises(ValueError):
        TissueMask(mask=np.ones((4, 4), dtype=bool), downsample=0.0)


# --- polygons -------------------------------------------------------------------------------


def _rasterise(polys: list[Polygon], shape: tuple[int, int], ds: float) -> NDArray[np.bool_]:
    """Fill each polygon (exterior minus holes) at mask-pixel centres, x = (col + 0.5) * ds."""
    out = np.zeros(shape, dtype=bool)
    for poly in polys:
        filled = np.zeros(shape, dtype=bool)
        for ring, value in [(poly.exterior, True)] + [(h, False) for h in poly.holes]:
            rr, cc = polygon(ring[:, 1] / ds - 0.5, ring[:, 0] / ds - 0.5, shape)
            filled[rr, cc] = value
        out |= filled
    return out


def test_polygons_rasterise_back_to_the_mask(detected: TissueMask) -> None:
    polys = detected.polygons()
    assert _iou(_rasterise(polys, SHAPE, DS), detected.mask) > 0.95
    assert sum(len(p.holes) for p in polys) >= 1  # the lumen


def test_rings_are_closed_and_oriented(detected: TissueMask) -> None:
    for poly in detected.polygons(simplify_px=0.0):
        assert poly.exterior.dtype == np.float64 and poly.exterior.shape[1] == 2
        np.testing.assert_array_equal(poly.exterior[0], poly.exterior[-1])
        assert _signed_area(poly.exterior) > 0
        for hole in poly.holes:
            np.testing.assert_array_equal(hole[0], hole[-1])
            assert _signed_area(hole) < 0


def test_polygon_of_a_block_lies_on_its_pixel_edges() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:6, 3:9] = True  # level-0 x in [3*ds, 9*ds), y in [2*ds, 6*ds)
    (poly,) = TissueMask(mask=mask, downsample=4.0).polygons(simplify_px=0.0)
    x, y = poly.exterior[:, 0], poly.exterior[:, 1]
    assert (x.min(), x.max(), y.min(), y.max()) == (12.0, 36.0, 8.0, 24.0)
    assert poly.holes == ()


def test_ring_holes_and_islands_are_separate() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:18, 2:18] = True
    mask[5:15, 5:15] = False  # a hole ...
    mask[8:12, 8:12] = True  # ... with an island in it
    polys = TissueMask(mask=mask, downsample=1.0).polygons()
    assert sorted(len(p.holes) for p in polys) == [0, 1]
    assert _iou(_rasterise(polys, (20, 20), 1.0), mask) > 0.9


# --- real data ------------------------------------------------------------------------------

# The real tiles are 512 px crops at 0.25–4 µm/px. Analysed at their own scale the area limits
# (50,000 µm², 20,000 µm²) would exceed or nearly fill a whole tile, so every tile is analysed
# at 2 µm/px, the scale of the level-2 crops (4,096 level-0 px in 512 px of a ~0.25 µm/px scan):
# the minimum part is 12,500 px (4.8% of a tile), the largest filled hole 5,000 px.
TILE_MPP, TILE_DS = 0.5, 4.0
# Whole-slide thumbnails: ~16 µm/px (a ~7 mm section in 470 px).
THUMB_MPP, THUMB_DS = 0.5, 32.0
THUMBNAILS = {"diagnostic-slide-thumb-rgb.png", "wsi-blue-pen.png"}
# Out-of-focus red and dark-purple ink on glass. The red ink and its pink halo are rejected; a
# blurred dark-purple band is the colour of haematoxylin and stays (5.5% of the tile).
NO_TISSUE_LIMIT = {"no-tissue-red-pen.png": 0.08}


def _rgb(path: Path) -> NDArray[np.uint8]:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _tiles(root: Path, pattern: str) -> list[Path]:
    found = sorted((root / "qc_fixtures" / "tiles").glob(pattern))
    assert found, f"no fixture matches {pattern}"
    return found


def test_real_tissue_tiles_are_mostly_tissue(shared_data: Path) -> None:
    for path in _tiles(shared_data, "tissue-*.png"):
        fraction = detect_tissue(_rgb(path), downsample=TILE_DS, mpp=TILE_MPP).area_fraction()
        assert fraction > 0.5, (path.name, fraction)


def test_real_blank_and_pen_only_tiles_are_nearly_empty(shared_data: Path) -> None:
    paths = _tiles(shared_data, "almost-white-*.png") + _tiles(shared_data, "no-tissue*.png")
    for path in paths:
        fraction = detect_tissue(_rgb(path), downsample=TILE_DS, mpp=TILE_MPP).area_fraction()
        assert fraction < NO_TISSUE_LIMIT.get(path.name, 0.05), (path.name, fraction)


def test_real_thumbnails_find_tissue_but_not_pen(shared_data: Path) -> None:
    paths = sorted((shared_data / "qc_fixtures" / "pil-images-rgb").glob("*.png"))
    assert len(paths) >= 5
    for path in paths:
        rgb = _rgb(path)
        ds, mpp = (THUMB_DS, THUMB_MPP) if path.name in THUMBNAILS else (TILE_DS, TILE_MPP)
        tm = detect_tissue(rgb, downsample=ds, mpp=mpp)
        assert tm.area_fraction() > 0.2, path.name
        ink = pen_mask(rgb)
        if ink.mean() > 0.02:  # the pen-marked ones
            # The mask may be coarser than the image (working scale): compare at mask scale.
            step = round(tm.downsample / ds)
            ink_at_mask = ink[::step, ::step][: tm.mask.shape[0], : tm.mask.shape[1]]
            assert tm.mask[ink_at_mask].mean() < 0.1, path.name
