"""Stain normalisation on real H&E from different labs: Macenko and Reinhard."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from histoguard.errors import UnknownNameError
from histoguard.stain import (
    STAIN_METHODS,
    MacenkoNormalizer,
    ReinhardNormalizer,
    StainNormalizer,
    _macenko,
    stain_normalizer,
)


def _load(path: Path) -> np.ndarray:
    """RGB uint8; the torchstain images are RGBA with opaque alpha, composited onto white."""
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


@pytest.fixture(scope="module")
def refs(shared_data: Path) -> dict[str, np.ndarray]:
    return {path.stem: _load(path) for path in sorted((shared_data / "stain_refs").glob("*.png"))}


@pytest.fixture(scope="module")
def source(refs: dict[str, np.ndarray]) -> np.ndarray:
    return refs["torchstain_source"]


@pytest.fixture(scope="module")
def target(refs: dict[str, np.ndarray]) -> np.ndarray:
    return refs["torchstain_target"]


@pytest.fixture(scope="module")
def tia_normalizer(refs: dict[str, np.ndarray]) -> MacenkoNormalizer:
    return MacenkoNormalizer.fit(refs["tiatoolbox_target_image"])


def _lab_means(rgb: np.ndarray) -> np.ndarray:
    means: np.ndarray = rgb2lab(rgb).reshape(-1, 3).mean(axis=0)
    return means


def _tiles(image: np.ndarray, size: int = 128) -> np.ndarray:
    """Four tissue tiles from ``image`` and one blank white tile: ``(5, size, size, 3)``."""
    tiles = [image[y : y + size, x : x + size] for y in (0, size) for x in (0, size)]
    return np.stack([*tiles, np.full((size, size, 3), 255, np.uint8)])


def test_fitted_stain_matrix_is_haematoxylin_then_eosin(target: np.ndarray) -> None:
    fitted = MacenkoNormalizer.fit(target)
    assert fitted.stain_matrix.shape == (2, 3) and fitted.max_concentrations.shape == (2,)
    np.testing.assert_allclose(np.linalg.norm(fitted.stain_matrix, axis=1), 1.0, atol=1e-6)
    haematoxylin, eosin = fitted.stain_matrix
    assert haematoxylin[0] > eosin[0]  # H absorbs more red
    assert eosin[1] == eosin.max()  # E absorbs mostly green
    assert (fitted.max_concentrations > 0).all()
    with pytest.raises(ValueError):
        fitted.stain_matrix[0, 0] = 1.0  # a fitted normaliser cannot be changed


def test_macenko_brings_stains_and_colour_to_the_target(
    source: np.ndarray, target: np.ndarray
) -> None:
    fitted = MacenkoNormalizer.fit(target)
    result = fitted.transform(source)
    assert result.shape == source.shape and result.dtype == np.uint8

    def stain_distance(image: np.ndarray) -> float:
        estimated = MacenkoNormalizer.fit(image).stain_matrix
        return float(np.linalg.norm(estimated - fitted.stain_matrix))

    # Measured: stain vectors 0.197 -> 0.055, LAB means 25.2 -> 10.9.
    assert stain_distance(result) < 0.5 * stain_distance(source)
    lab_before = np.linalg.norm(_lab_means(source) - _lab_means(target))
    lab_after = np.linalg.norm(_lab_means(result) - _lab_means(target))
    assert lab_after < 0.5 * lab_before


@pytest.mark.parametrize("template", [f"histoqc_template{i}" for i in (1, 2, 3, 4)])
def test_macenko_stain_vectors_move_to_another_labs_target(
    refs: dict[str, np.ndarray], tia_normalizer: MacenkoNormalizer, template: str
) -> None:
    fitted = tia_normalizer
    before = MacenkoNormalizer.fit(refs[template]).stain_matrix
    after = MacenkoNormalizer.fit(fitted.transform(refs[template])).stain_matrix
    # Measured ratios 0.16-0.39.
    distance_after = np.linalg.norm(after - fitted.stain_matrix)
    assert distance_after < 0.5 * np.linalg.norm(before - fitted.stain_matrix)


def test_reinhard_matches_lab_statistics(source: np.ndarray, target: np.ndarray) -> None:
    fitted = ReinhardNormalizer.fit(target)
    result = fitted.transform(source)
    lab = rgb2lab(result).reshape(-1, 3)
    np.testing.assert_allclose(lab.mean(axis=0), _lab_means(target), atol=1.0)
    np.testing.assert_allclose(lab.std(axis=0), fitted.stds, atol=1.0)
    assert np.linalg.norm(_lab_means(source) - _lab_means(target)) > 20  # it had work to do


@pytest.mark.parametrize("method", STAIN_METHODS)
def test_blank_and_nearly_blank_tiles_stay_white(method: str, target: np.ndarray) -> None:
    normalizer = stain_normalizer(method, target)
    blank = np.full((64, 64, 3), 255, np.uint8)
    speck = np.full((64, 64, 3), 245, np.uint8)
    speck[:3, :3] = (120, 60, 160)  # 9 stained pixels: too few to estimate stains from
    result = normalizer.transform(np.stack([blank, speck]))
    assert result.dtype == np.uint8
    assert result[0].min() >= 235
    assert result[1][10:, 10:].min() >= 230


@pytest.mark.parametrize("method", STAIN_METHODS)
def test_batch_and_single_calls_agree(method: str, source: np.ndarray, target: np.ndarray) -> None:
    normalizer = stain_normalizer(method, target)
    tiles = _tiles(source)
    batch = normalizer.transform(tiles)
    singles = np.stack([normalizer.transform(tile) for tile in tiles])
    np.testing.assert_array_equal(batch, singles)
    np.testing.assert_array_equal(normalizer.transform(tiles), batch)  # deterministic


def test_macenko_chunking_does_not_change_results(
    source: np.ndarray, target: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    normalizer = MacenkoNormalizer.fit(target)
    tiles = _tiles(source, size=64)
    whole = normalizer.transform(tiles)
    monkeypatch.setattr(_macenko, "_CHUNK_PIXELS", 2 * 64 * 64)  # two tiles per chunk
    np.testing.assert_array_equal(normalizer.transform(tiles), whole)


def test_ihc_image_does_not_break_estimation(refs: dict[str, np.ndarray]) -> None:
    ihc, he = refs["skimage_ihc_NOT_HE"], refs["torchstain_target"]
    for reference, tiles in ((ihc, he), (he, ihc)):
        result = MacenkoNormalizer.fit(reference).transform(tiles)
        assert result.shape == tiles.shape and result.dtype == np.uint8


def test_macenko_needs_tissue_in_the_reference() -> None:
    with pytest.raises(ValueError, match="cannot estimate two stains"):
        MacenkoNormalizer.fit(np.full((32, 32, 3), 250, np.uint8))


@pytest.mark.parametrize("method", STAIN_METHODS)
def test_normalizers_survive_pickling(method: str, source: np.ndarray, target: np.ndarray) -> None:
    # Reader processes receive the normaliser's transform by pickling.
    normalizer = stain_normalizer(method, target)
    tile = source[:64, :64]
    restored = pickle.loads(pickle.dumps(normalizer.transform))
    np.testing.assert_array_equal(restored(tile), normalizer.transform(tile))


def test_registry(target: np.ndarray) -> None:
    assert STAIN_METHODS == ("macenko", "macenko-torchstain", "reinhard", "vahadane")
    assert isinstance(stain_normalizer("macenko", target), MacenkoNormalizer)
    normalizer: StainNormalizer = stain_normalizer("Reinhard", target)
    assert isinstance(normalizer, ReinhardNormalizer)
    with pytest.raises(
        UnknownNameError, match="Known: macenko, macenko-torchstain, reinhard, vahadane"
    ):
        stain_normalizer("ruifrok", target)
    with pytest.raises(UnknownNameError, match="Did you mean 'macenko'"):
        stain_normalizer("Makenko", target)


@pytest.mark.parametrize(
    "tiles",
    [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8), np.uint8)],
)
@pytest.mark.parametrize("method", STAIN_METHODS)
def test_rejects_non_rgb_uint8(method: str, tiles: np.ndarray, target: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        stain_normalizer(method, target).transform(tiles)


@pytest.mark.parametrize("method", STAIN_METHODS)
def test_empty_batch(method: str, target: np.ndarray) -> None:
    empty = np.zeros((0, 16, 16, 3), np.uint8)
    assert stain_normalizer(method, target).transform(empty).shape == (0, 16, 16, 3)
