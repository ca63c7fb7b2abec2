"""Perturbations: identity at severity 0, growing change with severity, seeded randomness, exact
D4 permutations, stain transfer towards real references, typed errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from histoguard.errors import AuditDataError, UnknownNameError
from histoguard.robustness.data._containers import TileDataset, read_tile
from histoguard.robustness.shifts._perturbations import (
    D4_PERTURBATIONS,
    PerturbationInfo,
    apply_perturbation,
    get_perturbation,
    list_perturbations,
    register_perturbation,
    stain_transfer_perturbation,
)
from histoguard.stain import MacenkoNormalizer
from histoguard.stain._optical_density import od_to_rgb

#: Perturbations with a continuous parameter that should change tiles more at each severity.
GRADED = ("hed_jitter", "macenko_jitter", "blur", "jpeg", "colour_response", "noise", "zoom")
STOCHASTIC = ("hed_jitter", "macenko_jitter", "colour_response", "noise", "zoom")

# Unit OD directions of haematoxylin and eosin (Ruifrok & Johnston) and of a bluer, a redder
# pair, for synthetic tiles stained like different labs.
_H, _E = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
_OTHER_H, _OTHER_E = np.array([0.45, 0.80, 0.40]), np.array([0.20, 0.90, 0.30])


def he_like_tiles(
    n: int,
    size: int = 64,
    seed: int = 0,
    stains: tuple[np.ndarray, np.ndarray] = (_H, _E),
) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 tiles with H&E-like texture: smooth eosin, haematoxylin
    blobs, some glass."""
    rng = np.random.default_rng(seed)
    h_dir, e_dir = (v / np.linalg.norm(v) for v in stains)
    field = gaussian_filter(rng.normal(size=(n, size, size, 2)), sigma=(0, 3, 3, 0))
    field /= field.std()
    nuclei = np.clip(field[..., 0] - 0.5, 0, None) * 1.5
    eosin = np.clip(field[..., 1] + 0.8, 0, None) * 0.5
    od = nuclei[..., None] * h_dir + eosin[..., None] * e_dir
    return od_to_rgb(od)


def _mean_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def _synthetic_transfer() -> PerturbationInfo:
    reference = he_like_tiles(1, size=128, seed=99, stains=(_OTHER_H, _OTHER_E))[0]
    return stain_transfer_perturbation(reference, "synthetic")


@pytest.fixture(scope="module")
def real_tiles(colorectal_tiles: TileDataset) -> np.ndarray:
    """8 real tiles, 4 per center, 224 px."""
    rows = np.concatenate(
        [np.flatnonzero(colorectal_tiles.center == c)[::20][:4] for c in ("GlaS", "EBHI")]
    )
    return colorectal_tiles.load(rows)


def test_registry_holds_the_documented_perturbations() -> None:
    names = [info.name for info in list_perturbations()]
    assert names == sorted(names)
    assert set(names) == {*GRADED, *D4_PERTURBATIONS}
    for info in list_perturbations():
        assert info.unit and info.description
        expected = 1 if info.name in D4_PERTURBATIONS else 5
        assert info.max_severity == expected
        assert info.stochastic == (info.name in STOCHASTIC)
        assert json.loads(json.dumps(info.to_dict()))["levels"] == list(info.levels)
    assert get_perturbation("jpeg").levels == (90, 70, 50, 30, 10)
    assert get_perturbation("blur").level(3) == 1.5


@pytest.mark.parametrize("name", [*GRADED, *D4_PERTURBATIONS, "stain_transfer"])
def test_severity_zero_is_the_identity_and_one_is_not(name: str) -> None:
    info = _synthetic_transfer() if name == "stain_transfer" else get_perturbation(name)
    tiles = he_like_tiles(3)
    unchanged = info.apply(tiles, 0, seed=1)
    np.testing.assert_array_equal(unchanged, tiles)
    assert unchanged is not tiles
    assert _mean_change(info.apply(tiles, 1, seed=1), tiles) > 0.1


@pytest.mark.parametrize("name", [*GRADED, "stain_transfer"])
def test_change_grows_with_severity_on_synthetic_tiles(name: str) -> None:
    info = _synthetic_transfer() if name == "stain_transfer" else get_perturbation(name)
    tiles = he_like_tiles(6, seed=2)
    changes = [_mean_change(info.apply(tiles, s, seed=3), tiles) for s in range(6)]
    assert all(b > a for a, b in itertools.pairwise(changes)), changes


@pytest.mark.parametrize("name", GRADED)
def test_change_grows_with_severity_on_real_tiles(name: str, real_tiles: np.ndarray) -> None:
    changes = [
        _mean_change(apply_perturbation(name, real_tiles, s, seed=0), real_tiles) for s in range(6)
    ]
    assert all(b > a for a, b in itertools.pairwise(changes)), changes


