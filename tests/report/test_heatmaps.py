"""Attention overlays, top-tile galleries and QuPath measurement maps, and the heatmaps of
predictions: drawn at the tiles' true size, or not drawn, with a warning saying why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoguard.mil import SlidePrediction, predict
from histoguard.report import uncertainty_overlay, write_prediction_heatmaps
from histoguard.report._heatmaps import (
    UNCERTAINTY_MEASUREMENT,
    attention_geojson,
    attention_overlay,
    rank_normalise,
    top_tile_indices,
    top_tiles_gallery,
    write_heatmaps,
)
from histoguard.report._overlay import colorbar_height, colormap_lut, title_height
from histoguard.report._titles import prediction_title, uncertainty_title
from tests.mil.test_predict import clam_file, histoguard_file, save_tiny_model

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


def _dark_rows(strip: np.ndarray) -> np.ndarray:
    """Indices of the rows of an RGB strip that hold dark (text) pixels."""
    return np.flatnonzero((strip.max(axis=2) < 100).any(axis=1))


def test_overlay_has_a_title_and_a_colour_bar_legible_at_the_default_size() -> None:
    big = np.full((1536, 2048, 3), GREY, dtype=np.uint8)  # a default 2048-px thumbnail
    title = "slide-1: predicted tumour (p = 0.93)"
    scores = np.arange(12.0)
    image = np.asarray(attention_overlay(big, 1.0, grid_coords(), TILE0, scores, title=title))
    top = title_height(2048, title)
    assert image.shape == (top + 1536 + colorbar_height(1536), 2048, 3)
    title_rows = _dark_rows(image[:top])
    assert title_rows.size and np.ptp(title_rows) >= 20  # letters at least 20 px tall
    bar = image[top + 1536 :]
    lut = colormap_lut("turbo")
    gradient_end = (
        2 + np.flatnonzero((np.abs(bar[2:, 4].astype(int) - lut[0]) <= 2).all(axis=1))[-1]
    )
    labels = _dark_rows(bar[gradient_end + 1 :])
    # Two lines of text under the gradient (tick values, then captions), each 20+ px tall.
    assert labels.size and np.ptp(labels) >= 40
    plain = np.asarray(attention_overlay(big, 1.0, grid_coords(), TILE0, scores))
    assert plain.shape[0] == image.shape[0] - top


def test_small_overlays_keep_their_labels_inside_the_image() -> None:
    image = np.asarray(
        attention_overlay(thumbnail(), DOWNSAMPLE, grid_coords(), TILE0, np.ones(12), title="x")
    )
    bar = image[-colorbar_height(thumbnail().shape[0]) :]
    assert _dark_rows(bar).size  # labelled
    assert (bar[:, :2].max(axis=2) > 200).all()  # nothing cut at the left edge


def _predictions(tmp_path: Path, files: list[Path], **kwargs: object) -> list[SlidePrediction]:
    model = save_tiny_model(tmp_path / "model", provenance={})
    return predict(model, files, tmp_path / "pred", **kwargs)  # type: ignore[arg-type]


def _tile_width(geojson: Path) -> float:
    corners = json.loads(geojson.read_text())["features"][0]["geometry"]["coordinates"][0]
    return float(corners[2][0] - corners[0][0])


@pytest.mark.parametrize(
    ("name", "attrs", "size0"),
    [
        ("clam-level0", {"patch_size": 256, "patch_level": 0}, 256),
        ("clam-level1", {"patch_size": 256, "patch_level": 1, "downsample": [2.0, 2.0]}, 512),
        ("trident", {"patch_size": 256, "patch_size_level0": 512, "target_magnification": 20}, 512),
    ],
)
def test_clam_and_trident_tiles_are_drawn_at_their_size(
    tmp_path: Path, name: str, attrs: dict[str, object], size0: int
) -> None:
    file = clam_file(tmp_path / f"{name}.h5", **attrs)
    (prediction,) = _predictions(tmp_path, [file])
    assert prediction.tile_size0 == size0
    drawn = write_prediction_heatmaps([prediction], tmp_path / "maps")
    assert _tile_width(drawn.paths[name]["geojson"]) == size0
    # The file names no slide: no overlay on a blank canvas, and a warning that says so.
    assert "attention" not in drawn.paths[name]
    (warning,) = drawn.warnings
    assert str(file) in warning and "cannot reopen the slide" in warning and "--slide" in warning


def test_clam_level_without_downsample_is_read_from_the_given_slide(
    tmp_path: Path, known_slide: Path
) -> None:
    file = clam_file(tmp_path / f"{known_slide.stem}.h5", patch_size=128, patch_level=1)
    (prediction,) = _predictions(tmp_path, [file], slides=[known_slide])
    assert prediction.tile_size0 == 256 and prediction.slide_path == known_slide
    drawn = write_prediction_heatmaps([prediction], tmp_path / "maps")
    assert drawn.warnings == ()
    paths = drawn.paths[known_slide.stem]
    assert _tile_width(paths["geojson"]) == 256
    with Image.open(paths["attention"]) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert _dark_rows(pixels[:20]).size  # titled


def test_unknown_tile_size_draws_nothing_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = clam_file(tmp_path / "bare.h5", patch_size=256, patch_level=1)
    (prediction,) = _predictions(tmp_path, [file])
    assert prediction.tile_size0 is None
    drawn = write_prediction_heatmaps([prediction], tmp_path / "maps")
    assert drawn.paths == {} and not list((tmp_path / "maps").iterdir())  # no 1-px GeoJSON
    (warning,) = drawn.warnings
    assert str(file) in warning and "level-0 pixels" in warning and "--slide" in warning
    assert warning in caplog.text


def test_a_slide_that_cannot_be_reopened_is_a_warning_not_a_white_map(tmp_path: Path) -> None:
    gone = tmp_path / "moved-away.svs"
    file = histoguard_file(
        tmp_path / "s1.h5", slide_path=str(gone), level0_tile_size=256, slide_mpp=0.5
    )
    (prediction,) = _predictions(tmp_path, [file])
    drawn = write_prediction_heatmaps([prediction], tmp_path / "maps")
    assert set(drawn.paths["s1"]) == {"geojson"}
    assert not (tmp_path / "maps" / "s1.attention.png").exists()
    (warning,) = drawn.warnings
    assert str(gone) in warning and "cannot reopen the slide" in warning


def test_tile_folders_get_galleries_of_the_most_and_least_attended_tiles(tmp_path: Path) -> None:
    folder = tmp_path / "P001"
    folder.mkdir()
    names = [f"t{i}.png" for i in range(6)]
    for i, name in enumerate(names):
        # Tile i is a grey of brightness 40 * i, so a gallery cell shows which tile it is, with
        # a light corner mark (a one-colour tile is refused as blank).
        tile = np.full((50, 70, 3), 40 * i, np.uint8)
        tile[:5, :5] = 255 - 40 * i
        Image.fromarray(tile).save(folder / name)
    attention = np.array([0.05, 0.3, 0.1, 0.4, 0.05, 0.1])
    prediction = SlidePrediction(
        slide="P001", probabilities={"normal": 0.4, "tumour": 0.6}, predicted="tumour",
        attention=attention, coords=np.zeros((6, 2), np.int64), slide_path=folder,
        tile_names=tuple(names),
    )  # fmt: skip
    drawn = write_prediction_heatmaps([prediction], tmp_path / "maps", top_k=2)
    assert drawn.warnings == ()
    assert set(drawn.paths["P001"]) == {"top_tiles", "least_attended"}
    top = np.asarray(Image.open(drawn.paths["P001"]["top_tiles"]))
    least = np.asarray(Image.open(drawn.paths["P001"]["least_attended"]))
    side = 160  # GALLERY_TILE_PX, cells 4 px apart
    assert top.shape[:2] == least.shape[:2] == (4 + side + 4, 4 + 2 * (side + 4))
    # Bottom-right pixel of each cell (below the rank label): tile 3 then tile 1 are the most
    # attended; the least attended are tiles 4 and 0 (equal attention, the later row first).
    cells = [(4 + side - 1, 4 + side - 1), (4 + side - 1, 8 + 2 * side - 1)]
    assert [int(top[y, x, 0]) for y, x in cells] == [120, 40]
    assert sorted(int(least[y, x, 0]) for y, x in cells) == [0, 160]


def test_a_tile_folder_without_names_gets_no_gallery(tmp_path: Path) -> None:
    folder = tmp_path / "P001"
    folder.mkdir()
    prediction = SlidePrediction(
        slide="P001", probabilities={"normal": 0.4, "tumour": 0.6}, predicted="tumour",
        attention=np.array([0.5, 0.5]), coords=np.zeros((2, 2), np.int64), slide_path=folder,
    )  # fmt: skip
    drawn = write_prediction_heatmaps([prediction], tmp_path / "maps")
    assert drawn.paths == {}
    (warning,) = drawn.warnings
    assert "does not name its tiles" in warning


def test_prediction_title_names_the_slide_class_and_probability(tmp_path: Path) -> None:
    prediction = SlidePrediction(
        slide="s1", probabilities={"normal": 0.25, "tumour": 0.75}, predicted="tumour",
        attention=None,
    )  # fmt: skip
    assert prediction_title(prediction) == "s1: predicted tumour (p = 0.75)"
    drawn = write_prediction_heatmaps([prediction], tmp_path)  # no attention: nothing to draw
    assert drawn.paths == {} and drawn.warnings == () and not list(tmp_path.iterdir())


def test_histoguard_file_on_its_slide_gets_overlay_gallery_and_map(
    tmp_path: Path, known_slide: Path
) -> None:
    from histoguard.slide import TileSpec

    spec = TileSpec.for_slide(slide_mpp=0.25, level_downsamples=[1, 2, 4], mpp=0.5, tile_size=128)
    assert spec.level0_tile_size == 256
    file = histoguard_file(tmp_path / "known.h5", **spec.to_dict(), slide_path=str(known_slide))
    (prediction,) = _predictions(tmp_path, [file])
    assert prediction.slide_path == known_slide and prediction.tile_size0 == 256
    drawn = write_prediction_heatmaps([prediction], tmp_path / "maps", top_k=5)
    assert drawn.warnings == ()
    paths = drawn.paths["known"]
    # predict gives every tile its uncertainty, drawn beside the attention.
    assert set(paths) == {"attention", "geojson", "top_tiles", "uncertainty"}
    with Image.open(paths["top_tiles"]) as image:
        assert image.size == (4 + 5 * (128 + 4), 4 + 128 + 4)
    with Image.open(paths["attention"]) as image:
        assert image.size[0] == 2048  # the slide's thumbnail, not a stand-in canvas


# --- the trust readings: decision titles, tile uncertainty -------------------------------------


def _trust_prediction(**fields: object) -> SlidePrediction:
    defaults: dict[str, object] = {
        "slide": "s1", "probabilities": {"normal": 0.03, "tumour": 0.97},
        "predicted": "tumour", "attention": None,
    }  # fmt: skip
    return SlidePrediction(**{**defaults, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "title"),
    [
        ({}, "s1: predicted tumour (p = 0.97)"),  # no decision: the title of before
        (
            {"decision": "tumour", "prediction_set": ("tumour",)},
            "s1: tumour (p = 0.97; set {tumour})",
        ),
        ({"decision": "tumour"}, "s1: tumour (p = 0.97)"),  # no conformal calibration: no set
        (
            {"decision": "review", "reason": "out-of-distribution", "ood_p_value": 0.003},
            "s1: review: out of distribution (gate p = 0.003)",
        ),
        (
            {"decision": "review", "reason": "out-of-distribution"},
            "s1: review: out of distribution",  # no gate p-value to show
        ),
        (
            {"decision": "review", "reason": "uncertain", "prediction_set": ("normal", "tumour")},
            "s1: review: uncertain (set {normal, tumour})",
        ),
        ({"decision": "review", "reason": "uncertain"}, "s1: review: uncertain (empty set)"),
        (
            {"decision": "review", "reason": "batch drift", "ood_p_value": 0.4},
            "s1: review: batch drift",
        ),
        ({"decision": "review"}, "s1: review"),
    ],
)
def test_prediction_title_shows_the_decision_and_its_evidence(
    fields: dict[str, object], title: str
) -> None:
    assert prediction_title(_trust_prediction(**fields)) == title


def test_uncertainty_title_gives_the_slide_entropy_when_known() -> None:
    assert uncertainty_title(_trust_prediction()) == "s1: tile uncertainty"
    known = _trust_prediction(uncertainty={"entropy": 0.4123, "variance": 0.01})
    assert uncertainty_title(known) == "s1: tile uncertainty (slide entropy 0.41 nats)"


def test_uncertainty_overlay_paints_by_value_on_zero_to_ln_c() -> None:
    coords = grid_coords()
    ln3 = np.log(3)
    entropy = np.full(12, np.nan)
    entropy[[0, 1, 2]] = [0.0, ln3 / 2, ln3]
    alpha = 0.5
    image = uncertainty_overlay(thumbnail(), DOWNSAMPLE, coords, TILE0, entropy, 3, alpha=alpha)
    thumb_h, thumb_w = thumbnail().shape[:2]
    assert image.size == (thumb_w, thumb_h + colorbar_height(thumb_h))
    pixels = np.asarray(image)
    lut = colormap_lut("viridis").astype(float)
    for index, colour in ((0, lut[0]), (1, lut[128]), (2, lut[-1])):
        expected = np.round((1 - alpha) * GREY + alpha * colour)
        assert np.all(np.abs(tile_pixels(pixels, coords[index]) - expected) <= 1), index
    assert np.all(tile_pixels(pixels, coords[5]) == GREY)  # NaN: not painted
    # By value, not by rank: a slide uncertain everywhere is the top colour everywhere.
    uniform = np.asarray(
        uncertainty_overlay(thumbnail(), DOWNSAMPLE, coords, TILE0, np.full(12, ln3), 3)
    )
    top_colour = np.round(0.5 * GREY + 0.5 * lut[-1])
    assert all(np.all(np.abs(tile_pixels(uniform, c) - top_colour) <= 1) for c in coords)
    bar_row = pixels[thumb_h + 4]
    assert np.abs(bar_row[4].astype(int) - lut[0]).max() <= 2
    assert np.abs(bar_row[-5].astype(int) - lut[-1]).max() <= 2


def test_uncertainty_overlay_rejects_entropy_outside_zero_to_ln_c() -> None:
    coords = grid_coords()
    with pytest.raises(ValueError, match="ln 2"):  # ln 3 nats cannot come from two classes
        uncertainty_overlay(thumbnail(), DOWNSAMPLE, coords, TILE0, np.full(12, np.log(3)), 2)
    with pytest.raises(ValueError, match="n_classes"):
        uncertainty_overlay(thumbnail(), DOWNSAMPLE, coords, TILE0, np.zeros(12), 1)
    # float32 rounding just above ln C is a uniform prediction, not an error
    near = np.full(12, np.float32(np.log(2)), dtype=np.float32)
    uncertainty_overlay(thumbnail(), DOWNSAMPLE, coords, TILE0, near, 2)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _entropy_of(measurements: dict[str, float | None]) -> float | None:
    return measurements[UNCERTAINTY_MEASUREMENT]


def test_write_heatmaps_draws_uncertainty_beside_attention(tmp_path: Path) -> None:
    coords = grid_coords()
    rng = np.random.default_rng(1)
    scores = rng.dirichlet(np.ones(12))
    entropy = rng.uniform(0.0, np.log(2), 12)
    entropy[3] = np.nan
    paths = write_heatmaps(
        tmp_path, "s", thumbnail=thumbnail(), downsample=DOWNSAMPLE, coords=coords,
        tile_size0=TILE0, scores=scores, tile_uncertainty=entropy, n_classes=2,
        title="s: tumour (p = 0.97)", uncertainty_title="s: tile uncertainty",
    )  # fmt: skip
    assert set(paths) == {"attention", "geojson", "uncertainty"}
    assert paths["uncertainty"].name == "s.uncertainty.png"
    for key in ("attention", "uncertainty"):
        assert paths[key].read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(paths[key]) as image:
            image.verify()
    with Image.open(paths["attention"]) as a, Image.open(paths["uncertainty"]) as u:
        assert a.size[0] == u.size[0] == thumbnail().shape[1]
        assert u.size[1] >= thumbnail().shape[0] + colorbar_height(thumbnail().shape[0])
    features = json.loads(paths["geojson"].read_text())["features"]
    assert len(features) == 12
    for i, feature in enumerate(features):
        measurements = feature["properties"]["measurements"]
        assert set(measurements) == {"attention", "attention rank", UNCERTAINTY_MEASUREMENT}
        assert measurements["attention"] == pytest.approx(scores[i])
        if i == 3:
            assert _entropy_of(measurements) is None
        else:
            assert _entropy_of(measurements) == pytest.approx(entropy[i])
    with pytest.raises(ValueError, match="n_classes"):
        write_heatmaps(
            tmp_path, "t", thumbnail=None, downsample=1.0, coords=coords, tile_size0=TILE0,
            scores=scores, tile_uncertainty=entropy,
        )  # fmt: skip


def _on_known_slide(known_slide: Path, **fields: object) -> SlidePrediction:
    """A prediction on ``known_slide``'s tissue: 8 x 6 tiles of 256 level-0 px."""
    xs, ys = np.meshgrid(512 + 256 * np.arange(8), 512 + 256 * np.arange(6))
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)
    attention = np.random.default_rng(2).dirichlet(np.ones(len(coords)))
    return _trust_prediction(
        slide="known", attention=attention, coords=coords, tile_size0=256.0,
        slide_path=known_slide, **fields,
    )  # fmt: skip


