"""Know when not to trust a prediction: calibration, uncertainty measures, conformal prediction
sets, and a label-free out-of-distribution gate.
"""

from histoguard.uncertainty._calibration import (
    ECE_BINS,
    BinStrategy,
    Calibrator,
    ECEEstimate,
    ReliabilityDiagram,
    brier_score,
    ece_bootstrap,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
)
from histoguard.uncertainty._measures import (
    UncertaintyMeasures,
    attention_weighted_uncertainty,
    expected_entropy,
    mutual_information,
    predicted_class_variance,
    predictive_entropy,
    uncertainty_measures,
)

__all__ = [
    "ECE_BINS",
    "BinStrategy",
    "Calibrator",
    "ECEEstimate",
    "ReliabilityDiagram",
    "UncertaintyMeasures",
    "attention_weighted_uncertainty",
    "brier_score",
    "ece_bootstrap",
    "expected_calibration_error",
    "expected_entropy",
    "mutual_information",
    "negative_log_likelihood",
    "predicted_class_variance",
    "predictive_entropy",
    "reliability_diagram",
    "uncertainty_measures",
]
