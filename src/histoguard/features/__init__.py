"""Feature extraction: tiles through an encoder into per-slide feature files."""

from histoguard.features._extract import ExtractionConfig, extract_slide
from histoguard.features._feature_file import (
    FeatureFile,
    feature_file_done,
    read_feature_file,
    write_feature_file,
)
from histoguard.features._run import extract_features

__all__ = [
    "ExtractionConfig",
    "FeatureFile",
    "extract_features",
    "extract_slide",
    "feature_file_done",
    "read_feature_file",
    "write_feature_file",
]
