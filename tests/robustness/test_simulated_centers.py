"""Simulated multi-center cohorts: real tiles re-stained with real labs' stains, slides assigned
to centers with a chosen class-center correlation."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats.contingency import association, crosstab

from histoguard.errors import AuditDataError
from histoguard.robustness.data._containers import TileDataset, read_tile
from histoguard.robustness.metrics._stats import center_class_association
from histoguard.robustness.shifts._simulated_centers import (
    SCANNER_VARIANTS,
    StainProfile,
    default_profiles,
    simulate_centers,
    stain_angles,
    stain_profile_from_image,
)
from histoguard.stain import MacenkoNormalizer

#: Real tiles per class in the simulated cohorts, at most 2 per slide.
TILES_PER_CLASS = 20


@pytest.fixture(scope="module")
def profiles(shared_data: Path) -> list[StainProfile]:
    return default_profiles(shared_data / "stain_refs")


@pytest.fixture(scope="module")
def real_tiles(colorectal_tiles: TileDataset) -> TileDataset:
    """About 40 real colorectal tiles (benign/malignant) from slides of a single class each."""
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, slide in enumerate(colorectal_tiles.slide_id.tolist()):
        rows_of[slide].append(i)
    chosen: list[int] = []
    for label in colorectal_tiles.classes:
        picked: list[int] = []
        for rows in rows_of.values():
            if {colorectal_tiles.label[i] for i in rows} == {label}:
                picked += rows[:2]
        chosen += picked[:TILES_PER_CLASS]
    return colorectal_tiles.subset(np.array(sorted(chosen)))


@pytest.fixture(scope="module")
def small_tiles(real_tiles: TileDataset) -> TileDataset:
    """real_tiles at a quarter of the side, for the assignment tests (faster re-staining)."""
    assert real_tiles.images is not None
    return TileDataset(
        paths=real_tiles.paths,
        label=real_tiles.label,
        center=real_tiles.center,
        slide_id=real_tiles.slide_id,
        images=np.ascontiguousarray(real_tiles.images[:, ::4, ::4]),
    )


# --- profiles ----------------------------------------------------------------------------------


def test_default_profiles_are_distinct_real_he_labs(
    shared_data: Path, profiles: list[StainProfile]
) -> None:
    names = [p.name for p in profiles]
    assert len(profiles) >= 3
    assert not any("NOT_HE" in name for name in names)
    assert set(names) <= {p.stem for p in (shared_data / "stain_refs").iterdir()}
    for a, b in itertools.combinations(profiles, 2):
        assert stain_angles(a.stains, b.stains).max() >= 8.0
    scanners = [(p.gamma, p.blur_sigma, p.jpeg_quality, p.brightness) for p in profiles]
    assert scanners == list(SCANNER_VARIANTS[: len(profiles)])
    for profile in profiles:
        # H absorbs red more than E; both are physical (non-negative) OD directions.
        assert profile.stains[0, 0] > profile.stains[1, 0]
        assert (profile.stains > -0.1).all()
        restored = json.loads(json.dumps(profile.to_dict()))
        assert np.allclose(restored["stains"], profile.stains)
        assert restored["jpeg_quality"] == profile.jpeg_quality


def test_profile_from_image_is_the_macenko_fit(shared_data: Path) -> None:
    image = read_tile(shared_data / "stain_refs" / "torchstain_target.png")
    profile = stain_profile_from_image(image, "lab", blur_sigma=1.0)
    fitted = MacenkoNormalizer.fit(image)
    assert np.allclose(profile.stains, fitted.stain_matrix)
    assert np.allclose(profile.max_concentrations, fitted.max_concentrations)
    assert (profile.name, profile.blur_sigma, profile.gamma) == ("lab", 1.0, 1.0)
    with pytest.raises(AuditDataError, match="'glass'.*plenty of tissue"):
        stain_profile_from_image(np.full((64, 64, 3), 245, np.uint8), "glass")


def test_bad_profiles_are_refused() -> None:
    stains = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    with pytest.raises(AuditDataError, match="'x'.*jpeg_quality"):
        StainProfile(name="x", stains=stains, max_concentrations=[1.9, 1.0], jpeg_quality=100)
    with pytest.raises(AuditDataError, match="unit vectors"):
        StainProfile(name="x", stains=2 * stains, max_concentrations=[1.9, 1.0])
    with pytest.raises(AuditDataError, match="max_concentrations"):
        StainProfile(name="x", stains=stains, max_concentrations=[1.9, 0.0])
    with pytest.raises(AuditDataError, match="gamma"):
        StainProfile(name="x", stains=stains, max_concentrations=[1.9, 1.0], gamma=0.0)


def test_scanner_parameters_do_what_they_say(
    real_tiles: TileDataset, profiles: list[StainProfile]
) -> None:
    tiles = real_tiles.load(np.arange(6))
    neutral = replace(profiles[0], gamma=1.0, blur_sigma=0.0, jpeg_quality=None, brightness=1.0)
    plain = neutral.apply(tiles).astype(np.float64)

    def scanned(**scanner: float | int) -> np.ndarray:
        return replace(neutral, **scanner).apply(tiles).astype(np.float64)

    # Each parameter alone is exactly its documented operation (up to 8-bit rounding).
    blurred = gaussian_filter(plain, sigma=(0, 1.5, 1.5, 0))
    assert np.abs(scanned(blur_sigma=1.5) - blurred).max() <= 1.0
    assert np.abs(scanned(brightness=0.9) - plain * 0.9).max() <= 1.0
    assert np.abs(scanned(gamma=1.3) - 255 * (plain / 255) ** 1.3).max() <= 1.0
    assert scanned(gamma=1.3).mean() < plain.mean() - 5
    compressed = np.abs(scanned(jpeg_quality=20) - plain).mean()
    assert 0.5 < compressed < 10


# --- the simulated cohort ----------------------------------------------------------------------


@pytest.mark.parametrize(("scanners", "max_angle"), [(False, 3.0), (True, 10.0)])
def test_restained_tiles_carry_their_centers_stains(
    real_tiles: TileDataset, profiles: list[StainProfile], scanners: bool, max_angle: float
) -> None:
    """Stains re-estimated from each center's tiles are that center's, within ``max_angle``
    degrees: the re-staining alone is near exact; the scanners' blur and exposure move the
    estimate by a few degrees, but never nearer another center's stains."""
    if not scanners:
        profiles = [
            replace(p, gamma=1.0, blur_sigma=0.0, jpeg_quality=None, brightness=1.0)
            for p in profiles
        ]
    cohort = simulate_centers(real_tiles, profiles, correlation=0.0, seed=0)
    assert cohort.images is not None and cohort.images.shape == real_tiles.load().shape
    assert cohort.centers == tuple(sorted(p.name for p in profiles))
    means = {}
    for profile in profiles:
        at_center = cohort.center == profile.name
        # Every other pixel: the same colour statistics for a quarter of the sorting.
        estimated = MacenkoNormalizer.fit(cohort.images[at_center][:, ::2, ::2]).stain_matrix
        angles = [stain_angles(estimated, other.stains).mean() for other in profiles]
        own = stain_angles(estimated, profile.stains)
        assert own.max() < max_angle, (profile.name, own)
        assert profiles[int(np.argmin(angles))] is profile, (profile.name, angles)
        means[profile.name] = cohort.images[at_center].reshape(-1, 3).mean(axis=0)
    for a, b in itertools.combinations(means.values(), 2):
        assert np.abs(a - b).max() > 3.0  # mean colour, 8-bit levels


