"""Fast tile reading returns exactly the pixels of one read per tile, and isolates bad tiles."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest

from histoguard import TileSpec
from histoguard.slide import ArraySlide, open_slide, read_tiles, tile_grid
from histoguard.slide._tile_reader import MAX_BAND_PX, plan_bands, read_padded
from tests.slide.tiff_surgery import corrupt_tiles


def _read_all(slide_path: Path, spec: TileSpec, coords: np.ndarray, **kwargs: object) -> dict:
    with open_slide(slide_path, **kwargs) as slide:  # type: ignore[arg-type]
        reads = list(read_tiles(slide, spec, coords, threads=2))
    assert sorted(r.index for r in reads) == list(range(len(coords)))
    return {r.index: r for r in reads}


def _spec(slide_mpp: float, downsamples: tuple[float, ...], mpp: float, size: int) -> TileSpec:
    return TileSpec.for_slide(
        slide_mpp=slide_mpp, level_downsamples=downsamples, mpp=mpp, tile_size=size
    )


def test_bands_group_touching_tiles_of_a_row() -> None:
    spec = _spec(0.5, (1.0,), 0.5, 100)
    coords = np.array([[0, 0], [100, 0], [200, 0], [500, 0], [0, 100]], dtype=np.int64)
    assert [b.tolist() for b in plan_bands(coords, spec)] == [[0, 1, 2], [3], [4]]
    long_row = np.stack([np.arange(100) * 100, np.zeros(100)], axis=1).astype(np.int64)
    assert all(len(b) * 100 <= MAX_BAND_PX for b in plan_bands(long_row, spec))


def test_unaligned_levels_read_one_tile_at_a_time() -> None:
    spec = _spec(0.25, (1.0, 2.0005), 0.5, 224)
    coords = np.array([[0, 0], [448, 0]], dtype=np.int64)
    assert [b.tolist() for b in plan_bands(coords, spec)] == [[0], [1]]


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_band_reads_equal_single_reads(known_slide: Path, backend: str) -> None:
    spec = _spec(0.25, (1.0, 2.0, 4.0), 0.5, 128)
    coords = tile_grid((4096, 3072), spec)[::3]
    reads = _read_all(known_slide, spec, coords, backend=backend)
    with open_slide(known_slide, backend=backend) as slide:
        for index in range(0, len(coords), 7):
            x, y = coords[index]
            expected = slide.read_region(int(x), int(y), 128, 128, level=1)
            assert np.array_equal(reads[index].tile, expected)


def test_tiles_are_resized_to_the_requested_size(known_slide: Path) -> None:
    spec = _spec(0.25, (1.0, 2.0, 4.0), 0.6, 100)  # read at level 1, 120 px, shrink to 100
    assert (spec.level, spec.read_size) == (1, 120)
    reads = _read_all(known_slide, spec, tile_grid((4096, 3072), spec)[:5])
    assert all(r.tile is not None and r.tile.shape == (100, 100, 3) for r in reads.values())


def test_corrupt_tiles_are_reported_never_zero_filled(known_slide: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.tiff"
    shutil.copy(known_slide, damaged)
    corrupt_tiles(damaged, page=0, tiles=[16 * 4 + 4])  # TIFF tile (4, 4): level-0 [1024, 1280)²
    spec = _spec(0.25, (1.0, 2.0, 4.0), 0.25, 256)
    coords = tile_grid((4096, 3072), spec)
    for backend in ("openslide", "tiffslide"):
        reads = _read_all(damaged, spec, coords, backend=backend)
        failed = [i for i, r in reads.items() if r.tile is None]
        assert [coords[i].tolist() for i in failed] == [[1024, 1024]], backend
        assert "damaged.tiff" in str(reads[failed[0]].error)
        # Neighbours in the same band were re-read one by one and are intact.
        assert reads[failed[0] + 1].tile is not None


@pytest.mark.parametrize(
    ("name", "mpp_override", "mpp", "level"),
    [
        ("tcga-cr-7395-01a-01-ts1.svs", 0.25, 0.5, 1),  # JPEG2000, downsample 2.0005
        ("tcga-cr-7395-01a-01-ts1.svs", 0.25, 0.25, 0),
        ("CMU-1-Small-Region.svs", None, 0.5, 0),
    ],
)
def test_real_tiles_equal_openslide_read_region(
    wsi_dir: Path, name: str, mpp_override: float | None, mpp: float, level: int
) -> None:
    path = wsi_dir / name
    with open_slide(path, mpp_override=mpp_override) as slide:
        spec = TileSpec.for_slide(
            slide_mpp=slide.mpp, level_downsamples=slide.level_downsamples, mpp=mpp, tile_size=224
        )
        coords = tile_grid(slide.dimensions, spec, edge="pad")
    assert spec.level == level and not spec.needs_resize
    reads = _read_all(path, spec, coords, mpp_override=mpp_override)
    reference = openslide.OpenSlide(str(path))
    n_partial = 0
    for index, (x, y) in enumerate(coords):
        rgba = np.asarray(reference.read_region((int(x), int(y)), level, (224, 224)))
        tile = reads[index].tile
        assert tile is not None
        opaque, transparent = rgba[..., 3] == 255, rgba[..., 3] == 0
        # On the slide: OpenSlide's pixels. Past the edge (alpha 0): white, never black.
        assert np.array_equal(tile[opaque], rgba[..., :3][opaque]), (x, y)
        assert np.all(tile[transparent] == 255), (x, y)
        n_partial += bool(transparent.any())
    assert n_partial > 0  # none of these slides ends on whole tiles


class _BlackBeyondTheEdge(ArraySlide):
    """A back-end that returns black past the slide's edge, and a cut-off array at the corner."""

    def _read(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        region = super()._read(x, y, width, height, level)
        level_w, level_h = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        inside_w, inside_h = max(0, level_w - int(x // ds)), max(0, level_h - int(y // ds))
        region[:, inside_w:] = 0
        region[inside_h:, :] = 0
        if inside_w < width and inside_h < height:
            return region[:inside_h, :inside_w]  # like a back-end that clips the region
        return region


def test_tiles_past_the_edge_are_padded_white_whatever_the_backend_returns() -> None:
    image = np.full((300, 500, 3), 120, dtype=np.uint8)
    slide = _BlackBeyondTheEdge(image, mpp=0.5, min_level_size=1024)
    spec = _spec(0.5, (1.0,), 0.5, 128)
    coords = tile_grid(slide.dimensions, spec, edge="pad")
    assert coords.shape == (4 * 3, 2)  # 500 / 128 -> 4 columns, 300 / 128 -> 3 rows
    reads = {r.index: r.tile for r in read_tiles(slide, spec, coords, threads=1)}
    for index, (x, y) in enumerate(coords):
        tile = reads[index]
        assert tile is not None and tile.shape == (128, 128, 3)
        inside_w, inside_h = min(128, 500 - x), min(128, 300 - y)
        assert np.all(tile[:inside_h, :inside_w] == 120), (x, y)
        assert np.all(tile[inside_h:] == 255) and np.all(tile[:, inside_w:] == 255), (x, y)
    corner = read_padded(slide, 384, 256, 128, 128, 0)
    assert corner.shape == (128, 128, 3) and corner[-1, -1].tolist() == [255, 255, 255]