def test_prediction_with_tile_uncertainty_gets_its_map_and_measurement(
    tmp_path: Path, known_slide: Path
) -> None:
    entropy = np.linspace(0.0, np.log(2), 48)
    prediction = _on_known_slide(
        known_slide, tile_uncertainty=entropy, decision="review", reason="out-of-distribution",
        ood_p_value=0.003, uncertainty={"entropy": 0.5},
    )  # fmt: skip
    drawn = write_prediction_heatmaps([prediction], tmp_path / "maps")
    assert drawn.warnings == ()
    paths = drawn.paths["known"]
    assert set(paths) == {"attention", "geojson", "uncertainty"}  # no tile spec: no gallery
    assert paths["uncertainty"] == tmp_path / "maps" / "known.uncertainty.png"
    with Image.open(paths["attention"]) as a, Image.open(paths["uncertainty"]) as u:
        assert a.size[0] == u.size[0] == 2048  # both on the slide's thumbnail
        titled = np.asarray(a.convert("RGB"))
    features = json.loads(paths["geojson"].read_text())["features"]
    measurements = [f["properties"]["measurements"] for f in features]
    np.testing.assert_allclose([_entropy_of(m) for m in measurements], entropy)
    # The decision is in the title: the same map with no decision differs only above the map.
    undecided = _on_known_slide(known_slide)
    plain = write_prediction_heatmaps([undecided], tmp_path / "plain")
    with Image.open(plain.paths["known"]["attention"]) as image:
        untitled = np.asarray(image.convert("RGB"))
    top = title_height(2048, prediction_title(prediction))
    assert top == title_height(2048, prediction_title(undecided))
    assert titled.shape == untitled.shape
    assert (titled[:top] != untitled[:top]).any()
    assert np.array_equal(titled[top:], untitled[top:])


