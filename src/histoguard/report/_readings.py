"""One-line readings of the audit's numbers: value + confidence interval + thresholds -> words.

Each measurement has thresholds that separate its verdicts (for the robustness index 0.3, 0.5
and 0.7). A reading gives the verdict of the band the value lies in only when the whole
confidence interval lies in that band too; when the interval reaches across a threshold the
data cannot tell the verdicts apart, and the reading says so::

    inconclusive: the 95 % CI [0.41, 0.62] spans the threshold 0.50

Pure functions of numbers, so every reading on the audit page is testable without a page.
"""

from __future__ import annotations

from collections.abc import Sequence

from histoguard.core._verdict import (
    AUC_THRESHOLDS,
    CHANCE_VERDICTS,
    MIN_CI_SLIDES,
    Format,
    level_text,
    verdict,
)

#: Robustness-index thresholds (center signal strong / visible / weak) and their verdicts.
RI_THRESHOLDS = (0.3, 0.5, 0.7)
RI_VERDICTS = (
    "the neighbourhood is organised by center, not biology: a strong center signal",
    "neighbours share the center more often than the biology: the embeddings encode the "
    "hospital, and downstream models can learn it",
    "biology dominates the neighbourhood, but the center is clearly visible too",
    "neighbours mostly share the biology across centers: the center signal is weak",
)
#: APD thresholds (relative accuracy drop of 10 % and 2 %) and their verdicts.
APD_THRESHOLDS = (-0.1, -0.02)
APD_VERDICTS = (
    "a probe trained on confounded data learns the center shortcut and loses much of its accuracy",
    "confounded training data cost a linear probe noticeable accuracy",
    "a linear probe barely suffers when training data confound center and class",
)
#: Clustering-score thresholds and their verdicts.
CLUSTERING_THRESHOLDS = (-0.3, 0.3)
CLUSTERING_VERDICTS = (
    "unsupervised clusters follow the center more than the biology",
    "unsupervised clusters follow neither biology nor center strongly",
    "unsupervised clusters follow the biology more than the center",
)
#: Site-probe AUROC thresholds: 0.65 (the most a harmonised embedding may leave; 0.5 is
#: chance) and 0.9 (centers told apart almost perfectly), and their verdicts.
SITE_PROBE_THRESHOLDS = (0.65, 0.9)
SITE_PROBE_VERDICTS = (
    "the center is hard to predict from the embeddings: a weak site signal",
    "a linear probe predicts the center better than chance: the hospital is visible in the "
    "embeddings",
    "a linear probe tells the centers apart almost perfectly: the embeddings encode the hospital",
)
#: The true range of the clustering score: an ARI lies in [-0.5, 1], so a difference of two
#: lies in [-1.5, 1.5].
CLUSTERING_BOUNDS = (-1.5, 1.5)


def _interval(ci: Sequence[float] | None, fmt: Format, confidence: float = 0.95) -> str:
    if ci is None or None in ci:
        return ""
    return f" ({level_text(confidence)} CI {fmt(ci[0])} to {fmt(ci[1])})"


def k_rule(k: int, k_selection: str, knn_accuracy: float | None = None) -> str:
    """How the headline ``k`` of the robustness index was chosen, in words."""
    if k_selection == "user":
        return f"k = {k} was set by the user (--k)"
    accuracy = f" {knn_accuracy:.3f}" if knn_accuracy is not None else ""
    return (
        f"k = {k} is the number of neighbours at which majority-vote kNN classifies the "
        f"biological class best (balanced accuracy{accuracy}), among the k where the index "
        "is defined; this is the rule when no --k is given"
    )


def ri_reading(
    value: float,
    ci: Sequence[float] | None,
    k: int,
    *,
    k_selection: str = "knn_balanced_accuracy",
    knn_accuracy: float | None = None,
    confidence: float = 0.95,
) -> str:
    """What a robustness index means, for a reader who does not know the metric."""
    text = verdict(value, ci, RI_THRESHOLDS, RI_VERDICTS, confidence=confidence)
    return (
        f"RI = {value:.2f}{_interval(ci, '{:.2f}'.format, confidence)} at k = {k}: {text}. "
        f"Headline k: {k_rule(k, k_selection, knn_accuracy)}. "
        "(1 = only biology, 0 = only center, 0.5 = both equally)"
    )


