"""Tile integrity at read time: zero-filled regions and tiles stored once but pointed to from many
positions are flagged per tile, recorded in the tile file and the summary, and never embedded."""

from __future__ import annotations

import csv
import dataclasses
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from histoguard.features import ExtractionConfig, extract_features, read_feature_file
from histoguard.slide import TilingConfig, read_coords_file, tile_slide, tile_slides
from histoguard.slide._coords_file import write_coords_file
from histoguard.slide._qc import is_constant, repeated, tile_digest
from histoguard.slide._synthetic import Rectangle, write_synthetic_slide
from histoguard.slide._tile_job import SUMMARY_NAME
from tests.slide.tiff_surgery import patch

#: 2048 x 1536 px at 0.25 µm/px; tissue on 4 x 4 TIFF tiles of 256 px (columns 2-5, rows 1-4).
TISSUE = Rectangle(x0=512, y0=256, x1=1536, y1=1280)
TISSUE_TILES = {(x, y) for x in range(512, 1536, 256) for y in range(256, 1280, 256)}
#: Level-0 tiles read as they are stored, so TIFF tile i is tile i.
CONFIG = TilingConfig(mpp=0.25, tile_size=256, min_tissue_fraction=0.5, thumbnail_size=512)
COLUMNS = 2048 // 256


def _slide(path: Path, compression: str) -> Path:
    return write_synthetic_slide(
        path, width=2048, height=1536, mpp=0.25, shapes=[TISSUE], compression=compression
    )


