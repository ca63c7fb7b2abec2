"""Pixel-level tile augmentation: stain, scanner and geometric perturbations on severity scales,
and seeded augmented views of tiles, upstream of encoders and features.

The same registry serves the stress tests of :mod:`histoguard.robustness` (which re-exports it),
augmented views at feature extraction (``ExtractionConfig(augment=..., views=K)``) and encoder
training.
"""

# Imported for their registration side effect: the built-in perturbations fill the registry (the
# registry itself imports none of them).
from histoguard.augment import _macenko_jitter  # noqa: F401
from histoguard.augment._perturbations import (
    D4_PERTURBATIONS,
    STAIN_TRANSFER_LEVELS,
    apply_perturbation,
    jpeg_round_trip,
    stain_transfer_perturbation,
)
from histoguard.augment._registry import (
    PERTURBATIONS,
    PerturbationFunction,
    PerturbationInfo,
    get_perturbation,
    list_perturbations,
    register_perturbation,
)
from histoguard.augment._views import (
    DEFAULT_SEVERITY,
    Augmentation,
    augment_view,
    parse_augmentations,
    view_seed,
)

__all__ = [
    "D4_PERTURBATIONS",
    "DEFAULT_SEVERITY",
    "PERTURBATIONS",
    "STAIN_TRANSFER_LEVELS",
    "Augmentation",
    "PerturbationFunction",
    "PerturbationInfo",
    "apply_perturbation",
    "augment_view",
    "get_perturbation",
    "jpeg_round_trip",
    "list_perturbations",
    "parse_augmentations",
    "register_perturbation",
    "stain_transfer_perturbation",
    "view_seed",
]
