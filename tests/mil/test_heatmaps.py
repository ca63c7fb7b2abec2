"""Attention overlays, top-tile galleries and QuPath measurement maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoguard.report._heatmaps import (
    attention_geojson,
    attention_overlay,
    colorbar_height,
    colormap_lut,
    rank_normalise,
    top_tile_indices,
    top_tiles_gallery,
    write_heatmaps,
)

#: A 4 x 3 grid of 512-px tiles on a 2048 x 1536 level-0 slide, thumbnail downsample 8.
DOWNSAMPLE = 8.0
TILE0 = 512.0
GREY = 200


def grid_coords() -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(4) * 512, np.arange(3) * 512)
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)


def thumbnail() -> np.ndarray:
    return np.full((1536 // 8, 2048 // 8, 3), GREY, dtype=np.uint8)


def tile_pixels(image: np.ndarray, corner: np.ndarray) -> np.ndarray:
    """The thumbnail pixels strictly inside a tile (one pixel margin)."""
    x0, y0 = (corner / DOWNSAMPLE).astype(int)
    side = int(TILE0 / DOWNSAMPLE)
    return image[y0 + 1 : y0 + side - 1, x0 + 1 : x0 + side - 1].reshape(-1, 3)


def test_colormaps_run_from_dark_blue_to_red_or_yellow() -> None:
    turbo = colormap_lut("turbo")
    assert turbo.shape == (256, 3) and turbo.dtype == np.uint8
    assert turbo[0, 2] > turbo[0, 0]  # low end blue-ish
    assert turbo[-1, 0] > 100 and turbo[-1, 0] > 4 * turbo[-1, 2]  # high end dark red
    viridis = colormap_lut("viridis")
    assert tuple(viridis[-1]) == (253, 231, 37)
    with pytest.raises(ValueError, match="colormap"):
        colormap_lut("jet")  # type: ignore[arg-type]


def test_rank_normalise() -> None:
    np.testing.assert_allclose(rank_normalise([10.0, 0.1, 5.0, 5.0]), [1.0, 0.0, 0.5, 0.5])
    assert rank_normalise([3.0])[0] == 1.0
    out = rank_normalise([1.0, np.nan, 2.0])
    assert np.isnan(out[1]) and out[2] == 1.0
    # A softmax-like tail does not squash the rest of the slide to one colour.
    np.testing.assert_allclose(rank_normalise([1e-6, 2e-6, 0.99]), [0.0, 0.5, 1.0])


def test_overlay_paints_the_top_tile_in_the_top_colour() -> None:
    coords = grid_coords()
    scores = np.linspace(0.0, 1.0, len(coords)) ** 4  # heavy-tailed, like attention
    best, worst = int(np.argmax(scores)), int(np.argmin(scores))
    alpha = 0.6
    image = attention_overlay(thumbnail(), DOWNSAMPLE, coords, TILE0, scores, alpha=alpha)
    thumb_h, thumb_w = thumbnail().shape[:2]
    assert image.mode == "RGB"
    assert image.size == (thumb_w, thumb_h + colorbar_height(thumb_h))
    pixels = np.asarray(image)
    lut = colormap_lut("turbo").astype(float)
    for index, colour in ((best, lut[-1]), (worst, lut[0])):
        expected = np.round((1 - alpha) * GREY + alpha * colour)
        region = tile_pixels(pixels, coords[index])
        assert np.all(np.abs(region - expected) <= 1), index


def test_overlay_leaves_untiled_and_nan_tiles_alone() -> None:
    coords = grid_coords()[:2]
    image = np.asarray(attention_overlay(thumbnail(), DOWNSAMPLE, coords, TILE0, [np.nan, 1.0]))
    assert np.all(tile_pixels(image, coords[0]) == GREY)  # NaN score: not painted
    assert np.all(tile_pixels(image, np.array([1024, 1024])) == GREY)  # no tile there
    assert not np.all(tile_pixels(image, coords[1]) == GREY)


def test_overlay_colour_bar_runs_low_to_high() -> None:
    image = np.asarray(
        attention_overlay(thumbnail(), DOWNSAMPLE, grid_coords(), TILE0, np.ones(12))
    )
    bar_row = image[thumbnail().shape[0] + 4]
    lut = colormap_lut("turbo")
    assert np.abs(bar_row[4].astype(int) - lut[0]).max() <= 2
    assert np.abs(bar_row[-5].astype(int) - lut[-1]).max() <= 2


def test_overlay_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="scores"):
        attention_overlay(thumbnail(), DOWNSAMPLE, grid_coords(), TILE0, np.ones(3))
    with pytest.raises(ValueError, match="uint8"):
        attention_overlay(thumbnail().astype(float), DOWNSAMPLE, grid_coords(), TILE0, np.ones(12))


def coloured_tiles(k: int, size: int = 48) -> np.ndarray:
    """Tile i is uniformly (10 * i, 255 - 10 * i, 128)."""
    colours = np.stack([10 * np.arange(k), 255 - 10 * np.arange(k), np.full(k, 128)], axis=1)
    return np.broadcast_to(colours[:, None, None, :], (k, size, size, 3)).astype(np.uint8).copy()


def test_gallery_orders_by_score_highest_first() -> None:
    tiles = coloured_tiles(10)
    scores = np.array([0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.0, 0.6, 0.4])
    gallery = top_tiles_gallery(tiles, scores, columns=4, label=True)
    size, gap = 48, 4
    assert gallery.size == (gap + 4 * (size + gap), gap + 3 * (size + gap))
    pixels = np.asarray(gallery)
    for rank, index in enumerate(np.argsort(-scores)):
        x = gap + (rank % 4) * (size + gap)
        y = gap + (rank // 4) * (size + gap)
        # Bottom-right corner of the cell: clear of the label.
        assert tuple(pixels[y + size - 3, x + size - 3]) == tuple(tiles[index, 0, 0]), rank
    labelled = np.asarray(top_tiles_gallery(tiles, scores, columns=4, label=True))
    plain = np.asarray(top_tiles_gallery(tiles, scores, columns=4, label=False))
    assert (labelled != plain).any()


def test_gallery_with_few_tiles_is_one_short_row() -> None:
    gallery = top_tiles_gallery(coloured_tiles(3), np.array([1.0, 2.0, np.nan]), columns=8)
    assert gallery.size == (4 + 3 * 52, 4 + 52)
    with pytest.raises(ValueError, match="tiles"):
        top_tiles_gallery(np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0))


def test_top_tile_indices() -> None:
    np.testing.assert_array_equal(top_tile_indices([0.2, np.nan, 0.9, 0.2, 0.5], 3), [2, 4, 0])
    assert len(top_tile_indices([1.0, 2.0], 5)) == 2


def test_geojson_has_one_tile_per_score_with_its_measurements() -> None:
    coords = grid_coords()
    scores = np.linspace(0.0, 1.0, 12) ** 2
    scores[5] = np.nan
    collection = attention_geojson(coords, TILE0, scores, name="attention")
    features = collection["features"]
    assert isinstance(features, list) and len(features) == 12
    json.dumps(collection, allow_nan=False)
    ranks = rank_normalise(scores)
    for i, feature in enumerate(features):
        measurements = feature["properties"]["measurements"]
        if i == 5:
            assert measurements == {"attention": None, "attention rank": None}
            continue
        assert measurements["attention"] == pytest.approx(scores[i])
        assert measurements["attention rank"] == pytest.approx(ranks[i])
        x, y = coords[i]
        assert feature["geometry"]["coordinates"][0][2] == [x + TILE0, y + TILE0]


def test_write_heatmaps_writes_readable_files(tmp_path: Path) -> None:
    coords = grid_coords()
    scores = np.random.default_rng(0).dirichlet(np.ones(12))
    k = 5
    tiles = coloured_tiles(12)[top_tile_indices(scores, k)]
    paths = write_heatmaps(
        tmp_path / "out", "slide-1", thumbnail=thumbnail(), downsample=DOWNSAMPLE,
        coords=coords, tile_size0=TILE0, scores=scores, top_tiles=tiles,
    )  # fmt: skip
    assert set(paths) == {"attention", "geojson", "top_tiles"}
    assert paths["attention"].name == "slide-1.attention.png"
    assert paths["top_tiles"].name == "slide-1.top_tiles.png"
    assert paths["geojson"].name == "slide-1.attention.geojson"
    with Image.open(paths["attention"]) as image:
        assert image.size[0] == thumbnail().shape[1]
    with Image.open(paths["top_tiles"]) as image:
        assert image.size == (4 + k * 52, 4 + 52)
    assert len(json.loads(paths["geojson"].read_text())["features"]) == 12
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_write_heatmaps_without_thumbnail_draws_on_white(tmp_path: Path) -> None:
    coords = grid_coords() * 100  # a large slide: the canvas must still be small
    paths = write_heatmaps(
        tmp_path, "s", thumbnail=None, downsample=1.0, coords=coords,
        tile_size0=TILE0 * 100, scores=np.arange(12.0),
    )  # fmt: skip
    assert "top_tiles" not in paths
    with Image.open(paths["attention"]) as image:
        assert max(image.size) <= 2048
        assert np.asarray(image)[0, 0].tolist() != [255, 255, 255]  # tile 0 is painted
