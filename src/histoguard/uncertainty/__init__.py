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
from histoguard.uncertainty._conformal import (
    CONFORMAL_FORMAT,
    ConformalClassifier,
    class_scores,
    conformal_quantile,
    min_calibration_size,
    needs_review,
    nonconformity_scores,
)
from histoguard.uncertainty._coverage import (
    CoverageReport,
    CoverageRow,
    aurc,
    clopper_pearson,
    coverage_report,
    risk_coverage_curve,
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
from histoguard.uncertainty._ood import (
    MMDResult,
    OODGate,
    conformal_p_values,
    knn_distance,
    mahalanobis_distance,
    mmd_test,
)

__all__ = [
    "CONFORMAL_FORMAT",
    "ECE_BINS",
    "BinStrategy",
    "Calibrator",
    "ConformalClassifier",
    "CoverageReport",
    "CoverageRow",
    "ECEEstimate",
    "MMDResult",
    "OODGate",
    "ReliabilityDiagram",
    "UncertaintyMeasures",
    "attention_weighted_uncertainty",
    "aurc",
    "brier_score",
    "class_scores",
    "clopper_pearson",
    "conformal_p_values",
    "conformal_quantile",
    "coverage_report",
    "ece_bootstrap",
    "expected_calibration_error",
    "expected_entropy",
    "knn_distance",
    "mahalanobis_distance",
    "min_calibration_size",
    "mmd_test",
    "mutual_information",
    "needs_review",
    "negative_log_likelihood",
    "nonconformity_scores",
    "predicted_class_variance",
    "predictive_entropy",
    "reliability_diagram",
    "risk_coverage_curve",
    "uncertainty_measures",
]