def test_association_follows_correlation(
    small_tiles: TileDataset, profiles: list[StainProfile]
) -> None:
    strengths = []
    for correlation in (0.0, 0.5, 1.0):
        cohort = simulate_centers(small_tiles, profiles, correlation=correlation, seed=3)
        strengths.append(center_class_association(cohort.label, cohort.center))
    assert strengths[0] < 0.3
    assert strengths[0] < strengths[1] < strengths[2]
    assert strengths[2] == pytest.approx(1.0)


def test_slides_stay_whole_and_the_seed_fixes_everything(
    small_tiles: TileDataset, profiles: list[StainProfile]
) -> None:
    first = simulate_centers(small_tiles, profiles, correlation=0.3, seed=7)
    again = simulate_centers(small_tiles, profiles, correlation=0.3, seed=7)
    other = simulate_centers(small_tiles, profiles, correlation=0.3, seed=8)
    centers_of: dict[str, set[str]] = defaultdict(set)
    for slide, center in zip(first.slide_id.tolist(), first.center.tolist(), strict=True):
        centers_of[slide].add(center)
    assert len(centers_of) >= 20
    assert all(len(c) == 1 for c in centers_of.values())
    assert first.center.tolist() == again.center.tolist()
    assert first.images is not None and again.images is not None
    assert np.array_equal(first.images, again.images)
    assert other.center.tolist() != first.center.tolist()
    assert first.paths.tolist() == small_tiles.paths.tolist()
    assert first.label.tolist() == small_tiles.label.tolist()


def test_simulation_refuses_bad_settings(
    small_tiles: TileDataset, profiles: list[StainProfile]
) -> None:
    with pytest.raises(AuditDataError, match="correlation"):
        simulate_centers(small_tiles, profiles, correlation=1.5)
    with pytest.raises(AuditDataError, match="at least 2 profiles"):
        simulate_centers(small_tiles, profiles[:1], correlation=0.0)
    with pytest.raises(AuditDataError, match="distinct names"):
        simulate_centers(small_tiles, [profiles[0], profiles[0]], correlation=0.0)


# --- Cramér's V --------------------------------------------------------------------------------


def test_cramers_v_matches_scipy_and_its_extremes() -> None:
    rng = np.random.default_rng(0)
    label = rng.choice(["a", "b", "c"], size=300)
    center = np.where(rng.random(300) < 0.4, label, rng.choice(["a", "b", "c", "d"], size=300))
    counts = crosstab(label, center).count
    expected = association(counts, method="cramer", correction=False)
    assert center_class_association(label, center) == pytest.approx(expected)
    assert 0.2 < expected < 0.8

    balanced = np.repeat(["x", "y"], 4), np.tile(["A", "B"], 4)
    assert center_class_association(*balanced) == pytest.approx(0.0)
    assert center_class_association(["x", "x", "y"], ["A", "A", "B"]) == pytest.approx(1.0)
    assert center_class_association(["x", "y"], ["A", "A"]) == 0.0
    with pytest.raises(AuditDataError, match="equally long"):
        center_class_association(["x"], ["A", "B"])
