"""The site probe: how well a linear probe predicts the center (hospital) from embeddings.

A logistic-regression probe (the one of :mod:`._linear_probe`: standardised features, classes
weighted, ``C`` chosen on held-out slides) is cross-validated with folds grouped by slide
(``StratifiedGroupKFold``: stratified by the target, no slide on both sides of a fold). Every
embedding is scored once, by the probe of the fold that held it out; the AUROC (one-vs-rest,
macro-averaged over centers when there are more than two) and the balanced accuracy are
computed from these out-of-fold scores. Chance is 0.5 for the AUROC and ``1 / n_centers`` for
the balanced accuracy. The confidence intervals resample whole slides with replacement
(percentile bootstrap): tiles of one slide are correlated, so a tile bootstrap would be too
narrow.

The same cross-validation with the biological class as target (:func:`biology_probe`) gives
the task's balanced accuracy that a harmonisation must keep. :func:`paired_difference` gives
the interval of a change between two embedding sets of the same rows (before / after), with
the same slide resamples on both sides.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from histoguard.errors import AuditDataError, ConfigError
from histoguard.mil._metrics import weighted_auc
from histoguard.robustness.data._containers import LabelledEmbeddings
from histoguard.robustness.metrics._linear_probe import DEFAULT_C_GRID, fit_linear_probe

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Target = Literal["center", "class"]

#: AUROC of a probe that cannot tell the centers apart.
CHANCE_AUROC = 0.5
#: Resamples scored at once (bounds the memory of the bootstrap to block x N floats).
_BLOCK = 64


@dataclass(frozen=True, kw_only=True)
class SiteProbeConfig:
    """Settings of :func:`site_probe` and :func:`biology_probe`.

    Attributes:
        n_folds: cross-validation folds (fewer when a center, or class, has fewer slides).
        c_grid: inverse regularisation strengths the probe chooses from, inside each fold.
        n_bootstrap: slide-bootstrap resamples for the confidence intervals.
        confidence: coverage of the percentile intervals, in (0, 1).
        seed: seeds the folds, the probe's validation split and the bootstrap.

    Raises:
        ConfigError: a setting out of range (the message names it).
    """

    n_folds: int = 5
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise ConfigError(f"n_folds must be at least 2, got {self.n_folds}")
        if self.n_bootstrap < 1:
            raise ConfigError(f"n_bootstrap must be at least 1, got {self.n_bootstrap}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ConfigError(f"c_grid must hold positive values, got {self.c_grid}")


@dataclass(frozen=True, kw_only=True, eq=False)
class CrossValidatedProbe:
    """Out-of-fold scores of a slide-grouped cross-validated linear probe (N rows, K classes).

    Attributes:
        classes: the K target values, sorted; column ``k`` of ``scores`` is ``classes[k]``.
        target: ``(N,)`` index into ``classes`` of each row's true value.
        slide: ``(N,)`` index of each row's slide (into ``slides``).
        slides: the slide names.
        scores: ``(N, K)`` probabilities from the fold that held the row out.
        fold: ``(N,)`` that fold's number.
        c: the ``C`` each fold's probe chose.
    """

    classes: tuple[str, ...]
    target: IntArray
    slide: IntArray
    slides: tuple[str, ...]
    scores: FloatArray
    fold: IntArray
    c: tuple[float, ...]

    def auroc(self, weights: FloatArray | None = None) -> FloatArray:
        """AUROC (one-vs-rest macro for K > 2) for each ``(B, N)`` row weighting (ones: one)."""
        return _weighted_auroc(self.target, self.scores, self._weights(weights))

    def balanced_accuracy(self, weights: FloatArray | None = None) -> FloatArray:
        """Balanced accuracy of the arg-max class for each ``(B, N)`` row weighting."""
        predicted = self.scores.argmax(axis=1)
        return _weighted_balanced_accuracy(self.target, predicted, self._weights(weights))

    def _weights(self, weights: FloatArray | None) -> FloatArray:
        return np.ones((1, self.target.size)) if weights is None else weights


@dataclass(frozen=True, kw_only=True)
class ProbeCVResult:
    """A slide-grouped cross-validated probe's AUROC and balanced accuracy, with intervals.

    Attributes:
        target: ``"center"`` (the site probe) or ``"class"`` (the biological task).
        auroc: from the out-of-fold scores, in [0, 1]; chance 0.5.
        ci: percentile slide-bootstrap interval of ``auroc``.
        balanced_accuracy: mean recall over the targets, in [0, 1]; chance ``1 / K``.
        ci_balanced_accuracy: its slide-bootstrap interval.
        confidence: coverage of both intervals.
        classes: the K target values (centers or classes).
        n_folds: folds used.
        details: counts, per-fold AUROC and ``C``, the settings.
    """

    target: Target
    auroc: float
    ci: tuple[float, float]
    balanced_accuracy: float
    ci_balanced_accuracy: tuple[float, float]
    confidence: float
    classes: tuple[str, ...]
    n_folds: int
    details: dict[str, Any]

    @property
    def chance_balanced_accuracy(self) -> float:
        """Balanced accuracy of guessing: ``1 / K``."""
        return 1.0 / len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible entry (the audit's ``site_probe`` part)."""
        return {
            "auroc": self.auroc,
            "ci": list(self.ci),
            "balanced_accuracy": self.balanced_accuracy,
            "ci_balanced_accuracy": list(self.ci_balanced_accuracy),
            "confidence": self.confidence,
            "chance_auroc": CHANCE_AUROC,
            "chance_balanced_accuracy": self.chance_balanced_accuracy,
            "target": self.target,
            "classes": list(self.classes),
            "n_folds": self.n_folds,
            **self.details,
        }


