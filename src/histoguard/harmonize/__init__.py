"""Remove the hospital from embeddings: ComBat and CovBat harmonisation fitted on training
centers, a label-free mode for new centers, leak-free use inside cross-validation, and a
folder of feature files harmonised slide by slide (``histoguard harmonize``)."""

from histoguard.harmonize._folds import FoldHarmonization, NewCenters, harmonize_folds
from histoguard.harmonize._harmonizer import (
    COVBAT_PERCENT_VAR,
    FIT_TILES_PER_SLIDE,
    MIN_NEW_CENTER_SLIDES,
    CovBatPart,
    Harmonizer,
    HarmonizerState,
    Method,
    design_from_labels,
    tile_sample,
)
from histoguard.harmonize._io import (
    HARMONIZER_ARRAYS,
    HARMONIZER_DIR,
    HARMONIZER_FORMAT,
    HARMONIZER_JSON,
    load_harmonizer,
    save_harmonizer,
)
from histoguard.harmonize._run import (
    HarmonizeConfig,
    HarmonizeReport,
    harmonize_feature_files,
    harmonizer_sha256,
)

__all__ = [
    "COVBAT_PERCENT_VAR",
    "FIT_TILES_PER_SLIDE",
    "HARMONIZER_ARRAYS",
    "HARMONIZER_DIR",
    "HARMONIZER_FORMAT",
    "HARMONIZER_JSON",
    "MIN_NEW_CENTER_SLIDES",
    "CovBatPart",
    "FoldHarmonization",
    "HarmonizeConfig",
    "HarmonizeReport",
    "Harmonizer",
    "HarmonizerState",
    "Method",
    "NewCenters",
    "design_from_labels",
    "harmonize_feature_files",
    "harmonize_folds",
    "harmonizer_sha256",
    "load_harmonizer",
    "save_harmonizer",
    "tile_sample",
]
