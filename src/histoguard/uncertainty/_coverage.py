"""Did the prediction sets cover? Coverage per class and per group, and the risk-coverage curve.

Coverage is reported with an exact (Clopper-Pearson) binomial interval, and a verdict is given
only when the whole interval lies on one side of the target 1 - alpha; a small group whose
interval straddles the target is "inconclusive", never "valid".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from histoguard.errors import ConfigError

Verdict = Literal["covered", "undercovered", "inconclusive"]


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a binomial proportion.

    Args:
        successes: k, covered cases.
        trials: n, all cases (n = 0 gives the uninformative (0, 1)).
        confidence: in (0, 1).

    Returns:
        (lower, upper) in [0, 1].

    Raises:
        ConfigError: k outside [0, n], n < 0, or confidence outside (0, 1).
    """
    from scipy.stats import beta

    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    if trials < 0 or not 0 <= successes <= trials:
        raise ConfigError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2.0
    lower = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    upper = (
        1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    )
    return lower, upper


@dataclass(frozen=True, kw_only=True)
class CoverageRow:
    """Coverage of one cell (all cases, one class or one group).

    Attributes:
        name: ``"all"``, the class name or the group name.
        n: cases in the cell.
        covered: cases whose set contains the true class.
        coverage: covered / n (nan when n = 0).
        lower, upper: Clopper-Pearson 95 % interval of the coverage.
        mean_set_size: average number of classes per set.
        review_rate: fraction of sets that are not exactly one class.
        verdict: ``"covered"`` (lower >= 1 - alpha), ``"undercovered"`` (upper < 1 - alpha)
            or ``"inconclusive"`` (the interval contains 1 - alpha, or n = 0).
    """

    name: str
    n: int
    covered: int
    coverage: float
    lower: float
    upper: float
    mean_set_size: float
    review_rate: float
    verdict: Verdict


@dataclass(frozen=True, kw_only=True)
class CoverageReport:
    """Coverage of prediction sets against the truth.

    Attributes:
        alpha: the miscoverage level the sets were built for (target coverage 1 - alpha).
        overall: the marginal row.
        per_class: one row per class, in class order.
        per_group: one row per group, sorted by name (empty without groups).
        set_size_counts: (C + 1,) number of sets of size 0, 1, ..., C.
    """

    alpha: float
    overall: CoverageRow
    per_class: tuple[CoverageRow, ...]
    per_group: tuple[CoverageRow, ...]
    set_size_counts: tuple[int, ...]


def _row(
    name: str, hit: npt.NDArray[np.bool_], sizes: npt.NDArray[np.int64], alpha: float
) -> CoverageRow:
    n, k = int(hit.size), int(hit.sum())
    lower, upper = clopper_pearson(k, n)
    target = 1.0 - alpha
    verdict: Verdict = "inconclusive"
    if n and lower >= target:
        verdict = "covered"
    elif n and upper < target:
        verdict = "undercovered"
    return CoverageRow(
        name=name,
        n=n,
        covered=k,
        coverage=k / n if n else math.nan,
        lower=lower,
        upper=upper,
        mean_set_size=float(sizes.mean()) if n else math.nan,
        review_rate=float(np.mean(sizes != 1)) if n else math.nan,
        verdict=verdict,
    )


def coverage_report(
    sets: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    alpha: float,
    groups: Sequence[str] | npt.ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
) -> CoverageReport:
    """Empirical coverage of prediction sets, overall, per class and per group.

    Args:
        sets: (N, C) bool prediction sets (e.g. from ``ConformalClassifier.predict_sets``).
        labels: (N,) true class indices.
        alpha: the level the sets were built for, in (0, 1).
        groups: (N,) optional group labels, e.g. the center of each case.
        class_names: C names for the per-class rows (default: the indices).

    Returns:
        A :class:`CoverageReport`.

    Raises:
        ConfigError: alpha outside (0, 1), or shapes that do not fit.
    """
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    m = np.asarray(sets, dtype=bool)
    if m.ndim != 2:
        raise ConfigError(f"sets must have shape (N, C), got {m.shape}")
    n, c = m.shape
    y = np.asarray(labels)
    if y.shape != (n,) or (n and not np.issubdtype(y.dtype, np.integer)):
        raise ConfigError(f"labels must be {n} integer class indices, got shape {y.shape}")
    if n and (y.min() < 0 or y.max() >= c):
        raise ConfigError(f"labels must lie in [0, {c})")
    names = [str(i) for i in range(c)] if class_names is None else [str(x) for x in class_names]
    if len(names) != c:
        raise ConfigError(f"{len(names)} class names for {c} classes")
    hit = m[np.arange(n), y.astype(np.int64)]
    sizes = m.sum(axis=1).astype(np.int64)
    per_class = tuple(_row(names[i], hit[y == i], sizes[y == i], alpha) for i in range(c))
    per_group: tuple[CoverageRow, ...] = ()
    if groups is not None:
        g = np.asarray(groups).astype(str)
        if g.shape != (n,):
            raise ConfigError(f"groups must have shape ({n},), got {g.shape}")
        per_group = tuple(_row(k, hit[g == k], sizes[g == k], alpha) for k in sorted(set(g)))
    return CoverageReport(
        alpha=float(alpha),
        overall=_row("all", hit, sizes, alpha),
        per_class=per_class,
        per_group=per_group,
        set_size_counts=tuple(int(x) for x in np.bincount(sizes, minlength=c + 1)),
    )


def risk_coverage_curve(
    confidence: npt.ArrayLike, correct: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Selective accuracy when only the most confident cases are kept.

    Cases are ranked by decreasing confidence (ties keep their input order); the k-th point
    keeps the top k.

    Args:
        confidence: (N,) a score where higher means more trusted (e.g. the top probability).
        correct: (N,) bool, whether each case's prediction was right.

    Returns:
        ``(kept, accuracy)``, both (N,): the fraction kept k/N and the accuracy on those k.

    Raises:
        ConfigError: shapes that differ, no case, or non-finite confidence.
    """
    score = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    if score.ndim != 1 or right.shape != score.shape or score.size == 0:
        raise ConfigError("confidence and correct must be two 1-d arrays of the same length > 0")
    if not np.all(np.isfinite(score)):
        raise ConfigError("confidence must be finite")
    order = np.argsort(-score, kind="stable")
    k = np.arange(1, score.size + 1, dtype=np.float64)
    accuracy = np.cumsum(right[order]) / k
    return k / score.size, accuracy


def aurc(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> float:
    """Area under the risk-coverage curve: the mean selective risk (1 - accuracy) over all k.

    Lower is better; a perfect ranking of N cases with e errors gives the minimum, and a
    random ranking about the overall error rate.

    Args:
        confidence: (N,) higher means more trusted.
        correct: (N,) bool.

    Raises:
        ConfigError: as in :func:`risk_coverage_curve`.
    """
    _, accuracy = risk_coverage_curve(confidence, correct)
    return float(np.mean(1.0 - accuracy))
