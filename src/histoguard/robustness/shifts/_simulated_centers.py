"""Controlled multi-center cohorts built from real tiles.

Real multi-center data rarely lets one vary how strongly the center predicts the class. Here
every slide of a real tile set is sent to a simulated center whose look is taken from a real
lab: its H&E stain vectors and stain concentration scale (Macenko, estimated from one of that
lab's images) and a scanner (blur, brightness, gamma, JPEG compression). How often a class's
slides go to "its" center is set by ``correlation``, so the same biology can be audited with
center and class independent (0) or fully confounded (1).

Each tile is re-stained as in Macenko normalisation: decomposed into H and E concentrations
with its own estimated stain vectors, concentrations rescaled to the profile's 99th
percentiles, and recomposed with the profile's stain vectors; negative concentrations (which
least squares gives pixels outside the tile's stain cone) are then set to 0. The scanner is
applied last, in the order light meets it: optical blur, exposure (brightness, gamma), JPEG
compression.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from histoguard.errors import AuditDataError
from histoguard.robustness.data._containers import TileDataset, read_tile
from histoguard.robustness.shifts._perturbations import jpeg_round_trip
from histoguard.stain import MacenkoNormalizer
from histoguard.stain._optical_density import od_to_rgb, rgb_to_od

#: Scanner settings given to the profiles of :func:`default_profiles`, in turn (cycled when
#: there are more references): ``(gamma, blur_sigma px, jpeg_quality, brightness)``. They span
#: what differs between real scanners: a lossless sharp one, soft optics, strong compression,
#: over- and under-exposure. All stay mild enough that the tissue remains clearly readable.
SCANNER_VARIANTS: tuple[tuple[float, float, int | None, float], ...] = (
    (1.00, 0.0, None, 1.00),
    (0.90, 0.8, 85, 1.03),
    (1.10, 0.0, 60, 0.97),
    (1.00, 1.2, 90, 1.00),
    (0.95, 0.4, 70, 1.05),
    (1.15, 0.6, None, 0.95),
)

#: Reference images whose file name contains this are not H&E and are skipped.
NOT_HE_MARKER = "NOT_HE"

_REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True, kw_only=True, eq=False)
class StainProfile:
    """How one simulated center's tiles look: its lab's stains and its scanner.

    Attributes:
        name: the center's name.
        stains: ``(2, 3)`` unit optical-density vectors (R, G, B) of haematoxylin then eosin.
        max_concentrations: ``(2,)`` 99th-percentile H and E concentrations (OD units) of the
            lab's stained pixels.
        gamma: tone curve ``I' = I ** gamma`` on intensities scaled to [0, 1]; > 1 darkens.
        blur_sigma: Gaussian optical blur, standard deviation in pixels; 0 is sharp.
        jpeg_quality: JPEG quality (1-95) the scanner compresses with; None is lossless.
        brightness: exposure factor on intensities before the tone curve; 1 leaves them.

    Raises:
        AuditDataError: stains that are not two finite ``(3,)`` unit vectors, or a
            parameter out of range.
    """

    name: str
    stains: np.ndarray
    max_concentrations: np.ndarray
    gamma: float = 1.0
    blur_sigma: float = 0.0
    jpeg_quality: int | None = None
    brightness: float = 1.0

    def __post_init__(self) -> None:
        stains = np.array(self.stains, dtype=np.float64)
        max_c = np.array(self.max_concentrations, dtype=np.float64)
        problems = []
        if stains.shape != (2, 3) or not np.isfinite(stains).all():
            problems.append(f"stains must be a finite (2, 3) array, got {stains.shape}")
        elif not np.allclose(np.linalg.norm(stains, axis=1), 1.0, atol=1e-3):
            problems.append("stains rows must be unit vectors")
        if max_c.shape != (2,) or not (np.isfinite(max_c).all() and (max_c > 0).all()):
            problems.append(f"max_concentrations must be 2 positive numbers, got {max_c}")
        if not self.gamma > 0 or not self.brightness > 0 or not self.blur_sigma >= 0:
            problems.append("gamma and brightness must be > 0 and blur_sigma >= 0")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 95:
            problems.append(f"jpeg_quality must be in 1-95 or None, got {self.jpeg_quality}")
        if problems:
            raise AuditDataError(f"stain profile {self.name!r}: {'; '.join(problems)}")
        for name, array in (("stains", stains), ("max_concentrations", max_c)):
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible fields (arrays as nested lists)."""
        return {
            "name": self.name,
            "stains": self.stains.tolist(),
            "max_concentrations": self.max_concentrations.tolist(),
            "gamma": self.gamma,
            "blur_sigma": self.blur_sigma,
            "jpeg_quality": self.jpeg_quality,
            "brightness": self.brightness,
        }

    def apply(self, tiles: np.ndarray) -> np.ndarray:
        """Tiles as this center would have stained and scanned them.

        Args:
            tiles: ``(B, H, W, 3)`` uint8 RGB H&E tiles.

        Returns:
            ``(B, H, W, 3)`` uint8. Each tile is processed on its own (no batch dependence).
            A tile with too little stained tissue for its own stain estimate is decomposed
            with the profile's stains at its own scale, so it changes little. Glass ends at
            the background level (RGB 239) before the scanner's exposure.
        """
        normalizer = MacenkoNormalizer(
            stain_matrix=self.stains, max_concentrations=self.max_concentrations
        )
        return self._scan(_within_stain_cone(normalizer.transform(tiles), self.stains))

    def _scan(self, tiles: np.ndarray) -> np.ndarray:
        image: np.ndarray = tiles.astype(np.float32) / 255.0
        if self.blur_sigma > 0:
            from scipy.ndimage import gaussian_filter  # scipy loads on first use

            image = gaussian_filter(image, sigma=(0, self.blur_sigma, self.blur_sigma, 0))
        image = np.clip(image * self.brightness, 0.0, 1.0) ** self.gamma
        out: np.ndarray = np.rint(image * 255.0).astype(np.uint8)
        if self.jpeg_quality is not None:
            out = np.stack([jpeg_round_trip(tile, self.jpeg_quality) for tile in out])
        return out