def test_prediction_without_tile_uncertainty_writes_no_uncertainty_file(
    tmp_path: Path, known_slide: Path
) -> None:
    drawn = write_prediction_heatmaps([_on_known_slide(known_slide)], tmp_path)
    assert drawn.warnings == ()
    assert set(drawn.paths["known"]) == {"attention", "geojson"}
    assert not list(tmp_path.glob("*.uncertainty.png"))
    feature = json.loads(drawn.paths["known"]["geojson"].read_text())["features"][0]
    assert set(feature["properties"]["measurements"]) == {"attention", "attention rank"}


def test_tile_uncertainty_of_the_wrong_length_is_a_warning(
    tmp_path: Path, known_slide: Path
) -> None:
    prediction = _on_known_slide(known_slide, tile_uncertainty=np.zeros(5))
    drawn = write_prediction_heatmaps([prediction], tmp_path)
    assert set(drawn.paths["known"]) == {"attention", "geojson"}
    (warning,) = drawn.warnings
    assert "tile uncertainty not drawn" in warning and "48 tiles" in warning


def test_without_the_slide_the_geojson_still_carries_tile_uncertainty(tmp_path: Path) -> None:
    entropy = np.full(12, 0.25)
    prediction = _trust_prediction(
        attention=np.full(12, 1 / 12), coords=grid_coords(), tile_size0=TILE0,
        tile_uncertainty=entropy,
    )  # fmt: skip
    drawn = write_prediction_heatmaps([prediction], tmp_path)
    assert set(drawn.paths["s1"]) == {"geojson"}
    (warning,) = drawn.warnings
    assert "attention and uncertainty overlays not drawn" in warning
    features = json.loads(drawn.paths["s1"]["geojson"].read_text())["features"]
    assert [_entropy_of(f["properties"]["measurements"]) for f in features] == [0.25] * 12