def site_probe(data: LabelledEmbeddings, config: SiteProbeConfig | None = None) -> ProbeCVResult:
    """How well the center is predicted from the embeddings (0.5 = not at all, 1 = perfectly).

    Args:
        data: ``(N, D)`` embeddings with center and slide per row.
        config: settings (defaults if None).

    Returns:
        The AUROC and balanced accuracy of the out-of-fold center predictions, with
        slide-bootstrap intervals.

    Raises:
        AuditDataError: fewer than 2 centers, or fewer than 3 slides of a center.
    """
    if len(data.centers) < 2:
        raise AuditDataError(
            f"not applicable: one center ({', '.join(data.centers)}); the site probe tells "
            "centers apart and needs at least 2"
        )
    return evaluate_probe(data, "center", config)[0]


def biology_probe(data: LabelledEmbeddings, config: SiteProbeConfig | None = None) -> ProbeCVResult:
    """How well the biological class is predicted (the task a harmonisation must keep).

    Same cross-validation as :func:`site_probe`, with the class as target.

    Raises:
        AuditDataError: fewer than 2 classes, or fewer than 3 slides of a class.
    """
    if len(data.classes) < 2:
        raise AuditDataError(f"not applicable: one class ({', '.join(data.classes)})")
    return evaluate_probe(data, "class", config)[0]


def evaluate_probe(
    data: LabelledEmbeddings, target: Target, config: SiteProbeConfig | None = None
) -> tuple[ProbeCVResult, CrossValidatedProbe]:
    """The cross-validated probe of ``target`` (``"center"`` or ``"class"``): its summary and
    its out-of-fold scores (for :func:`paired_difference`).

    Raises:
        AuditDataError: fewer than 2 target values, or one with fewer than 3 slides.
    """
    config = config or SiteProbeConfig()
    values = data.center if target == "center" else data.label
    probe = cross_validated_probe(
        data.embeddings, values, data.slide_id, n_folds=config.n_folds, c_grid=config.c_grid,
        seed=config.seed,
    )  # fmt: skip
    tail = (1 - config.confidence) / 2
    auroc, ba = [], []
    for weights in bootstrap_weights(probe.slide, config.n_bootstrap, config.seed):
        auroc.append(probe.auroc(weights))
        ba.append(probe.balanced_accuracy(weights))
    lo_a, hi_a = np.nanquantile(np.concatenate(auroc), [tail, 1 - tail])
    lo_b, hi_b = np.nanquantile(np.concatenate(ba), [tail, 1 - tail])
    n_folds = int(probe.fold.max()) + 1
    per_fold = []
    for f in range(n_folds):
        rows = (probe.fold == f).astype(np.float64)[None, :]
        per_fold.append(float(probe.auroc(rows)[0]))
    slides_per = [
        int(np.unique(probe.slide[probe.target == k]).size) for k in range(len(probe.classes))
    ]
    summary = ProbeCVResult(
        target=target,
        auroc=float(probe.auroc()[0]),
        ci=(float(lo_a), float(hi_a)),
        balanced_accuracy=float(probe.balanced_accuracy()[0]),
        ci_balanced_accuracy=(float(lo_b), float(hi_b)),
        confidence=config.confidence,
        classes=probe.classes,
        n_folds=n_folds,
        details={
            "n_embeddings": int(probe.target.size),
            "n_slides": len(probe.slides),
            "slides_per_class": dict(zip(probe.classes, slides_per, strict=True)),
            "per_fold_auroc": per_fold,
            "per_fold_c": list(probe.c),
            "parameters": {
                "n_bootstrap": config.n_bootstrap,
                "c_grid": list(config.c_grid),
                "seed": config.seed,
                "folds": "StratifiedGroupKFold (stratified by target, grouped by slide)",
            },
        },
    )
    return summary, probe