def _within_stain_cone(tiles: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """``(B, H, W, 3)`` uint8 tiles with negative H or E concentrations set to 0.

    Least squares gives pixels outside a tile's own stain cone (noise, pigment, glass brighter
    than the background level) negative concentrations; recomposed with another lab's stains
    they become colours no H&E stain makes, and they bias that lab's re-estimated stain
    vectors by up to ~15 degrees on real tiles. Stain amounts cannot be negative. (Glass,
    brighter than the background level, thus becomes exactly that level.)
    """
    concentrations = rgb_to_od(tiles).astype(np.float64) @ np.linalg.pinv(stains)
    return od_to_rgb(np.maximum(concentrations, 0.0) @ stains)


def stain_profile_from_image(
    image: np.ndarray,
    name: str,
    *,
    gamma: float = 1.0,
    blur_sigma: float = 0.0,
    jpeg_quality: int | None = None,
    brightness: float = 1.0,
) -> StainProfile:
    """A center's profile with the stains of a real H&E image from its lab.

    Args:
        image: ``(H, W, 3)`` uint8 RGB H&E image with plenty of tissue.
        name: the center's name.
        gamma, blur_sigma, jpeg_quality, brightness: the scanner (see :class:`StainProfile`).

    Returns:
        The profile, stains and 99th-percentile concentrations estimated by Macenko's method.

    Raises:
        AuditDataError: the image is not uint8 RGB, has too little tissue or no two distinct
            stains (not H&E), or a scanner parameter is out of range.
    """
    try:
        fitted = MacenkoNormalizer.fit(image)
    except ValueError as exc:
        raise AuditDataError(
            f"stain profile {name!r}: {exc}; use an H&E image of that lab with plenty of tissue"
        ) from exc
    return StainProfile(
        name=name,
        stains=fitted.stain_matrix,
        max_concentrations=fitted.max_concentrations,
        gamma=gamma,
        blur_sigma=blur_sigma,
        jpeg_quality=jpeg_quality,
        brightness=brightness,
    )


def default_profiles(stain_refs_dir: Path, *, min_angle_deg: float = 8.0) -> list[StainProfile]:
    """Distinct center profiles from the real H&E reference images in a folder.

    The images are taken in file-name order (files with ``NOT_HE`` in the name skipped); the
    k-th kept image gets ``SCANNER_VARIANTS[k % len(SCANNER_VARIANTS)]``. An image whose H
    and E vectors are both within ``min_angle_deg`` of an already kept profile's is skipped:
    two labs that stain alike would otherwise count as two centers.

    Args:
        stain_refs_dir: folder of PNG/JPEG/TIFF H&E images, one per lab.
        min_angle_deg: least angle, in degrees, by which a new profile's H or E vector must
            differ from every kept profile's.

    Returns:
        One profile per kept image, named by the file stem.

    Raises:
        AuditDataError: the folder is missing, an image cannot be read or is not usable H&E,
            or fewer than 2 distinct profiles remain.
    """
    if not stain_refs_dir.is_dir():
        raise AuditDataError(f"{stain_refs_dir}: not a folder of H&E reference images")
    files = sorted(
        p
        for p in stain_refs_dir.iterdir()
        if p.suffix.lower() in _REFERENCE_SUFFIXES and NOT_HE_MARKER not in p.name
    )
    profiles: list[StainProfile] = []
    for path in files:
        candidate = stain_profile_from_image(read_tile(path), path.stem)
        if any(_same_stains(candidate, kept, min_angle_deg) for kept in profiles):
            continue
        gamma, blur, quality, brightness = SCANNER_VARIANTS[len(profiles) % len(SCANNER_VARIANTS)]
        profiles.append(
            replace(
                candidate,
                gamma=gamma,
                blur_sigma=blur,
                jpeg_quality=quality,
                brightness=brightness,
            )
        )
    if len(profiles) < 2:
        raise AuditDataError(
            f"{stain_refs_dir}: {len(profiles)} distinct H&E profile(s) from {len(files)} "
            "image(s); add reference images from at least 2 labs"
        )
    return profiles


def stain_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(2,)`` angles in degrees between the H vectors and the E vectors of two ``(2, 3)``
    stain matrices."""
    cosine = np.sum(np.asarray(a) * np.asarray(b), axis=1) / (
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    )
    angles: np.ndarray = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    return angles


def _same_stains(a: StainProfile, b: StainProfile, min_angle_deg: float) -> bool:
    return bool((stain_angles(a.stains, b.stains) < min_angle_deg).all())


def simulate_centers(
    tiles: TileDataset,
    profiles: Sequence[StainProfile],
    *,
    correlation: float,
    seed: int = 0,
) -> TileDataset:
    """Send every slide of ``tiles`` to a simulated center and make its tiles look the part.

    Assignment (all tiles of a slide go to one center). A slide's class is the most common
    label of its tiles (ties: the first in sorted order). Classes, sorted, have home centers
    ``profiles[i % len(profiles)]``. Within each class, its slides are shuffled;
    ``round(correlation * n)`` of its ``n`` slides go to the home center, the rest are dealt
    round-robin over all centers from a random start. So the chance that a slide lands at
    home is ``correlation + (1 - correlation) / n_centers``, as for "home with probability
    ``correlation``, else uniform", but with exact rather than sampled proportions: at 0 every
    class is spread evenly over the centers, at 1 each class sits at its home center.

    Appearance: each tile is re-stained and scanned with its center's profile
    (:meth:`StainProfile.apply`).

    Args:
        tiles: real H&E tiles, all of one size (held in memory or on disk).
        profiles: at least 2 profiles with distinct names, one per simulated center.
        correlation: in [0, 1], how strongly the center follows the class.
        seed: seeds the shuffles; the result is a function of (tiles, profiles, correlation,
            seed).

    Returns:
        A new dataset with the same paths, labels and slide ids, ``center`` the profile name
        and ``images`` the re-stained ``(N, H, W, 3)`` uint8 tiles.

    Raises:
        AuditDataError: ``correlation`` outside [0, 1], fewer than 2 profiles or duplicate
            names, or tiles that cannot be read or differ in size.
    """
    if not 0.0 <= correlation <= 1.0:
        raise AuditDataError(f"correlation must be in [0, 1], got {correlation}")
    names = [p.name for p in profiles]
    if len(profiles) < 2 or len(set(names)) != len(names):
        raise AuditDataError(f"need at least 2 profiles with distinct names, got {names}")
    center_of_slide = _assign_centers(
        tiles.slide_id, tiles.label, len(profiles), correlation, np.random.default_rng(seed)
    )
    center_index = np.array([center_of_slide[s] for s in tiles.slide_id])
    pixels = tiles.load()
    images = np.empty_like(pixels)
    for k, profile in enumerate(profiles):
        rows = np.flatnonzero(center_index == k)
        if len(rows):
            images[rows] = profile.apply(pixels[rows])
    return TileDataset(
        paths=tiles.paths,
        label=tiles.label,
        center=np.array(names)[center_index],
        slide_id=tiles.slide_id,
        images=images,
    )


def _assign_centers(
    slide_id: np.ndarray,
    label: np.ndarray,
    n_centers: int,
    correlation: float,
    rng: np.random.Generator,
) -> dict[str, int]:
    """Center index of every slide (the rule is in :func:`simulate_centers`)."""
    labels_of: dict[str, Counter[str]] = defaultdict(Counter)
    for slide, lab in zip(slide_id.tolist(), label.tolist(), strict=True):
        labels_of[slide][lab] += 1
    slides_of: dict[str, list[str]] = defaultdict(list)
    for slide in sorted(labels_of):
        counts = labels_of[slide]
        top = max(counts.values())
        slides_of[min(lab for lab, n in counts.items() if n == top)].append(slide)
    assignment: dict[str, int] = {}
    for i, cls in enumerate(sorted(slides_of)):
        slides = [slides_of[cls][j] for j in rng.permutation(len(slides_of[cls]))]
        # floor(x + 0.5): Python's round() would send halves to the even neighbour.
        n_home = int(np.floor(correlation * len(slides) + 0.5))
        start = int(rng.integers(n_centers))
        for j, slide in enumerate(slides):
            assignment[slide] = i % n_centers if j < n_home else (start + j) % n_centers
    return assignment