def _tile_index(x: int, y: int) -> int:
    return (y // 256) * COLUMNS + x // 256


def _zero_fill(path: Path, tiles: list[int]) -> None:
    """Set the stored bytes of some level-0 tiles of an uncompressed TIFF to 0 (black pixels)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    for index in tiles:
        patch(path, int(offsets[index]), b"\x00" * int(counts[index]))


def _point_tiles_at(path: Path, index: int, tiles: list[int]) -> None:
    """Rewrite level 0's TileOffsets and TileByteCounts so ``tiles`` are all stored tile
    ``index`` (a table pointing *every* tile at one is refused by the preflight already)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
        where = {code: (page.tags[code].valueoffset, page.tags[code].dtype) for code in (324, 325)}
    for code, values in ((324, offsets), (325, counts)):
        at, dtype = where[code]
        fmt = {4: "I", 16: "Q"}[int(dtype)]
        table = [int(values[index]) if i in tiles else int(v) for i, v in enumerate(values)]
        patch(path, at, struct.pack(f"<{len(values)}{fmt}", *table))


def _summary(out: Path) -> list[dict[str, str]]:
    with (out / SUMMARY_NAME).open() as f:
        return list(csv.DictReader(f))


def test_the_checks_on_single_tiles() -> None:
    rng = np.random.default_rng(0)
    tissue = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert not is_constant(tissue)
    assert is_constant(np.zeros((64, 64, 3), np.uint8))
    wobble = np.full((64, 64, 3), 120, np.uint8)
    wobble[::2, ::3] = 122  # JPEG rounding of a flat region
    assert is_constant(wobble)
    wobble[0, 0, 1] = 123
    assert not is_constant(wobble)
    assert tile_digest(tissue) == tile_digest(tissue.copy()) != tile_digest(tissue[::-1])
    digests = [tile_digest(tissue), None, tile_digest(wobble), tile_digest(tissue), None]
    assert repeated(digests).tolist() == [True, False, False, True, False]


def test_a_zero_filled_region_is_flagged_and_never_embedded(tmp_path: Path) -> None:
    slide = _slide(tmp_path / "zeroed.tiff", "none")
    zeroed = [(768, 512), (1024, 512), (768, 768)]
    _zero_fill(slide, [_tile_index(x, y) for x, y in zeroed])
    report = tile_slides([slide], tmp_path / "tiles", CONFIG, progress=False)
    result = report.results[0]
    assert (result.status, result.flagged) == ("done", True)
    assert (result.n_constant, result.n_duplicate, result.n_unreadable) == (3, 0, 0)
    assert "3 one-colour tiles" in result.message
    tiles = read_coords_file(tmp_path / "tiles" / "zeroed.h5")
    kept = {tuple(c) for c in tiles.coords.tolist()}
    assert kept == TISSUE_TILES - set(zeroed)
    assert tiles.attrs["n_constant_tiles"] == 3 and tiles.attrs["n_duplicate_tiles"] == 0
    assert {tuple(c) for c in tiles.rejected.tolist()} == set(zeroed)
    assert tiles.rejected_reason.tolist() == ["constant"] * 3
    row = _summary(tmp_path / "tiles")[0]
    assert (row["flagged"], row["n_constant"], row["n_duplicate"]) == ("True", "3", "0")
    # A rerun skips the slide and still reports it flagged.
    rerun = tile_slides([slide], tmp_path / "tiles", CONFIG, progress=False).results[0]
    assert (rerun.status, rerun.flagged, rerun.n_constant) == ("skipped", True, 3)

    extraction = ExtractionConfig(
        encoder="hg-handcrafted", tiling=CONFIG, tiles_dir=tmp_path / "tiles", readers=0
    )
    extracted = extract_features([slide], tmp_path / "features", extraction, progress=False)
    assert extracted.results[0].status == "done", extracted.results
    features = read_feature_file(tmp_path / "features" / "zeroed.h5")
    assert {tuple(c) for c in features.coords.tolist()} == kept


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
def test_tiles_pointing_at_one_stored_tile_are_flagged(tmp_path: Path, backend: str) -> None:
    slide = _slide(tmp_path / "shared.tiff", "jpeg")
    top_rows = {(x, y) for x, y in TISSUE_TILES if y < 768}
    _point_tiles_at(slide, _tile_index(1024, 512), [_tile_index(x, y) for x, y in top_rows])
    config = dataclasses.replace(CONFIG, backend=backend)
    result = tile_slide(slide, tmp_path, config)
    assert (result.status, result.flagged, result.n_duplicate, result.n_constant) == (
        "done", True, 8, 0,
    )  # fmt: skip
    assert result.n_tiles == 8 and "repeat another position" in result.message
    tiles = read_coords_file(tmp_path / "shared.h5")
    assert {tuple(c) for c in tiles.coords.tolist()} == TISSUE_TILES - top_rows
    assert {tuple(c) for c in tiles.rejected.tolist()} == top_rows
    assert set(tiles.rejected_reason.tolist()) == {"duplicate"}


def test_a_slide_without_one_usable_tissue_tile_fails(tmp_path: Path) -> None:
    slide = _slide(tmp_path / "shared.tiff", "jpeg")
    _point_tiles_at(slide, _tile_index(1024, 512), [_tile_index(x, y) for x, y in TISSUE_TILES])
    result = tile_slide(slide, tmp_path, CONFIG)
    assert (result.status, result.n_duplicate, result.n_tiles) == ("failed", 16, 0)
    assert "none of its 16 tissue tiles is usable (16 duplicate)" in result.message
    assert not (tmp_path / "shared.h5").exists()  # a rerun tries the slide again


def test_a_good_slide_flags_nothing(tmp_path: Path) -> None:
    for compression in ("none", "jpeg"):
        slide = _slide(tmp_path / f"good_{compression}.tiff", compression)
        result = tile_slide(slide, tmp_path, CONFIG)
        assert (result.flagged, result.n_constant, result.n_duplicate) == (False, 0, 0)
        tiles = read_coords_file(tmp_path / f"good_{compression}.h5")
        assert {tuple(c) for c in tiles.coords.tolist()} == TISSUE_TILES
        assert len(tiles.rejected) == 0 and tiles.attrs["n_constant_tiles"] == 0


def test_tile_files_without_rejected_tiles_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.h5"
    coords = np.array([[0, 0], [256, 0]], dtype=np.int64)
    write_coords_file(path, coords, {}, {"mpp": 0.5})
    with h5py.File(path, "r") as h5:
        assert "rejected" not in h5  # what files from before the integrity checks look like
    old = read_coords_file(path)
    assert old.rejected.shape == (0, 2) and old.rejected_reason.shape == (0,)
    write_coords_file(
        path, coords, {}, {"mpp": 0.5}, rejected=coords[:1], rejected_reason=["duplicate"]
    )
    new = read_coords_file(path)
    assert new.rejected.tolist() == [[0, 0]] and new.rejected_reason.tolist() == ["duplicate"]


@pytest.mark.parametrize(
    ("name", "mpp", "mpp_override"),
    # The JPEG2000 TCGA slide at its second level (1 µm/px), to keep the decoding short.
    [("CMU-1-Small-Region.svs", 0.5, None), ("tcga-cr-7395-01a-01-ts1.svs", 1.0, 0.5)],
)
def test_real_slides_have_no_constant_or_duplicate_tiles(
    wsi_dir: Path, tmp_path: Path, name: str, mpp: float, mpp_override: float | None
) -> None:
    slide = wsi_dir / name
    if not slide.is_file():
        pytest.skip(f"{slide} is not in the shared data")
    config = TilingConfig(mpp=mpp, tile_size=224, mpp_override=mpp_override)
    result = tile_slide(slide, tmp_path, config)
    assert result.n_tiles > 20
    assert (result.n_constant, result.n_duplicate, result.flagged) == (0, 0, False)
