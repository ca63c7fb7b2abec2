"""Tile geometry: level choice, read sizes, µm-exact grids (exact cases and properties)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from histoguard import TileSpec, TilingError
from histoguard.slide import tile_grid
from histoguard.slide._tiling import DEFAULT_MPP_TOLERANCE, grid_positions

PYRAMID = (1.0, 4.0, 16.0, 32.0)


def test_reads_level_one_when_target_is_twice_the_base_resolution() -> None:
    spec = TileSpec.for_slide(
        slide_mpp=0.25, level_downsamples=(1.0, 2.0, 4.0), mpp=0.5, tile_size=224
    )
    assert (spec.level, spec.read_size, spec.level0_tile_size) == (1, 224, 448)
    assert spec.level0_stride == 448.0
    assert not spec.needs_resize


def test_reads_finer_level_and_resizes_between_levels() -> None:
    # 1.0 µm/px on a 0.25 µm/px slide with levels x1, x2, x8: read level 1 (0.5 µm/px), halve.
    spec = TileSpec.for_slide(
        slide_mpp=0.25, level_downsamples=(1.0, 2.0, 8.0), mpp=1.0, tile_size=256
    )
    assert (spec.level, spec.read_size, spec.level0_tile_size) == (1, 512, 1024)
    assert spec.needs_resize


def test_tolerates_odd_level_downsamples_within_one_percent() -> None:
    # The real TCGA slide: level 1 downsample 2.0005 is "the same" as 2.
    spec = TileSpec.for_slide(
        slide_mpp=0.25, level_downsamples=(1.0, 2.0005055500659967), mpp=0.5, tile_size=224
    )
    assert (spec.level, spec.read_size, spec.level0_tile_size) == (1, 224, 448)


def test_refuses_to_upsample() -> None:
    with pytest.raises(TilingError, match="upsampling"):
        TileSpec.for_slide(slide_mpp=0.5, level_downsamples=(1.0,), mpp=0.25, tile_size=224)


@pytest.mark.parametrize(("tile_size", "overlap"), [(0, 0), (224, 224), (224, -1)])
def test_rejects_bad_sizes(tile_size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        TileSpec.for_slide(
            slide_mpp=0.5, level_downsamples=(1.0,), mpp=0.5, tile_size=tile_size, overlap=overlap
        )


def test_grid_is_exact_for_a_known_slide() -> None:
    spec = TileSpec.for_slide(slide_mpp=0.25, level_downsamples=(1.0, 2.0), mpp=0.5, tile_size=128)
    coords = tile_grid((4096, 3000), spec, edge="drop")
    # 256 px level-0 footprint: 16 columns; 3000 // 256 = 11 rows.
    assert coords.shape == (16 * 11, 2)
    assert coords.dtype == np.int64
    assert coords[0].tolist() == [0, 0]
    assert coords[-1].tolist() == [15 * 256, 10 * 256]
    assert np.all(np.diff(coords[:16, 0]) == 256)


def test_padded_grid_adds_the_partial_row_at_the_bottom_edge() -> None:
    spec = TileSpec.for_slide(slide_mpp=0.25, level_downsamples=(1.0, 2.0), mpp=0.5, tile_size=128)
    coords = tile_grid((4096, 3000), spec)  # pad is the default
    # 3000 = 11 * 256 + 184: a 12th row of tiles starting at y = 2816 reaches past the edge.
    assert coords.shape == (16 * 12, 2)
    assert coords[-1].tolist() == [15 * 256, 11 * 256]
    dropped = {tuple(c) for c in tile_grid((4096, 3000), spec, edge="drop").tolist()}
    assert dropped < {tuple(c) for c in coords.tolist()}


def test_unknown_edge_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="pad, drop"):
        grid_positions(100, 10, 10.0, edge="crop")  # type: ignore[arg-type]


def test_overlap_shortens_the_stride() -> None:
    spec = TileSpec.for_slide(
        slide_mpp=0.5, level_downsamples=(1.0,), mpp=0.5, tile_size=100, overlap=20
    )
    assert grid_positions(500, 100, spec.level0_stride).tolist() == [0, 80, 160, 240, 320, 400]


def test_fractional_stride_never_drifts() -> None:
    # 0.3 µm/px target on a 0.2527 µm/px slide: stride is not an integer.
    spec = TileSpec.for_slide(slide_mpp=0.2527, level_downsamples=(1.0,), mpp=0.3, tile_size=224)
    positions = grid_positions(200_000, spec.level0_tile_size, spec.level0_stride)
    expected = np.arange(len(positions)) * spec.level0_stride
    assert np.max(np.abs(positions - expected)) <= 0.5


@given(
    slide_mpp=st.floats(0.1, 2.0),
    ratio=st.floats(1.0, 64.0),
    tile_size=st.integers(16, 1024),
    overlap_fraction=st.floats(0.0, 0.9),
    n_levels=st.integers(1, 6),
    level_factor=st.sampled_from([2.0, 4.0, 2.0005, 3.9987]),
)
def test_spec_properties(
    slide_mpp: float,
    ratio: float,
    tile_size: int,
    overlap_fraction: float,
    n_levels: int,
    level_factor: float,
) -> None:
    downsamples = tuple(level_factor**i for i in range(n_levels))
    overlap = int(tile_size * overlap_fraction)
    mpp = slide_mpp * ratio
    spec = TileSpec.for_slide(
        slide_mpp=slide_mpp,
        level_downsamples=downsamples,
        mpp=mpp,
        tile_size=tile_size,
        overlap=overlap,
    )
    limit = ratio * (1 + DEFAULT_MPP_TOLERANCE)
    # The chosen level is fine enough, and no coarser level would have been.
    assert downsamples[spec.level] <= limit
    assert all(ds > limit or ds <= downsamples[spec.level] for ds in downsamples)
    # Read size and footprint describe the same physical extent, to rounding.
    assert (
        abs(spec.read_size * spec.level_downsample - tile_size * ratio)
        <= spec.level_downsample / 2 + 1e-6
    )
    assert abs(spec.level0_tile_size - tile_size * ratio) <= 0.5 + 1e-9
    # Never upsample beyond the tolerance.
    assert spec.read_size >= math.floor(tile_size / (1 + DEFAULT_MPP_TOLERANCE))
    assert spec.level0_stride == pytest.approx((tile_size - overlap) * ratio)


@given(
    length=st.integers(0, 100_000),
    size0=st.integers(1, 5_000),
    stride_fraction=st.floats(0.1, 1.0),
)
def test_grid_positions_properties(length: int, size0: int, stride_fraction: float) -> None:
    # A stride is at least one level-0 pixel: (tile - overlap) >= 1 target pixel >= 1 level-0 pixel.
    stride0 = max(size0 * stride_fraction, 1.0)
    positions = grid_positions(length, size0, stride0, edge="drop")
    if len(positions) == 0:
        assert length < size0
        return
    assert positions[0] == 0
    assert np.all(positions + size0 <= length)
    assert np.all(np.diff(positions) > 0)
    assert np.all(np.abs(positions - np.arange(len(positions)) * stride0) <= 0.5)
    # Maximal: one more tile would not fit.
    assert round(len(positions) * stride0) + size0 > length


@given(
    length=st.integers(0, 100_000),
    size0=st.integers(1, 5_000),
    stride_fraction=st.floats(0.1, 1.0),
)
def test_padded_grid_positions_cover_every_pixel_once_more_at_most(
    length: int, size0: int, stride_fraction: float
) -> None:
    stride0 = max(size0 * stride_fraction, 1.0)
    positions = grid_positions(length, size0, stride0, edge="pad")
    dropped = grid_positions(length, size0, stride0, edge="drop")
    if length == 0:
        assert len(positions) == 0
        return
    assert positions[0] == 0 and np.all(np.diff(positions) > 0)
    assert np.all(positions < length)
    # Same grid as drop, plus at most the one tile that reaches the end.
    assert positions[: len(dropped)].tolist() == dropped.tolist()
    assert len(positions) - len(dropped) in (0, 1)
    assert positions[-1] + size0 >= length  # every pixel is covered
    if len(positions) > 1:
        assert positions[-2] + size0 < length  # and no tile is redundant


@given(st.integers(1, 3000), st.integers(1, 3000))
def test_grid_covers_only_the_slide(width: int, height: int) -> None:
    spec = TileSpec.for_slide(slide_mpp=0.25, level_downsamples=PYRAMID, mpp=0.5, tile_size=64)
    coords = tile_grid((width, height), spec, edge="drop")
    assert coords.shape[1] == 2
    if len(coords):
        assert coords[:, 0].max() + spec.level0_tile_size <= width
        assert coords[:, 1].max() + spec.level0_tile_size <= height
    assert len(coords) == (width // 128) * (height // 128)