def cross_validated_probe(
    embeddings: npt.ArrayLike,
    target: npt.ArrayLike,
    groups: npt.ArrayLike,
    *,
    n_folds: int = 5,
    c_grid: tuple[float, ...] = DEFAULT_C_GRID,
    seed: int = 0,
) -> CrossValidatedProbe:
    """Out-of-fold scores of a linear probe cross-validated with folds grouped by slide.

    Args:
        embeddings: ``(N, D)`` embeddings.
        target: ``(N,)`` what the probe predicts (center or class).
        groups: ``(N,)`` slide of each row; a slide is never on both sides of a fold, nor of
            the validation split that chooses ``C`` inside a fold.
        n_folds: folds at most; fewer when the rarest target has fewer slides.
        c_grid: inverse regularisation strengths (see :func:`fit_linear_probe`).
        seed: seeds the folds and each fold's validation split.

    Raises:
        AuditDataError: fewer than 2 target values, or one with fewer than 3 slides (a fold
            must hold one out and still choose ``C`` on another).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(target).astype(str)
    g = np.asarray(groups).astype(str)
    classes, y_index = np.unique(y, return_inverse=True)
    slides, slide_index = np.unique(g, return_inverse=True)
    if classes.size < 2:
        raise AuditDataError(f"a probe needs at least 2 target values, got {classes.tolist()}")
    per_class = [np.unique(slide_index[y_index == k]).size for k in range(classes.size)]
    few = [f"{c} ({n})" for c, n in zip(classes.tolist(), per_class, strict=True) if n < 3]
    if few:
        raise AuditDataError(
            f"too few slides for a slide-grouped cross-validated probe: {', '.join(few)}; "
            "each value needs at least 3 slides (one held out, one to choose C, one to fit)"
        )
    splitter = StratifiedGroupKFold(
        n_splits=min(n_folds, min(per_class)), shuffle=True, random_state=seed
    )
    scores = np.full((y.size, classes.size), np.nan)
    fold = np.full(y.size, -1, dtype=np.int64)
    chosen = []
    lookup = {c: k for k, c in enumerate(classes.tolist())}
    for f, (train, test) in enumerate(splitter.split(x, y_index, groups=slide_index)):
        try:
            probe = fit_linear_probe(x[train], y[train], groups=g[train], c_grid=c_grid, seed=seed)
        except AuditDataError as error:
            raise AuditDataError(f"fold {f}: {error}") from None
        columns = [lookup[c] for c in probe.classes]
        scores[test] = 0.0
        scores[np.ix_(test, columns)] = probe.predict_proba(x[test])
        fold[test] = f
        chosen.append(probe.c)
    return CrossValidatedProbe(
        classes=tuple(classes.tolist()),
        target=y_index.astype(np.int64),
        slide=slide_index.astype(np.int64),
        slides=tuple(slides.tolist()),
        scores=scores,
        fold=fold,
        c=tuple(chosen),
    )


def bootstrap_weights(slide: IntArray, n_bootstrap: int, seed: int) -> Iterator[FloatArray]:
    """Row weights ``(b, N)`` of slide-bootstrap resamples, in blocks of at most 64.

    Each resample draws as many slides as there are, with replacement; a row's weight is how
    often its slide was drawn. Equal seeds and slides give equal resamples, so two embedding
    sets of the same rows get the same resamples (a paired bootstrap).
    """
    n_slides = int(slide.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_slides, np.full(n_slides, 1 / n_slides), size=n_bootstrap)
    for start in range(0, n_bootstrap, _BLOCK):
        yield draws[start : start + _BLOCK][:, slide].astype(np.float64)


def paired_difference(
    before: CrossValidatedProbe,
    after: CrossValidatedProbe,
    metric: Literal["auroc", "balanced_accuracy"],
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """``after - before`` of a metric and its paired slide-bootstrap interval.

    Both probes must score the same rows (same slides, same order): each resample weights the
    rows of both alike.

    Raises:
        AuditDataError: the two probes do not score the same rows.
    """
    if before.slides != after.slides or not np.array_equal(before.slide, after.slide):
        raise AuditDataError(
            "before and after hold different rows; a paired comparison needs the same slides "
            "and tiles on both sides (read both with the same seed and max_tiles_per_slide)"
        )
    diffs = [
        getattr(after, metric)(w) - getattr(before, metric)(w)
        for w in bootstrap_weights(before.slide, n_bootstrap, seed)
    ]
    tail = (1 - confidence) / 2
    low, high = np.nanquantile(np.concatenate(diffs), [tail, 1 - tail])
    point = float(getattr(after, metric)()[0] - getattr(before, metric)()[0])
    return point, (float(low), float(high))


def _weighted_auroc(target: IntArray, scores: FloatArray, weights: FloatArray) -> FloatArray:
    """AUROC per row of ``weights`` (B, N): binary for 2 classes, else one-vs-rest macro
    (the mean of each class's AUROC against the rest, as scikit-learn's ``ovr`` / ``macro``).
    Ties count one half. NaN where a class has no weight."""
    n_classes = scores.shape[1]
    columns = [1] if n_classes == 2 else range(n_classes)
    values = [weighted_auc(weights, target == k, scores[:, k]) for k in columns]
    return np.asarray(np.mean(values, axis=0), dtype=np.float64)


def _weighted_balanced_accuracy(
    target: IntArray, predicted: IntArray, weights: FloatArray
) -> FloatArray:
    n_classes = int(max(target.max(), predicted.max())) + 1
    recalls = []
    for k in range(n_classes):
        members = target == k
        if not members.any():
            continue
        total = weights[:, members].sum(axis=1)
        hit = weights[:, members & (predicted == k)].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(total > 0, hit / np.where(total > 0, total, 1), np.nan))
    return np.asarray(np.nanmean(np.vstack(recalls), axis=0), dtype=np.float64)
