"""Stain normalisation of H&E tiles (numpy, vectorised over batches), upstream of encoders."""

from histoguard.stain._macenko import MacenkoNormalizer
from histoguard.stain._registry import STAIN_METHODS, StainNormalizer, stain_normalizer
from histoguard.stain._reinhard import ReinhardNormalizer

__all__ = [
    "STAIN_METHODS",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "StainNormalizer",
    "stain_normalizer",
]
