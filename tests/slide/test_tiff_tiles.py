"""Direct TIFF tile decoding gives exactly the back-end's pixels, decodes each tile once, and
leaves everything off the plain path (unaligned reads, damaged tiles) to the back-end."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from histoguard import TileSpec
from histoguard.slide import open_slide, read_tiles, tile_grid, write_synthetic_slide
from histoguard.slide._openslide_like import OpenSlideLikeReader
from histoguard.slide._tiff_tiles import TiffTiles
from tests.slide.tiff_surgery import corrupt_tiles

BACKENDS = ("openslide", "tiffslide")


def _pair(path: Path, backend: str, **kwargs: object) -> tuple[OpenSlideLikeReader, ...]:
    """The same slide twice: through the direct tile path, and through the library only."""
    fast = open_slide(path, backend=backend, **kwargs)  # type: ignore[arg-type]
    slow = open_slide(path, backend=backend, **kwargs)  # type: ignore[arg-type]
    assert isinstance(fast, OpenSlideLikeReader) and isinstance(slow, OpenSlideLikeReader)
    slow.native_tiles = False
    return fast, slow


def _random_regions(
    dimensions: tuple[int, int], downsample: float, n: int, seed: int
) -> list[tuple[int, int, int, int]]:
    """Regions anywhere, half of them on whole pixels of the level, some past the edges."""
    rng = np.random.default_rng(seed)
    width, height = dimensions
    step = max(1, round(downsample))
    regions = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(1, 600, 2))
        x, y = (int(v) for v in rng.integers(-300, [width + 100, height + 100]))
        if i % 2:
            x, y = x // step * step, y // step * step
        regions.append((x, y, w, h))
    return regions


def _check_same_pixels(fast: OpenSlideLikeReader, slow: OpenSlideLikeReader, n: int) -> int:
    """Compare random regions of every level; returns how many went through the tile path."""
    tiles = fast._native()
    assert tiles is not None
    direct = 0
    for level, downsample in enumerate(fast.level_downsamples):
        for x, y, w, h in _random_regions(fast.dimensions, downsample, n, seed=level):
            expected = slow.read_region(x, y, w, h, level)
            decoded = tiles.decoded
            got = fast.read_region(x, y, w, h, level)
            assert got.shape == expected.shape == (h, w, 3)
            assert np.array_equal(got, expected), (level, x, y, w, h)
            direct += fast._native_origin(x, y, level) is not None
            if fast._native_origin(x, y, level) is None:
                assert tiles.decoded == decoded  # interpolated by the back-end, not cut here
    return direct


@pytest.mark.filterwarnings("ignore:.*out-of-bounds:UserWarning")  # tiffslide, past the edge
@pytest.mark.parametrize("backend", BACKENDS)
def test_generated_pyramid_regions_equal_the_library_read(tmp_path: Path, backend: str) -> None:
    path = write_synthetic_slide(tmp_path / "s.tiff", width=1500, height=1100, levels=3, tile=128)
    fast, slow = _pair(path, backend)
    with fast, slow:
        tiles = fast._native()
        assert tiles is not None and all(tiles.has_level(i) for i in range(3))
        assert _check_same_pixels(fast, slow, n=30) > 20
        assert tiles.decoded > 0


@pytest.mark.filterwarnings("ignore:.*out-of-bounds:UserWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs"])
def test_real_slide_regions_equal_the_library_read(wsi_dir: Path, name: str, backend: str) -> None:
    # CMU-1: JPEG, one level. TCGA: Aperio JPEG2000 (33005), levels x1 and x2.0005, where
    # OpenSlide interpolates unaligned reads: those stay with OpenSlide and must still match.
    fast, slow = _pair(wsi_dir / name, backend, mpp_override=0.25)
    with fast, slow:
        tiles = fast._native()
        assert tiles is not None and all(tiles.has_level(i) for i in range(fast.level_count))
        assert _check_same_pixels(fast, slow, n=24) > 0


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs"])
def test_real_tiles_decode_each_source_tile_once(wsi_dir: Path, name: str) -> None:
    with open_slide(wsi_dir / name, mpp_override=0.25) as slide:
        assert isinstance(slide, OpenSlideLikeReader)
        spec = TileSpec.for_slide(
            slide_mpp=slide.mpp, level_downsamples=slide.level_downsamples, mpp=0.25, tile_size=200
        )
        coords = tile_grid(slide.dimensions, spec)
        reads = list(read_tiles(slide, spec, coords, threads=2))
        tiles = slide._native()
        assert tiles is not None and all(r.tile is not None for r in reads)
        info = tiles.levels[0]
        assert info is not None
        # Every source tile of level 0 is needed once; the clones' threads shared the cache.
        assert tiles.decoded == len(info.offsets)


def test_openslide_interpolated_reads_stay_with_openslide(wsi_dir: Path) -> None:
    with open_slide(wsi_dir / "tcga-cr-7395-01a-01-ts1.svs", mpp_override=0.25) as slide:
        assert isinstance(slide, OpenSlideLikeReader)
        assert slide._native_origin(448, 448, 1) is None  # 448 / 2.0005... is not a pixel
        assert slide._native_origin(0, 0, 1) == (0, 0)
        assert slide._native_origin(448, 448, 0) == (448, 448)


def test_concurrent_readers_wait_for_a_tile_being_decoded(known_slide: Path) -> None:
    with open_slide(known_slide, backend="tiffslide") as slide:
        assert isinstance(slide, OpenSlideLikeReader)
        clones = [slide.clone() for _ in range(4)]
        barrier = threading.Barrier(len(clones))
        out: list[np.ndarray] = []

        def read(reader: OpenSlideLikeReader) -> None:
            barrier.wait()
            out.append(reader.read_region(512, 512, 512, 512, 0))  # 4 source tiles

        threads = [threading.Thread(target=read, args=(c,)) for c in clones]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        tiles = slide._native()
        assert tiles is not None and tiles.decoded == 4  # not 16
        assert all(np.array_equal(o, out[0]) for o in out)
        assert all(clone._lib is None for clone in clones)  # cutting tiles needs no library
        for clone in clones:
            clone.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_damaged_tiles_are_left_to_the_backend(
    known_slide: Path, tmp_path: Path, backend: str
) -> None:
    damaged = tmp_path / "damaged.tiff"
    shutil.copy(known_slide, damaged)
    corrupt_tiles(damaged, page=0, tiles=[16 * 4 + 4])  # TIFF tile (4, 4): level-0 [1024, 1280)²
    fast, slow = _pair(damaged, backend)
    with fast, slow:
        for reader in (fast, slow):
            with pytest.raises(Exception, match="damaged.tiff") as raised:
                reader.read_region(1000, 1000, 100, 100, 0)
            assert type(raised.value).__name__ == "RegionReadError"
        assert np.array_equal(
            fast.read_region(0, 0, 1024, 1024, 0), slow.read_region(0, 0, 1024, 1024, 0)
        )


def test_files_without_plain_tiled_levels_have_no_tile_path(tmp_path: Path) -> None:
    stripped = tmp_path / "stripped.tiff"
    import tifffile

    tifffile.imwrite(stripped, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    assert TiffTiles.open(stripped, [(64, 64)]) is None
    assert TiffTiles.open(tmp_path / "missing.tiff", [(64, 64)]) is None
    tiled = write_synthetic_slide(tmp_path / "t.tiff", width=512, height=512, levels=2, tile=128)
    only_jpeg2000 = TiffTiles.open(tiled, [(512, 512), (256, 256)], compressions={33005})
    assert only_jpeg2000 is None  # JPEG tiles, but only JPEG2000 accepted
