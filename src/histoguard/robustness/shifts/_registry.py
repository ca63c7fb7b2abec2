"""The perturbation registry, re-exported: it lives in :mod:`histoguard.augment._registry`, upstream
of encoders and features, so extraction and encoder training can use the same perturbations."""

from histoguard.augment._registry import (
    PERTURBATIONS,
    PerturbationFunction,
    PerturbationInfo,
    get_perturbation,
    list_perturbations,
    register_perturbation,
)

__all__ = [
    "PERTURBATIONS",
    "PerturbationFunction",
    "PerturbationInfo",
    "get_perturbation",
    "list_perturbations",
    "register_perturbation",
]
