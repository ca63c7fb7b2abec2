"""The pixel perturbations, re-exported: they live in :mod:`histoguard.augment`, upstream of
encoders and features, so extraction and encoder training can use the same perturbations."""

from histoguard.augment import (
    D4_PERTURBATIONS,
    STAIN_TRANSFER_LEVELS,
    PerturbationFunction,
    PerturbationInfo,
    apply_perturbation,
    get_perturbation,
    jpeg_round_trip,
    list_perturbations,
    register_perturbation,
    stain_transfer_perturbation,
)

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