def _percent(value: float) -> str:
    return f"{value:+.1%}".replace("%", " %")


def apd_reading(
    apd_id: float,
    apd_ood: float | None,
    ci_id: Sequence[float] | None = None,
    ci_ood: Sequence[float] | None = None,
) -> str:
    """What the average performance drops mean; the verdict is that of the worse of the two
    (in distribution, held-out centers), with its interval."""
    ood = ""
    if apd_ood is not None:
        ood = f", {_percent(apd_ood)} on held-out centers{_interval(ci_ood, _percent)}"
    worst, worst_ci = (apd_id, ci_id) if apd_ood is None or apd_id <= apd_ood else (apd_ood, ci_ood)
    text = verdict(worst, worst_ci, APD_THRESHOLDS, APD_VERDICTS, fmt=_percent)
    return (
        f"APD {_percent(apd_id)} in-distribution{_interval(ci_id, _percent)}{ood}: {text}. "
        "(0 = no drop; -10 % = a tenth of the accuracy lost)"
    )


def clustering_reading(value: float, ci: Sequence[float] | None = None) -> str:
    """What a clustering score means, with its true range."""
    text = verdict(value, ci, CLUSTERING_THRESHOLDS, CLUSTERING_VERDICTS, fmt="{:+.2f}".format)
    low, high = CLUSTERING_BOUNDS
    return (
        f"Clustering score {value:+.2f}{_interval(ci, '{:+.2f}'.format)}: {text}. "
        f"(+1 = clusters are the classes, -1 = clusters are the centers; an ARI can fall below "
        f"0 by chance, so the score lies in [{low:+.1f}, {high:+.1f}] and a value just beyond "
        "±1 reads as ±1)"
    )


def folded_auroc(
    auroc: float, ci: Sequence[float] | None
) -> tuple[float, tuple[float, float] | None]:
    """An AUROC as distance from chance, ``max(a, 1 - a)``, with its interval folded the same
    way: a probe that is right inverted (AUROC 0.2) reads the center as well as one at 0.8.
    Below chance is what a harmoniser fitted on the very slides a probe is cross-validated on
    produces: their residual center effects are anti-correlated."""
    folded = max(auroc, 1.0 - auroc)
    if ci is None or None in ci:
        return folded, None
    low, high = float(ci[0]), float(ci[1])
    if low >= 0.5:
        return folded, (low, high)
    if high <= 0.5:
        return folded, (1.0 - high, 1.0 - low)
    return folded, (0.5, max(1.0 - low, high))


def _site_verdict(auroc: float, ci: Sequence[float] | None, confidence: float = 0.95) -> str:
    folded, folded_ci = folded_auroc(auroc, ci)
    text = verdict(folded, folded_ci, SITE_PROBE_THRESHOLDS, SITE_PROBE_VERDICTS,
                   confidence=confidence)  # fmt: skip
    if ci is not None and None not in ci and float(ci[1]) < 0.5:
        text += (
            " (the AUROC is below chance, so the center is read inverted; judged as "
            f"1 - AUROC = {folded:.2f})"
        )
    return text


def site_probe_reading(
    auroc: float,
    ci: Sequence[float] | None,
    balanced_accuracy: float,
    ci_balanced_accuracy: Sequence[float] | None,
    n_centers: int,
    *,
    confidence: float = 0.95,
) -> str:
    """What a site-probe AUROC means; the verdict needs the whole interval on one side of
    each of :data:`SITE_PROBE_THRESHOLDS`, judged on the distance from chance
    (:func:`folded_auroc`)."""
    text = _site_verdict(auroc, ci, confidence)
    fmt = "{:.2f}".format
    kind = "" if n_centers == 2 else f", one-vs-rest macro over {n_centers} centers"
    return (
        f"Site-probe AUROC = {auroc:.2f}{_interval(ci, fmt, confidence)}{kind}: {text}. "
        f"Balanced accuracy of the predicted center {balanced_accuracy:.2f}"
        f"{_interval(ci_balanced_accuracy, fmt, confidence)} (chance {1 / n_centers:.2f}). "
        f"(0.5 = the center cannot be predicted, 1 = always; thresholds "
        f"{', '.join(fmt(t) for t in SITE_PROBE_THRESHOLDS)})"
    )


