"""Partial tiles at the slide edge: ``edge="pad"`` tiles tissue that touches the right and bottom
edges, ``edge="drop"`` reproduces the whole-tile grid, and the choice is recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histoguard import TilingConfig, read_coords_file, tile_slide
from histoguard.errors import ConfigError
from histoguard.slide import Rectangle, open_slide, read_tiles, write_synthetic_slide
from histoguard.slide._tiling import TileSpec

#: 4000 x 3000 px at 0.25 µm/px: with 256 px level-0 tiles neither side ends on a whole tile.
WIDTH, HEIGHT = 4000, 3000
#: Tissue touching the right and bottom edges.
EDGE_TISSUE = Rectangle(x0=2816, y0=2304, x1=WIDTH, y1=HEIGHT)
CONFIG = TilingConfig(mpp=0.5, tile_size=128, min_tissue_fraction=0.25)


@pytest.fixture(scope="module")
def edge_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("edge") / "edge.tiff"
    return write_synthetic_slide(path, width=WIDTH, height=HEIGHT, shapes=[EDGE_TISSUE])


def _coverage(coords: np.ndarray, size0: int) -> float:
    """Fraction of the tissue rectangle's pixels inside at least one tile."""
    covered = np.zeros((HEIGHT, WIDTH), dtype=bool)
    for x, y in coords.tolist():
        covered[y : y + size0, x : x + size0] = True
    tissue = EDGE_TISSUE.mask(WIDTH, HEIGHT)
    return float(covered[tissue].mean())


def test_pad_tiles_the_tissue_at_the_edges_and_drop_keeps_the_old_grid(
    edge_slide: Path, tmp_path: Path
) -> None:
    tile_slide(edge_slide, tmp_path / "pad", CONFIG)
    tile_slide(edge_slide, tmp_path / "drop", TilingConfig(**{**vars(CONFIG), "edge": "drop"}))
    pad = read_coords_file(tmp_path / "pad" / "edge.h5")
    drop = read_coords_file(tmp_path / "drop" / "edge.h5")
    whole = {(x, y) for x in range(2816, 3840, 256) for y in range(2304, 2816, 256)}
    assert {tuple(c) for c in drop.coords.tolist()} == whole
    partial = {(3840, y) for y in (2304, 2560, 2816)} | {(x, 2816) for x in range(2816, 3840, 256)}
    assert {tuple(c) for c in pad.coords.tolist()} == whole | partial
    assert _coverage(drop.coords, 256) == pytest.approx((1024 * 512) / (1184 * 696))
    assert _coverage(pad.coords, 256) == 1.0
    assert (pad.attrs["edge"], drop.attrs["edge"]) == ("pad", "drop")
    assert pad.attrs["patch_size_level0"] == 256


def test_padded_tiles_are_white_beyond_the_slide(edge_slide: Path) -> None:
    with open_slide(edge_slide) as slide:
        spec = TileSpec.for_slide(
            slide_mpp=slide.mpp, level_downsamples=slide.level_downsamples, mpp=0.5, tile_size=128
        )
        corner = np.array([[3840, 2816]], dtype=np.int64)
        (read,) = list(read_tiles(slide, spec, corner, threads=1))
    assert read.tile is not None
    # Level 1 (downsample 2): the slide ends 80 px right and 92 px down into the 128 px tile.
    assert np.all(read.tile[:, 80:] == 255) and np.all(read.tile[92:, :] == 255)
    assert read.tile[:92, :80].mean() < 230  # tissue, not glass


def test_changing_the_edge_mode_redoes_the_slide(edge_slide: Path, tmp_path: Path) -> None:
    from histoguard import tile_slides

    first = tile_slides([edge_slide], tmp_path, CONFIG)
    assert first.results[0].status == "done"
    same = tile_slides([edge_slide], tmp_path, CONFIG)
    assert same.results[0].status == "skipped"
    dropped = TilingConfig(**{**vars(CONFIG), "edge": "drop"})
    changed = tile_slides([edge_slide], tmp_path, dropped)
    assert changed.results[0].status == "done"
    assert read_coords_file(tmp_path / "edge.h5").attrs["edge"] == "drop"


def test_unknown_edge_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="pad, drop"):
        TilingConfig(edge="crop")  # type: ignore[arg-type]


@pytest.mark.slow
def test_pad_tiles_more_of_the_real_frozen_section_than_drop(wsi_dir: Path, tmp_path: Path) -> None:
    # Measured (224 px at 0.5 µm/px): drop tiles 88.0 % of the detected tissue, pad 95.7 %.
    slide = wsi_dir / "tcga-cr-7395-01a-01-ts1.svs"
    fractions = {}
    for edge in ("pad", "drop"):
        config = TilingConfig(mpp=0.5, tile_size=224, mpp_override=0.25, edge=edge)
        result = tile_slide(slide, tmp_path / edge, config)
        tiles = read_coords_file(tmp_path / edge / f"{slide.stem}.h5")
        assert result.status == "done" and tiles.attrs["edge"] == edge
        fractions[edge] = _tissue_tiled(slide, tiles.coords, int(tiles.attrs["level0_tile_size"]))
    assert fractions["pad"] > fractions["drop"]


def _tissue_tiled(slide: Path, coords: np.ndarray, size0: int) -> float:
    """Fraction of the detected tissue (the tissue mask's pixels) that lies inside kept tiles."""
    from histoguard.slide import TissueParams, detect_tissue

    with open_slide(slide, mpp_override=0.25) as reader:
        thumbnail = reader.get_thumbnail(2048)
        tissue = detect_tissue(
            thumbnail.image, downsample=thumbnail.downsample, mpp=reader.mpp, params=TissueParams()
        )
    covered = np.zeros_like(tissue.mask)
    ds = tissue.downsample
    for x, y in coords.tolist():
        rows = slice(int(y / ds), int(np.ceil((y + size0) / ds)))
        covered[rows, int(x / ds) : int(np.ceil((x + size0) / ds))] = True
    return float(covered[tissue.mask].mean())
