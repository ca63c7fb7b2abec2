"""Small pieces shared by the robustness metrics and the cohort builder: class-center
association, confidence intervals, and the balanced 2 classes x 2 centers subsets that the
paired robustness index and the clustering score are computed on."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from histoguard.errors import AuditDataError


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
    from scipy import stats  # ~1 s of import: on first use, not with the room

    half = stats.t.ppf(0.5 + confidence / 2, df=v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def two_by_two_subsets(
    label: np.ndarray, center: np.ndarray
) -> list[tuple[tuple[Any, Any], tuple[Any, Any]]]:
    """Every choice of 2 classes and 2 centers whose four (class, center) cells all hold data,
    classes and centers in sorted order.

    Args:
        label: ``(N,)`` class of each item (names or integer codes).
        center: ``(N,)`` center of each item.
    """
    present = set(zip(label.tolist(), center.tolist(), strict=True))
    return [
        (classes, centers)
        for classes in itertools.combinations(np.unique(label).tolist(), 2)
        for centers in itertools.combinations(np.unique(center).tolist(), 2)
        if all(cell in present for cell in itertools.product(classes, centers))
    ]


def balanced_cells(
    label: np.ndarray,
    center: np.ndarray,
    classes: tuple[Any, Any],
    centers: tuple[Any, Any],
    cap: int | None,
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """Equally many random rows (without replacement) from each of the four cells of a 2 x 2
    subset: as many as its smallest cell holds, at most ``cap``; cells in (class, center) order.
    """
    cells = [
        np.flatnonzero((label == c) & (center == m)) for c, m in itertools.product(classes, centers)
    ]
    size = min(len(rows) for rows in cells)
    if cap is not None:
        size = min(size, cap)
    return np.concatenate([rng.choice(rows, size=size, replace=False) for rows in cells])
