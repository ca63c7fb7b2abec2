"""Stain normalisation of H&E tiles (numpy, vectorised over batches), upstream of encoders."""

from histoguard.stain._macenko import (
    MacenkoNormalizer,
    estimate_stains,
    fit_torchstain_macenko,
)
from histoguard.stain._registry import (
    STAIN_REGISTRY,
    StainMethodInfo,
    StainNormalizer,
    register_stain_method,
    stain_normalizer,
)
from histoguard.stain._reinhard import ReinhardNormalizer
from histoguard.stain._vahadane import VahadaneNormalizer

# The built-in methods; the registry itself imports none of them.
register_stain_method(
    "macenko",
    MacenkoNormalizer.fit,
    description="Macenko et al. 2009: per-tile H&E stain vectors mapped onto the reference's",
)
register_stain_method(
    "macenko-torchstain",
    fit_torchstain_macenko,
    description="Macenko as torchstain 1.4.1 computes it: stain plane from the covariance, "
    "99th-percentile concentrations over all pixels",
)
register_stain_method(
    "reinhard",
    ReinhardNormalizer.fit,
    description="Reinhard et al. 2001: CIELAB channel means and deviations matched",
)
register_stain_method(
    "vahadane",
    VahadaneNormalizer.fit,
    description="Vahadane et al. 2016: per-tile sparse non-negative H&E dictionary mapped onto "
    "the reference's",
)

#: Names of the built-in methods accepted by :func:`stain_normalizer`, sorted.
STAIN_METHODS: tuple[str, ...] = STAIN_REGISTRY.names()

__all__ = [
    "STAIN_METHODS",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "StainMethodInfo",
    "StainNormalizer",
    "VahadaneNormalizer",
    "estimate_stains",
    "fit_torchstain_macenko",
    "register_stain_method",
    "stain_normalizer",
]
