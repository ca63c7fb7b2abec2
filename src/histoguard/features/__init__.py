"""Feature extraction: tiles through an encoder into per-slide feature files.

The feature-file readers and writers import without torch; the extraction itself
(:class:`ExtractionConfig`, :func:`extract_slide`, :func:`extract_features`) needs the encoders
and torch, and is imported on first use, so that reading feature files (``histoguard.harmonize``,
``histoguard harmonize``) stays fast.
"""

from typing import TYPE_CHECKING

from histoguard.core._lazy import lazy_attributes
from histoguard.features._feature_file import (
    FeatureFile,
    feature_file_done,
    finished_feature_file,
    read_feature_file,
    write_feature_file,
)

if TYPE_CHECKING:
    from histoguard.features._extract import ExtractionConfig, extract_slide
    from histoguard.features._run import extract_features

#: Names imported on first use: they bring in the encoders and torch (~1.3 s of CPU).
_LAZY = {
    "ExtractionConfig": "histoguard.features._extract",
    "extract_slide": "histoguard.features._extract",
    "extract_features": "histoguard.features._run",
}


__all__ = [
    "ExtractionConfig",
    "FeatureFile",
    "extract_features",
    "extract_slide",
    "feature_file_done",
    "finished_feature_file",
    "read_feature_file",
    "write_feature_file",
]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
