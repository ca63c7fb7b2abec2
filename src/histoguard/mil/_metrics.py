"""Slide-level metrics with bootstrap confidence intervals, per center and per fold.

Every metric here is computed from resampling *weights*: a ``(B, N)`` matrix of how often each
slide appears in each of ``B`` resamples (all ones for the plain estimate). One implementation
therefore serves both the point estimate and a vectorised bootstrap, so the two cannot drift
apart, and 1000 resamples of 500 slides take milliseconds rather than a Python loop.

Undefined values are NaN, never a silent 0 or 0.5: AUC, sensitivity, specificity and balanced
accuracy are NaN when a class is absent (a bootstrap resample of a small center can draw a single
class); such resamples are skipped for that metric and the number of usable resamples is
reported.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike

FloatArray = npt.NDArray[np.float64]

#: Key of :func:`bootstrap_ci`'s result holding the number of usable resamples (all three
#: entries equal): the fewest finite resamples over the metrics.
N_VALID_KEY = "n_valid_resamples"

#: Metrics shown in tables, in order, with their column titles.
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("auc", "AUC"),
    ("balanced_accuracy", "balanced acc."),
    ("f1", "F1"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
)


# --- weighted implementations: (B, N) weights in, (B,) values out --------------------------------


def weighted_auc(
    weights: FloatArray, positive: npt.NDArray[np.bool_], score: FloatArray
) -> FloatArray:
    """Mann–Whitney AUC per row of ``weights (B, N)``: P(score_pos > score_neg) + ½ P(tie),
    NaN for a row without positive or negative weight (the bootstrap's resamples; also the
    robustness site probe's).

    Sorting once and summing weights within tie groups makes each resample O(N) instead of a
    rank computation per resample.
    """
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    sorted_pos = positive[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    w = weights[:, order]
    w_pos = np.add.reduceat(w * sorted_pos, starts, axis=1)  # (B, tie groups)
    w_neg = np.add.reduceat(w * ~sorted_pos, starts, axis=1)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    wins = (w_pos * (neg_below + 0.5 * w_neg)).sum(axis=1)
    pairs = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1.0), np.nan)


def _ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    """``num / den`` with NaN where the denominator is zero (an undefined rate)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _binary_weighted(
    weights: FloatArray, y_true: npt.NDArray[np.int64], score: FloatArray, *, threshold: float
) -> dict[str, FloatArray]:
    positive = y_true == 1
    predicted = score >= threshold
    cells = np.stack(
        [
            positive & predicted,
            positive & ~predicted,
            ~positive & predicted,
            ~positive & ~predicted,
        ],
        axis=1,
    ).astype(np.float64)
    tp, fn, fp, tn = (weights @ cells).T
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    return {
        "auc": weighted_auc(weights, positive, score),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "accuracy": _ratio(tp + tn, tp + fn + fp + tn),
        "n": tp + fn + fp + tn,
        "n_positive": tp + fn,
    }


def _nanmean_rows(values: FloatArray) -> FloatArray:
    """Row means over finite entries, NaN for a row with none (without numpy's warning)."""
    finite = np.isfinite(values)
    return _ratio(np.where(finite, values, 0.0).sum(axis=1), finite.sum(axis=1).astype(np.float64))


def _multiclass_weighted(
    weights: FloatArray, y_true: npt.NDArray[np.int64], probs: FloatArray
) -> dict[str, FloatArray]:
    n_classes = probs.shape[1]
    truth = np.eye(n_classes, dtype=np.float64)[y_true]  # (N, C) one-hot
    predicted = np.eye(n_classes, dtype=np.float64)[probs.argmax(axis=1)]
    tp = weights @ (truth * predicted)  # (B, C)
    support = weights @ truth
    n_predicted = weights @ predicted
    # A class absent from a resample has no one-vs-rest AUC, so neither has the macro mean.
    auc = np.stack(
        [weighted_auc(weights, y_true == c, probs[:, c]) for c in range(n_classes)], axis=1
    ).mean(axis=1)
    return {
        "auc": auc,
        # Like scikit-learn: recall averaged over the classes present in the truth; F1 over the
        # classes present in the truth or the predictions.
        "balanced_accuracy": _nanmean_rows(_ratio(tp, support)),
        "f1": _nanmean_rows(_ratio(2 * tp, support + n_predicted)),
        "accuracy": _ratio(tp.sum(axis=1), support.sum(axis=1)),
        "n": support.sum(axis=1),
    }


# --- public point estimates ----------------------------------------------------------------------


def _binary_inputs(y_true: ArrayLike, score: ArrayLike) -> tuple[npt.NDArray[np.int64], FloatArray]:
    y = np.asarray(y_true)
    s = np.asarray(score, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"y_true and score must both have shape (N,), got {y.shape}, {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")
    if not np.isfinite(s).all():
        raise ValueError("score must be finite")
    return y.astype(np.int64), s


def _multiclass_inputs(
    y_true: ArrayLike, probs: ArrayLike
) -> tuple[npt.NDArray[np.int64], FloatArray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"need y_true (N,) and probs (N, C), got {y.shape}, {p.shape}")
    if y.size and not (
        np.issubdtype(y.dtype, np.integer) and y.min() >= 0 and y.max() < p.shape[1]
    ):
        raise ValueError(f"y_true must hold class indices in [0, {p.shape[1]})")
    if not np.isfinite(p).all():
        raise ValueError("probs must be finite")
    return y.astype(np.int64), p


def _unbatch(values: Mapping[str, FloatArray]) -> dict[str, float]:
    return {name: float(v[0]) for name, v in values.items()}


def binary_metrics(
    y_true: ArrayLike, score: ArrayLike, *, threshold: float = 0.5
) -> dict[str, float]:
    """Threshold and ranking metrics of a binary slide classifier.

    Args:
        y_true: ``(N,)`` labels in {0, 1}; 1 is the positive class.
        score: ``(N,)`` finite scores, higher meaning more positive (probability of class 1).
        threshold: a slide is called positive when ``score >= threshold``.

    Returns:
        ``auc`` (Mann–Whitney, ties count ½), ``balanced_accuracy``, ``f1``, ``sensitivity``,
        ``specificity``, ``accuracy``, ``n`` and ``n_positive``. AUC, sensitivity, specificity
        and balanced accuracy are NaN when a class is absent; F1 is NaN when there are neither
        positives nor positive calls.

    Raises:
        ValueError: on mismatched shapes, labels other than 0/1, or non-finite scores.
    """
    y, s = _binary_inputs(y_true, score)
    return _unbatch(_binary_weighted(np.ones((1, y.size)), y, s, threshold=threshold))


def multiclass_metrics(y_true: ArrayLike, probs: ArrayLike) -> dict[str, float]:
    """Macro-averaged metrics of a C-class slide classifier (prediction = arg-max).

    Args:
        y_true: ``(N,)`` class indices in ``[0, C)``.
        probs: ``(N, C)`` finite class scores.

    Returns:
        ``auc`` (macro one-vs-rest, NaN if any class is absent), ``balanced_accuracy`` (mean
        recall over classes present), ``f1`` (macro), ``accuracy`` and ``n``.

    Raises:
        ValueError: on mismatched shapes, out-of-range labels or non-finite scores.
    """
    y, p = _multiclass_inputs(y_true, probs)
    return _unbatch(_multiclass_weighted(np.ones((1, y.size)), y, p))


# --- bootstrap -----------------------------------------------------------------------------------

MetricFn = Callable[..., Mapping[str, float]]
_WeightedFn = Callable[..., Mapping[str, FloatArray]]


def _weighted_binary_entry(
    weights: FloatArray, y_true: ArrayLike, score: ArrayLike, *, threshold: float = 0.5
) -> dict[str, FloatArray]:
    # The default must stay binary_metrics' default; a test compares the two paths.
    return _binary_weighted(weights, *_binary_inputs(y_true, score), threshold=threshold)


def _weighted_multiclass_entry(
    weights: FloatArray, y_true: ArrayLike, probs: ArrayLike
) -> dict[str, FloatArray]:
    return _multiclass_weighted(weights, *_multiclass_inputs(y_true, probs))


#: Public metric → its weighted form, which the bootstrap evaluates on all resamples at once.
_WEIGHTED_FORMS: dict[Callable[..., Any], _WeightedFn] = {
    binary_metrics: _weighted_binary_entry,
    multiclass_metrics: _weighted_multiclass_entry,
}


def _weighted_form(metric_fn: MetricFn) -> _WeightedFn | None:
    """The vectorised form of ``metric_fn``, seeing through ``functools.partial`` keywords."""
    keywords: dict[str, Any] = {}
    fn: Callable[..., Any] = metric_fn
    while isinstance(fn, functools.partial):
        if fn.args:
            return None
        keywords = {**fn.keywords, **keywords}
        fn = fn.func
    weighted = _WEIGHTED_FORMS.get(fn)
    return None if weighted is None else functools.partial(weighted, **keywords)


def _row_counts(indices: npt.NDArray[np.int64], size: int) -> FloatArray:
    """``(B, M)`` drawn indices → ``(B, size)`` multiplicities, one bincount for all rows."""
    n_rows = indices.shape[0]
    flat = (indices + size * np.arange(n_rows)[:, None]).ravel()
    return np.bincount(flat, minlength=n_rows * size).reshape(n_rows, size).astype(np.float64)


def _resample_weights(
    n: int, n_boot: int, rng: np.random.Generator, groups: ArrayLike | None
) -> FloatArray:
    """``(n_boot, n)`` bootstrap multiplicities; whole groups are drawn when groups are given."""
    if groups is None:
        return _row_counts(rng.integers(0, n, size=(n_boot, n)), n)
    group_ids = np.asarray(groups)
    if group_ids.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {group_ids.shape}")
    _, member_of = np.unique(group_ids, return_inverse=True)
    n_groups = int(member_of.max()) + 1 if n else 0
    group_counts = _row_counts(rng.integers(0, n_groups, size=(n_boot, n_groups)), n_groups)
    return group_counts[:, member_of.ravel()]


def bootstrap_ci(
    metric_fn: MetricFn,
    *arrays: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> dict[str, tuple[float, float, float]]:
    """Percentile bootstrap confidence intervals of every metric ``metric_fn`` returns.

    :func:`binary_metrics` and :func:`multiclass_metrics` (also wrapped in
    ``functools.partial``) are evaluated on all resamples at once; any other function is called
    once per resample with the resampled arrays.

    Args:
        metric_fn: ``metric_fn(*arrays) -> {name: value}``.
        *arrays: arrays sharing a first axis of length N (slides), resampled together.
        n_boot: number of resamples.
        alpha: 1 − confidence level; the interval is the [α/2, 1 − α/2] percentile range.
        seed: seed of the resampling generator; equal seeds give equal resamples.
        groups: ``(N,)`` group of each slide (e.g. patient); when given, whole groups are
            resampled, which keeps correlated slides together and widens the interval honestly.

    Returns:
        ``{name: (point estimate, low, high)}``. Resamples where a metric is undefined (NaN,
        e.g. AUC of a single-class resample) are skipped for that metric; the bounds are NaN
        when the point estimate is undefined or no resample is usable. ``N_VALID_KEY`` maps to
        the fewest usable resamples over the metrics, repeated three times.

    Raises:
        ValueError: if no array is given, the arrays differ in length, or n_boot < 1.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    data = [np.asarray(a) for a in arrays]
    n = len(data[0])
    if any(len(a) != n for a in data):
        raise ValueError(f"arrays must share their first axis, got {[len(a) for a in data]}")
    point = metric_fn(*data)
    weights = _resample_weights(n, n_boot, np.random.default_rng(seed), groups)
    weighted = _weighted_form(metric_fn)
    if weighted is not None:
        resampled = {
            k: np.asarray(v, dtype=np.float64) for k, v in weighted(weights, *data).items()
        }
    else:
        rows = np.arange(n)
        draws = [
            metric_fn(*(a[np.repeat(rows, w.astype(np.int64))] for a in data)) for w in weights
        ]
        resampled = {k: np.array([d[k] for d in draws], dtype=np.float64) for k in point}
    result: dict[str, tuple[float, float, float]] = {}
    n_valid = n_boot
    for name, estimate in point.items():
        values = resampled[name][np.isfinite(resampled[name])]
        n_valid = min(n_valid, values.size)
        if values.size and math.isfinite(estimate):
            low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        else:
            low = high = math.nan
        result[name] = (float(estimate), float(low), float(high))
    result[N_VALID_KEY] = (float(n_valid),) * 3
    return result


# --- reports -------------------------------------------------------------------------------------


def _json_number(value: float) -> float | None:
    """Strict JSON has no NaN: undefined values become null."""
    return float(value) if math.isfinite(value) else None


def _strata(values: Sequence[str] | None, n: int, what: str) -> dict[str, npt.NDArray[np.bool_]]:
    """Name → row mask of each distinct value, in sorted order."""
    if values is None:
        return {}
    names = np.asarray([str(v) for v in values])
    if names.shape != (n,):
        raise ValueError(f"{what} must have one entry per slide ({n}), got {names.shape}")
    return {str(name): names == name for name in np.unique(names)}


def metrics_report(
    y_true: ArrayLike,
    probs: ArrayLike,
    *,
    labels: Sequence[str],
    threshold: float = 0.5,
    centers: Sequence[str] | None = None,
    folds: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics with bootstrap intervals over all slides, per fold and per center, as JSON.

    Binary when there are two labels (the score is the probability of ``labels[1]``), multiclass
    (arg-max, macro averages) otherwise.

    Args:
        y_true: ``(N,)`` class indices into ``labels``.
        probs: ``(N, C)`` class probabilities, or ``(N,)`` probabilities of ``labels[1]`` when
            there are two labels. For cross-validation these are the out-of-fold predictions.
        labels: the C class names.
        threshold: decision threshold on the positive-class probability (binary only).
        centers: ``(N,)`` hospital of each slide, for a per-center breakdown.
        folds: ``(N,)`` test fold of each slide, for a per-fold breakdown.
        groups: ``(N,)`` patient (or other unit) of each slide; the bootstrap resamples whole
            groups when given.
        n_boot: bootstrap resamples per stratum.
        alpha: 1 − confidence level.
        seed: resampling seed, the same for every stratum.

    Returns:
        ``{"task", "labels", "threshold", "n_boot", "alpha", "seed", "resampled_by", "overall",
        "folds", "centers"}``; each stratum is ``{"n", "n_valid_resamples", "metrics": {name:
        {"value", "low", "high"}}}`` with null for undefined numbers, so ``json.dumps`` accepts
        it as is.

    Raises:
        ValueError: on shapes that do not agree with each other or with ``labels``.
    """
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    n_classes = len(labels)
    if n_classes < 2:
        raise ValueError(f"need at least two labels, got {list(labels)}")
    binary = n_classes == 2
    if p.ndim == 1 and binary:
        arrays: tuple[np.ndarray, ...] = (y, p)
    elif p.ndim == 2 and p.shape[1] == n_classes:
        arrays = (y, p[:, 1]) if binary else (y, p)
    else:
        raise ValueError(f"probs of shape {p.shape} do not match {n_classes} labels")
    metric_fn: MetricFn = (
        functools.partial(binary_metrics, threshold=threshold) if binary else multiclass_metrics
    )
    n = len(y)
    group_ids = None if groups is None else np.asarray([str(g) for g in groups])

    def stratum(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
        ci = bootstrap_ci(
            metric_fn,
            *(a[mask] for a in arrays),
            n_boot=n_boot,
            alpha=alpha,
            seed=seed,
            groups=None if group_ids is None else group_ids[mask],
        )
        n_valid = ci.pop(N_VALID_KEY)[0]
        return {
            "n": int(mask.sum()),
            "n_per_class": {str(c): int((y[mask] == i).sum()) for i, c in enumerate(labels)},
            "n_valid_resamples": int(n_valid),
            "metrics": {
                name: dict(zip(("value", "low", "high"), map(_json_number, v), strict=True))
                for name, v in ci.items()
            },
        }

    return {
        "task": "binary" if binary else "multiclass",
        "labels": [str(label) for label in labels],
        "threshold": threshold if binary else None,
        "n_boot": n_boot,
        "alpha": alpha,
        "seed": seed,
        "resampled_by": "slide" if groups is None else "group",
        "overall": stratum(np.ones(n, dtype=bool)),
        "folds": {k: stratum(m) for k, m in _strata(folds, n, "folds").items()},
        "centers": {k: stratum(m) for k, m in _strata(centers, n, "centers").items()},
    }


def fmt(value: float | None) -> str:
    """Three decimals, or ``—`` for an undefined value."""
    return "—" if value is None else f"{value:.3f}"


def too_few(stratum: Mapping[str, Any]) -> str | None:
    """Why a stratum's intervals are not worth printing, or None: fewer than
    :data:`~histoguard.core._verdict.MIN_CI_SLIDES` slides, or (binary) fewer than
    :data:`~histoguard.core._verdict.MIN_CI_PER_CLASS` of a class."""
    from histoguard.core._verdict import MIN_CI_PER_CLASS, MIN_CI_SLIDES

    if stratum["n"] < MIN_CI_SLIDES:
        return f"too few slides: {stratum['n']}"
    per_class = stratum.get("n_per_class") or {}
    if len(per_class) == 2:
        scarce = {c: k for c, k in per_class.items() if k < MIN_CI_PER_CLASS}
        if scarce:
            return "too few slides: " + ", ".join(f"{k} {c}" for c, k in scarce.items())
    return None


def with_ci(metric: Mapping[str, float | None] | None, stratum: Mapping[str, Any]) -> str:
    """``value [low, high]``, or ``value (too few slides: n)`` where the interval rests on too
    few slides (see :func:`too_few`), or ``—`` when undefined."""
    if metric is None or metric["value"] is None:
        return "—"
    reason = too_few(stratum)
    if reason is not None:
        return f"{fmt(metric['value'])} ({reason})"
    return f"{fmt(metric['value'])} [{fmt(metric['low'])}, {fmt(metric['high'])}]"


def _rows(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    rows: list[tuple[str, Mapping[str, Any]]] = [("overall", report["overall"])]
    rows += [(f"fold {k}", v) for k, v in report["folds"].items()]
    rows += [(f"center {k}", v) for k, v in report["centers"].items()]
    return rows


def format_table(report: Mapping[str, Any]) -> str:
    """A fixed-width text table of a :func:`metrics_report`: overall, per fold, per center.

    Columns: n, AUC [CI], balanced accuracy [CI], F1, sensitivity, specificity (point
    estimates; "—" where undefined or, for multiclass, not computed). A row on too few slides
    shows its values without an interval, and says so.
    """
    level = round(100 * (1 - report["alpha"]))
    title = f"{report['task']} ({' vs '.join(report['labels'])})"
    if report["threshold"] is not None:
        title += f", threshold {report['threshold']:g}"
    title += (
        f"; {level}% percentile bootstrap CI, {report['n_boot']} resamples "
        f"by {report['resampled_by']}"
    )
    header = (
        f"{'':<16}{'n':>6}  {'AUC [' + str(level) + '% CI]':<22}"
        f"{'balanced acc. [CI]':<22}{'F1':>7}{'sens.':>7}{'spec.':>7}"
    )
    lines = [title, header, "-" * len(header)]
    for name, stratum in _rows(report):
        m = stratum["metrics"]
        lines.append(
            f"{name:<16}{stratum['n']:>6}  {with_ci(m.get('auc'), stratum):<22}"
            f"{with_ci(m.get('balanced_accuracy'), stratum):<22}"
            + "".join(
                f"{fmt(m[k]['value'] if k in m else None):>7}"
                for k in ("f1", "sensitivity", "specificity")
            )
        )
    return "\n".join(lines)
