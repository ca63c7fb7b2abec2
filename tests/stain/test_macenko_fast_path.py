"""The batched Macenko fast path against the implementation it replaced (a frozen copy in
``_macenko_reference.py``), on generated and on real tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histoguard.core._image import decode_image
from histoguard.slide._synthetic import synthetic_tile
from histoguard.stain import MacenkoNormalizer, _macenko, estimate_stains, fit_torchstain_macenko
from tests.stain._macenko_reference import reference_estimate_stains, reference_transform

# The per-pixel passes are float32 now: measured 3.5e-6 of the values differ, each by 1.
_MAX_DIFFERING_FRACTION = 1e-4


def _assert_same_image(ours: np.ndarray, before: np.ndarray) -> None:
    difference = np.abs(ours.astype(np.int16) - before.astype(np.int16))
    assert ours.shape == before.shape and ours.dtype == np.uint8
    assert difference.max() <= 1
    assert (difference > 0).mean() <= _MAX_DIFFERING_FRACTION


@pytest.fixture(scope="module")
def real_tiles(shared_data: Path) -> np.ndarray:
    """48 real 224² tiles from two labs (EBHI-Seg, LC25000 lung), evenly spread."""
    ebhi = sorted((shared_data / "tiles" / "ebhi_seg" / "images").rglob("*.jpg"))[::90][:24]
    lung = sorted((shared_data / "tiles" / "lc25000_lung").rglob("*.jpeg"))[::120][:24]
    return np.stack([decode_image(path)[:224, :224] for path in ebhi + lung])


@pytest.fixture(scope="module")
def target(shared_data: Path) -> np.ndarray:
    return decode_image(shared_data / "stain_refs" / "torchstain_target.png")


def _generated_tiles() -> np.ndarray:
    """Generated H&E, a blank tile and a nearly blank one (the fallback path)."""
    tiles = [synthetic_tile(96, seed=seed) for seed in range(4)]
    blank = np.full((96, 96, 3), 250, np.uint8)
    speck = blank.copy()
    speck[:3, :3] = (120, 60, 140)
    return np.stack([*tiles, blank, speck])


@pytest.mark.parametrize("mode", ["stained", "all"])
def test_fast_path_matches_the_previous_implementation_on_generated_tiles(mode: str) -> None:
    tiles = _generated_tiles()
    # torchstain's default H&E reference (unit rows) and its concentration scale.
    stains = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]])
    normalizer = MacenkoNormalizer(
        stain_matrix=stains / np.linalg.norm(stains, axis=1, keepdims=True),
        max_concentrations=np.array([1.9705, 1.0308]),
        percentile_over=mode,  # type: ignore[arg-type]
        centred=mode == "all",
    )
    _assert_same_image(normalizer.transform(tiles), reference_transform(normalizer, tiles))


def test_fast_path_matches_the_previous_implementation_on_real_tiles(
    real_tiles: np.ndarray, target: np.ndarray
) -> None:
    for normalizer in (MacenkoNormalizer.fit(target), fit_torchstain_macenko(target)):
        _assert_same_image(
            normalizer.transform(real_tiles), reference_transform(normalizer, real_tiles)
        )


def test_stain_estimates_match_the_previous_implementation(real_tiles: np.ndarray) -> None:
    for tiles in (real_tiles, _generated_tiles()):
        stains, ok = estimate_stains(tiles)
        before, ok_before = reference_estimate_stains(tiles)
        np.testing.assert_array_equal(ok, ok_before)
        np.testing.assert_allclose(stains, before, rtol=0, atol=1e-9)
    assert estimate_stains(real_tiles)[1].mean() > 0.9


def test_chunk_size_does_not_change_results(real_tiles: np.ndarray, target: np.ndarray) -> None:
    normalizer = fit_torchstain_macenko(target)
    whole = normalizer.transform(real_tiles[:12])
    for tiles_per_chunk in (1, 5, 12):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_macenko, "_CHUNK_PIXELS", tiles_per_chunk * 224 * 224)
            np.testing.assert_array_equal(normalizer.transform(real_tiles[:12]), whole)


@pytest.mark.parametrize("size", [1, 2, 3, 10, 257])
def test_percentiles_are_numpys_linear_percentiles(size: int) -> None:
    values = np.random.default_rng(size).normal(size=size)
    qs = (0.0, 1.0, 37.5, 99.0, 100.0)
    np.testing.assert_allclose(
        _macenko._percentiles(values, qs), np.percentile(values, qs), rtol=0, atol=1e-12
    )
    np.testing.assert_array_equal(_macenko._percentiles(values[:0], qs), np.zeros(len(qs)))
