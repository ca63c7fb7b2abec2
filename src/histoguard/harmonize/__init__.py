"""Remove the hospital from embeddings: ComBat and CovBat harmonisation fitted on training
centers, a label-free mode for new centers, and leak-free use inside cross-validation."""

from histoguard.harmonize._folds import FoldHarmonization, NewCenters, harmonize_folds
from histoguard.harmonize._harmonizer import (
    COVBAT_PERCENT_VAR,
    MIN_NEW_CENTER_SLIDES,
    CovBatPart,
    Harmonizer,
    HarmonizerState,
    Method,
    design_from_labels,
)
from histoguard.harmonize._io import (
    HARMONIZER_ARRAYS,
    HARMONIZER_FORMAT,
    HARMONIZER_JSON,
    load_harmonizer,
    save_harmonizer,
)

__all__ = [
    "COVBAT_PERCENT_VAR",
    "HARMONIZER_ARRAYS",
    "HARMONIZER_FORMAT",
    "HARMONIZER_JSON",
    "MIN_NEW_CENTER_SLIDES",
    "CovBatPart",
    "FoldHarmonization",
    "Harmonizer",
    "HarmonizerState",
    "Method",
    "NewCenters",
    "design_from_labels",
    "harmonize_folds",
    "load_harmonizer",
    "save_harmonizer",
]