#: The biological task may lose at most this much balanced accuracy (1 point) to a cure.
TASK_DROP_THRESHOLD = -0.01
_CHANGE_VERDICTS: dict[str, tuple[tuple[float, ...], tuple[str, ...]]] = {
    "site_probe_auroc": (
        (0.0,),
        ("the center became harder to predict", "the center became easier to predict"),
    ),
    "task_balanced_accuracy": (
        (TASK_DROP_THRESHOLD,),
        (
            "the biology was lost: balanced accuracy fell by more than 1 point",
            "the biology was kept: balanced accuracy fell by at most 1 point, or rose",
        ),
    ),
}
_AFTER_VERDICTS: dict[str, tuple[tuple[float, ...], tuple[str, ...]]] = {
    "robustness_index": (RI_THRESHOLDS, RI_VERDICTS),
    "apd_in_distribution": (APD_THRESHOLDS, APD_VERDICTS),
    "clustering_score": (CLUSTERING_THRESHOLDS, CLUSTERING_VERDICTS),
}


def comparison_reading(
    metric: str,
    before: float | None,
    after: float | None,
    ci_before: Sequence[float] | None = None,
    ci_after: Sequence[float] | None = None,
    difference: float | None = None,
    ci_difference: Sequence[float] | None = None,
    reason: str | None = None,
) -> str:
    """What a before / after row means: the verdict on the value after (where the metric has
    thresholds) and on the change: from its paired interval when there is one (inconclusive
    when it spans the threshold), else whether the two intervals overlap."""
    if before is None or after is None:
        return f"not measured: {reason or 'no value'}"
    parts = []
    if metric == "site_probe_auroc":
        parts.append(f"after: {_site_verdict(after, ci_after)}")
    elif metric in _AFTER_VERDICTS:
        thresholds, verdicts = _AFTER_VERDICTS[metric]
        parts.append(f"after: {verdict(after, ci_after, thresholds, verdicts)}")
    change = after - before if difference is None else difference
    if ci_difference is not None and metric in _CHANGE_VERDICTS:
        thresholds, verdicts = _CHANGE_VERDICTS[metric]
        fmt = "{:+.3f}".format
        text = verdict(change, ci_difference, thresholds, verdicts, fmt=fmt)
        parts.append(f"change {change:+.3f}{_interval(ci_difference, fmt)}: {text}")
    elif ci_before is not None and ci_after is not None and None not in (*ci_before, *ci_after):
        overlap = min(ci_before[1], ci_after[1]) >= max(ci_before[0], ci_after[0])
        parts.append(
            f"change {change:+.3f}: "
            + (
                "the intervals before and after overlap, so the change is within the uncertainty"
                if overlap
                else "the intervals before and after do not overlap"
            )
        )
    else:
        parts.append(f"change {change:+.3f} (no interval)")
    return "; ".join(parts) + "."


#: ECE above this reads as miscalibrated (a tenth of the confidence scale).
ECE_THRESHOLDS = (0.1,)
ECE_VERDICTS = ("calibrated within 0.1", "miscalibrated: ECE above 0.1")


def estimate_reading(
    metric: str,
    value: float | None,
    low: float | None,
    high: float | None,
    *,
    n: int,
    n_classes: int,
    min_slides: int = MIN_CI_SLIDES,
) -> str:
    """The model card's reading of a metric: ``"too few slides: ..."`` below ``min_slides``,
    ``"undefined"`` without a value, else :func:`verdict` against chance for ``auc`` (0.5) and
    ``balanced_accuracy`` (1 / ``n_classes``); other metrics have no threshold and read ``""``
    (their interval is shown)."""
    if n < min_slides:
        return f"too few slides: {n} < {min_slides}, the interval is not reliable"
    if value is None:
        return "undefined on these slides"
    ci = None if low is None or high is None else (low, high)
    if metric == "auc":
        return verdict(value, ci, AUC_THRESHOLDS, CHANCE_VERDICTS)
    if metric == "balanced_accuracy":
        return verdict(value, ci, (1.0 / n_classes,), CHANCE_VERDICTS)
    return ""


def ece_reading(value: float | None, low: float | None, high: float | None) -> str:
    """Calibrated or not, against :data:`ECE_THRESHOLDS`, inconclusive when the interval
    spans it."""
    if value is None:
        return "undefined"
    ci = None if low is None or high is None else (low, high)
    return verdict(value, ci, ECE_THRESHOLDS, ECE_VERDICTS, fmt="{:.3f}".format)
