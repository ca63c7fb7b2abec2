"""Small statistics shared by the robustness metrics and the cohort builder."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import stats

from histoguard._exceptions import AuditDataError


def center_class_association(
    label: Sequence[str] | np.ndarray, center: Sequence[str] | np.ndarray
) -> float:
    """Cramér's V between class and center: 0 independent, 1 each determines the other.

    ``V = sqrt(chi2 / (N * (min(n_classes, n_centers) - 1)))`` from the Pearson chi-squared
    of the class x center contingency table (no continuity correction).

    Args:
        label: ``(N,)`` class per item (tile or slide).
        center: ``(N,)`` center per item.

    Returns:
        V in [0, 1]; 0 when there is a single class or a single center.

    Raises:
        AuditDataError: the two arrays are empty or differ in length.
    """
    labels, centers = np.asarray(label).astype(str), np.asarray(center).astype(str)
    if labels.shape != centers.shape or labels.ndim != 1 or len(labels) == 0:
        raise AuditDataError(
            f"label and center must be equally long non-empty 1-D arrays, got {labels.shape} "
            f"and {centers.shape}"
        )
    _, rows = np.unique(labels, return_inverse=True)
    _, cols = np.unique(centers, return_inverse=True)
    table = np.zeros((rows.max() + 1, cols.max() + 1))
    np.add.at(table, (rows, cols), 1.0)
    smaller = min(table.shape) - 1
    if smaller == 0:
        return 0.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / len(labels)
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return float(min(1.0, np.sqrt(chi2 / (len(labels) * smaller))))


def mean_confidence_interval(
    values: npt.ArrayLike, confidence: float = 0.95
) -> tuple[float, float] | None:
    """Student-t confidence interval ``(low, high)`` of the mean of ``(n,)`` values; ``None``
    for fewer than two values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return None
    half = stats.t.ppf(0.5 + confidence / 2, df=v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)
