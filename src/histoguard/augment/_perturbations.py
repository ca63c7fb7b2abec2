"""Stain, scanner and geometric perturbations of tiles, each on a severity scale.

Every perturbation is a function ``(tiles (B, H, W, 3) uint8, level, rng) -> (B, H, W, 3)
uint8`` registered by decorator with its unit and one physical parameter value (``level``) per
severity 1..5; severity 0 is always the identity (the function is not called). The D4
transforms are discrete: each is its own perturbation with a single severity.

=====================  ==========================================  ===========================
name                   unit                                        severities 1..5
=====================  ==========================================  ===========================
``hed_jitter``         relative H/E/DAB scale and OD shift (σ)     0.02 0.05 0.1 0.15 0.2
``blur``               Gaussian sigma in pixels                    0.5 1 1.5 2 3
``jpeg``               JPEG quality (re-compression, 4:2:0)        90 70 50 30 10
``colour_response``    gamma factor and channel gain deviation     0.05 0.1 0.15 0.2 0.3
``noise``              Gaussian noise std, 0–255 intensity units   2 4 8 12 16
``zoom``               magnification factor (crop, resized back)   1.1 1.25 1.5 1.75 2
``rot90`` …            degrees counter-clockwise (after a mirror)  one severity
stain transfer         OD blend fraction towards a reference       0.2 0.4 0.6 0.8 1.0
=====================  ==========================================  ===========================

Stochastic perturbations (HED jitter, colour response, noise, zoom's crop position) draw every
tile's randomness from ``default_rng([seed, index])``, the tile's position in the set: a tile is
perturbed the same way
alone or in any batch, and the same draws are scaled by every severity, so a higher severity is
the same change, larger. Stain transfer towards a reference image is built by
:func:`stain_transfer_perturbation`, one perturbation per reference, and is not registered
globally (references belong to one run).
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

from histoguard.augment._registry import (
    PerturbationFunction,
    PerturbationInfo,
    get_perturbation,
    list_perturbations,
    register_perturbation,
)
from histoguard.core._image import decode_image
from histoguard.errors import AuditDataError
from histoguard.stain import MacenkoNormalizer
from histoguard.stain._optical_density import od_to_rgb, rgb_to_od

__all__ = [
    "D4_PERTURBATIONS",
    "STAIN_TRANSFER_LEVELS",
    "PerturbationFunction",
    "PerturbationInfo",
    "apply_perturbation",
    "get_perturbation",
    "jpeg_round_trip",
    "list_perturbations",
    "register_perturbation",
    "stain_transfer_perturbation",
]

#: The seven non-identity elements of D4 (rotations by 90°, mirrors), one perturbation each.
D4_PERTURBATIONS: tuple[str, ...] = (
    "rot90",
    "rot180",
    "rot270",
    "mirror",
    "mirror_rot90",
    "mirror_rot180",
    "mirror_rot270",
)

#: Blend fractions of a stain transfer at severities 1..5.
STAIN_TRANSFER_LEVELS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)


@functools.cache
def _hed_stains() -> np.ndarray:
    """Ruifrok & Johnston H, E and DAB optical-density directions (rows; R, G, B), unit length.

    From scikit-image, imported on first use so that importing the room stays fast.
    """
    from skimage.color import rgb_from_hed

    stains: np.ndarray = rgb_from_hed / np.linalg.norm(rgb_from_hed, axis=1, keepdims=True)
    return stains


def apply_perturbation(name: str, tiles: np.ndarray, severity: int, seed: int = 0) -> np.ndarray:
    """Perturb ``(B, H, W, 3)`` uint8 tiles with the registered perturbation ``name``.

    Deterministic given ``seed`` (see :meth:`PerturbationInfo.apply`); severity 0 is the
    identity.

    Raises:
        UnknownNameError: unknown name (the message lists the registered ones).
        AuditDataError: severity out of range, bad tiles or negative seed.
    """
    return get_perturbation(name).apply(tiles, severity, seed=seed)


def stain_transfer_perturbation(
    reference: np.ndarray, name: str, *, levels: tuple[float, ...] = STAIN_TRANSFER_LEVELS
) -> PerturbationInfo:
    """Stain transfer towards one reference image: a lab's H&E appearance.

    Each tile is Macenko-normalised to the reference (its own stain vectors and concentration
    scale replaced by the reference's); severity ``s`` blends the tile's optical density with
    the normalised tile's, ``(1 - f) OD_tile + f OD_normalised`` with ``f = levels[s - 1]``, so
    1.0 is the full transfer.

    Args:
        reference: ``(H, W, 3)`` uint8 RGB H&E image with plenty of tissue.
        name: names the reference; the perturbation is ``stain_transfer_{name}``.
        levels: blend fractions in (0, 1] at severities 1, 2, ….

    Raises:
        AuditDataError: the reference is not an RGB uint8 image, Macenko cannot estimate two
            stains from it (not H&E, or mostly background), or a level is outside (0, 1].
    """
    if reference.ndim != 3 or reference.shape[2] != 3 or reference.dtype != np.uint8:
        raise AuditDataError(
            f"stain reference {name!r} must be (H, W, 3) uint8 RGB, got {reference.shape} "
            f"{reference.dtype}; convert RGBA or grey images to RGB first"
        )
    if not levels or not all(0 < f <= 1 for f in levels):
        raise AuditDataError(f"stain transfer levels must be fractions in (0, 1], got {levels}")
    try:
        normalizer = MacenkoNormalizer.fit(reference)
    except ValueError as exc:
        raise AuditDataError(f"stain reference {name!r}: {exc}") from exc

    def transfer(tiles: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
        # Blending in OD, where stain amounts add up, rather than in RGB.
        od = rgb_to_od(tiles)
        target = rgb_to_od(normalizer.transform(tiles))
        return od_to_rgb((1.0 - fraction) * od + fraction * target)

    return PerturbationInfo(
        name=f"stain_transfer_{name}",
        unit="OD blend fraction towards the reference's stains",
        levels=tuple(float(f) for f in levels),
        description=f"Macenko stain transfer towards the stain appearance of {name}",
        function=transfer,
    )


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Float intensities on the 0–255 scale -> rounded, clipped uint8."""
    out: np.ndarray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return out


@register_perturbation(
    "hed_jitter",
    unit="relative H/E/DAB concentration scale and OD shift (sigma)",
    levels=(0.02, 0.05, 0.1, 0.15, 0.2),
    description="per-tile random scale 1 ± sigma and shift ± sigma OD of the haematoxylin, eosin "
    "and DAB concentrations (Ruifrok-Johnston deconvolution; Tellez et al. 2018)",
    stochastic=True,
)
def _hed_jitter(tiles: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    # Draws do not depend on sigma, so every severity scales the same jitter.
    scale = 1.0 + sigma * rng.uniform(-1.0, 1.0, size=(len(tiles), 1, 1, 3))
    shift = sigma * rng.uniform(-1.0, 1.0, size=(len(tiles), 1, 1, 3))
    # Concentrations along unit stain directions, in natural-log OD units, without clipping, so
    # that scale 1 and shift 0 give the tile back exactly.
    stains = _hed_stains()
    concentrations = rgb_to_od(tiles) @ np.linalg.inv(stains)
    return od_to_rgb((concentrations * scale + shift) @ stains)


@register_perturbation(
    "blur",
    unit="Gaussian blur sigma in pixels",
    levels=(0.5, 1.0, 1.5, 2.0, 3.0),
    description="isotropic Gaussian blur (defocus), borders mirrored",
)
def _blur(tiles: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter  # scipy loads on first use

    blurred = gaussian_filter(tiles.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="mirror")
    return _to_uint8(blurred)


@register_perturbation(
    "jpeg",
    unit="JPEG quality (1-100)",
    levels=(90, 70, 50, 30, 10),
    description="JPEG re-compression at decreasing quality, with the 4:2:0 chroma subsampling "
    "scanners use",
)
def _jpeg(tiles: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    return np.stack([jpeg_round_trip(tile, int(quality)) for tile in tiles])


def jpeg_round_trip(tile: np.ndarray, quality: int) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 tile through JPEG (4:2:0 chroma, as scanners) and back."""
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    return decode_image(buffer.getvalue(), max_pixels=None, name="JPEG round trip")


@register_perturbation(
    "colour_response",
    unit="deviation d: gamma (1 + d)^±1 and per-channel gain 1 ± d",
    levels=(0.05, 0.1, 0.15, 0.2, 0.3),
    description="per-tile random scanner colour response: gamma curve and R, G, B gains",
    stochastic=True,
)
def _colour_response(tiles: np.ndarray, deviation: float, rng: np.random.Generator) -> np.ndarray:
    draws = rng.uniform(-1.0, 1.0, size=(len(tiles), 4))
    gamma = (1.0 + deviation) ** draws[:, 0]
    gain = 1.0 + deviation * draws[:, 1:]
    intensity = tiles.astype(np.float64) / 255.0
    response = gain[:, None, None, :] * intensity ** gamma[:, None, None, None]
    return _to_uint8(255.0 * response)


@register_perturbation(
    "noise",
    unit="Gaussian noise std, 0-255 intensity units",
    levels=(2.0, 4.0, 8.0, 12.0, 16.0),
    description="additive per-pixel, per-channel Gaussian sensor noise",
    stochastic=True,
)
def _noise(tiles: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(tiles + std * rng.standard_normal(tiles.shape))


@register_perturbation(
    "zoom",
    unit="magnification factor: a crop of 1/factor of each side, resized back (bilinear)",
    levels=(1.1, 1.25, 1.5, 1.75, 2.0),
    description="per-tile random crop resized back to the tile's size: the same tissue seen at "
    "a higher magnification (scanners and tiling pipelines that disagree on the scale)",
    stochastic=True,
)
def _zoom(tiles: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    height, width = tiles.shape[1:3]
    crop_h, crop_w = max(1, round(height / factor)), max(1, round(width / factor))
    out = np.empty_like(tiles)
    for i, tile in enumerate(tiles):
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        crop = Image.fromarray(tile[top : top + crop_h, left : left + crop_w])
        out[i] = np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR))
    return out


def _rotate(tiles: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate counter-clockwise by a multiple of 90°."""
    quarter_turns = round(degrees / 90) % 4
    if quarter_turns % 2 and tiles.shape[1] != tiles.shape[2]:
        raise AuditDataError(
            f"90° rotations need square tiles, got {tiles.shape[2]}x{tiles.shape[1]} px; crop them"
        )
    return np.ascontiguousarray(np.rot90(tiles, quarter_turns, axes=(1, 2)))


def _mirror_then_rotate(tiles: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Mirror left-right, then rotate counter-clockwise by a multiple of 90°."""
    return _rotate(tiles[:, :, ::-1], degrees, rng)


def _register_d4() -> None:
    for quarter_turns in range(4):
        degrees = 90.0 * quarter_turns
        if quarter_turns:
            register_perturbation(
                f"rot{degrees:.0f}",
                unit="degrees counter-clockwise",
                levels=(degrees,),
                description=f"rotation by {degrees:.0f}° (tissue has no preferred orientation)",
            )(_rotate)
        register_perturbation(
            f"mirror_rot{degrees:.0f}" if quarter_turns else "mirror",
            unit="degrees counter-clockwise after a left-right mirror",
            levels=(degrees,),
            description=f"left-right mirror, then rotation by {degrees:.0f}°",
        )(_mirror_then_rotate)


_register_d4()