@pytest.mark.parametrize("name", [*GRADED, *D4_PERTURBATIONS])
def test_seeded_randomness(name: str) -> None:
    tiles = he_like_tiles(4, seed=4)
    first = apply_perturbation(name, tiles, 2 if name in GRADED else 1, seed=7)
    again = apply_perturbation(name, tiles, 2 if name in GRADED else 1, seed=7)
    other = apply_perturbation(name, tiles, 2 if name in GRADED else 1, seed=8)
    np.testing.assert_array_equal(first, again)
    assert (not np.array_equal(first, other)) == (name in STOCHASTIC)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_a_tile_is_perturbed_the_same_in_any_batch(name: str) -> None:
    info, tiles = get_perturbation(name), he_like_tiles(5, seed=5)
    whole = info.apply(tiles, 3, seed=2)
    halves = [info.apply(tiles[:2], 3, seed=2), info.apply(tiles[2:], 3, seed=2, first_index=2)]
    np.testing.assert_array_equal(whole, np.concatenate(halves))
    # Tiles get their own draws: two copies of one tile are not perturbed alike.
    twins = info.apply(np.repeat(tiles[:1], 2, axis=0), 3, seed=2)
    assert not np.array_equal(twins[0], twins[1])


def test_d4_transforms_are_the_seven_distinct_pixel_permutations() -> None:
    side = 16
    rows, cols = np.mgrid[:side, :side]
    # Every pixel has its own colour, so a permutation of pixels is visible as such.
    tile = np.stack([rows * 16, cols * 16, np.full_like(rows, 7)], axis=-1).astype(np.uint8)[None]
    pixels = {tuple(p) for p in tile.reshape(-1, 3)}
    seen = {tile.tobytes()}
    for name in D4_PERTURBATIONS:
        out = apply_perturbation(name, tile, 1)
        assert out.shape == tile.shape
        assert {tuple(p) for p in out.reshape(-1, 3)} == pixels
        seen.add(out.tobytes())
    assert len(seen) == 8
    twice = apply_perturbation("rot90", apply_perturbation("rot90", tile, 1), 1)
    np.testing.assert_array_equal(twice, apply_perturbation("rot180", tile, 1))
    mirrored_twice = apply_perturbation("mirror", apply_perturbation("mirror", tile, 1), 1)
    np.testing.assert_array_equal(mirrored_twice, tile)
    np.testing.assert_array_equal(apply_perturbation("mirror", tile, 1), tile[:, :, ::-1])


def test_rotating_a_non_square_tile_is_refused() -> None:
    tiles = np.zeros((1, 8, 12, 3), np.uint8)
    with pytest.raises(AuditDataError, match="square"):
        apply_perturbation("rot90", tiles, 1)
    assert apply_perturbation("mirror", tiles, 1).shape == tiles.shape


def _stain_angles(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Degrees between the H and between the E Macenko vectors of an image and a reference;
    NaN when Macenko finds no two physical stains in the image."""
    try:
        stains = MacenkoNormalizer.fit(image).stain_matrix
    except ValueError:
        return np.full(2, np.nan)
    cosines = (stains * reference).sum(axis=1)
    return np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0)))


@pytest.mark.parametrize("reference_name", ["histoqc_template1", "tiatoolbox_target_image"])
def test_stain_transfer_moves_stain_vectors_to_a_real_reference(
    reference_name: str, real_tiles: np.ndarray, shared_data: Path
) -> None:
    reference = read_tile(shared_data / "stain_refs" / f"{reference_name}.png")
    target = MacenkoNormalizer.fit(reference).stain_matrix
    transferred = stain_transfer_perturbation(reference, reference_name).apply(real_tiles, 5)
    before = np.array([_stain_angles(t, target) for t in real_tiles]).mean(axis=1)
    after = np.array([_stain_angles(t, target) for t in transferred]).mean(axis=1)
    # Least-squares concentrations can be negative, so a transferred tile may hold directions
    # Macenko rejects as unphysical; the others must all have moved most of the way.
    usable = np.isfinite(before) & np.isfinite(after)
    assert usable.sum() >= 6, (before, after)
    assert (after[usable] < before[usable]).all(), (before, after)
    assert np.median(after[usable]) < 0.5 * np.median(before[usable])


def test_stain_transfer_rejects_unusable_references() -> None:
    with pytest.raises(AuditDataError, match="blank"):
        stain_transfer_perturbation(np.full((64, 64, 3), 250, np.uint8), "blank")
    with pytest.raises(AuditDataError, match="RGB"):
        stain_transfer_perturbation(np.zeros((64, 64, 4), np.uint8), "rgba")
    with pytest.raises(AuditDataError, match="fractions"):
        stain_transfer_perturbation(he_like_tiles(1)[0], "x", levels=(0.5, 1.5))


def test_bad_names_severities_and_tiles_are_typed_errors() -> None:
    tiles = he_like_tiles(1)
    with pytest.raises(UnknownNameError, match=r"unknown perturbation 'focus'.*blur.*rot90"):
        apply_perturbation("focus", tiles, 1)
    for severity in (-1, 6):
        with pytest.raises(AuditDataError, match="outside 0..5"):
            apply_perturbation("blur", tiles, severity)
    with pytest.raises(AuditDataError, match="outside 0..1"):
        apply_perturbation("rot90", tiles, 2)
    with pytest.raises(AuditDataError, match="uint8"):
        apply_perturbation("blur", tiles.astype(np.float32), 1)
    with pytest.raises(AuditDataError, match="shape"):
        apply_perturbation("blur", tiles[0], 1)
    with pytest.raises(ValueError, match="already registered"):
        register_perturbation("blur", unit="px", levels=(1.0,))(lambda t, level, rng: t)
