"""Know when not to trust a prediction: calibration, uncertainty measures, conformal prediction sets, and a label-free out-of-distribution gate."""  # noqa: E501

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
    "ConformalClassifier",
    "CoverageReport",
    "CoverageRow",
    "MMDResult",
    "OODGate",
    "aurc",
    "class_scores",
    "clopper_pearson",
    "conformal_p_values",
    "conformal_quantile",
    "coverage_report",
    "knn_distance",
    "mahalanobis_distance",
    "min_calibration_size",
    "mmd_test",
    "needs_review",
    "nonconformity_scores",
    "risk_coverage_curve",
]
