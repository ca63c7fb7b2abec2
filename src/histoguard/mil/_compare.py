"""Random-split against site-aware estimates, per held-out center: where a random split's
optimism about a new hospital comes from, and where the model is worse than chance there.

A random (k-fold) split puts every hospital in training; leave-one-center-out predicts each
center with a model that never saw it. The overall gap between the two hides its source (one
center may account for all of it), so the comparison shows each held-out center with its own
interval, the training slides behind it, and flags: an AUC whose interval lies below 0.5 (the
model is inverted at that hospital), an AUC below 0.5 whose interval spans chance, a
sensitivity or specificity at or below :data:`DEGENERATE_RATE` (nearly every slide given one
class), and intervals on too few slides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from histoguard.errors import CohortError, OutputError
from histoguard.mil._metrics import TABLE_METRICS, too_few, with_ci
from histoguard.mil._splits import read_splits_file

#: The metrics file of a ``train`` output.
METRICS_JSON = "metrics.json"

#: A sensitivity or specificity at or below this means nearly every slide gets one class.
DEGENERATE_RATE = 0.2


def read_run_for_comparison(run: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A ``train`` output's ``metrics.json``, and per center held out by one of its splits the
    number of slides that split trained on (empty for a design that holds out no center).

    Raises:
        OutputError: ``run`` is not a folder, or holds no readable ``metrics.json`` with the
            ``labels``, ``overall`` and ``centers`` a ``train`` run writes (named with the fix).
    """
    fix = "pass the --out folder of a finished `histoguard train` run"
    if not run.is_dir():
        raise OutputError(f"{run}: not a folder; {fix}")
    path = run / METRICS_JSON
    if not path.is_file():
        raise OutputError(
            f"{run}: no {METRICS_JSON} in this folder (train writes it when its run finishes); "
            f"{fix}"
        )
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OutputError(
            f"{path}: cannot be read as JSON ({error}); {fix}, or train again"
        ) from None
    keys = report if isinstance(report, dict) else {}
    missing = [key for key in ("labels", "overall", "centers") if key not in keys]
    if missing:
        raise OutputError(
            f"{path}: not the metrics of a train run (it lacks {', '.join(missing)}); {fix}"
        )
    training: dict[str, int] = {}
    try:
        splits, _ = read_splits_file(run / "splits.json")
    except CohortError:
        return report, training
    for split in splits:
        for center in split.held_out_centers:
            training[center] = len(split.train)
    return report, training


def _value(stratum: Mapping[str, Any], name: str) -> float | None:
    metric = stratum["metrics"].get(name)
    return None if metric is None else metric["value"]


def _interval(stratum: Mapping[str, Any], name: str) -> tuple[float, float] | None:
    metric = stratum["metrics"].get(name)
    if metric is None or metric["low"] is None or metric["high"] is None:
        return None
    return float(metric["low"]), float(metric["high"])


def center_flags(stratum: Mapping[str, Any], labels: list[str]) -> list[str]:
    """What is wrong with one held-out center's site-aware result, in words (empty: nothing).

    Args:
        stratum: a :func:`~histoguard.mil.metrics_report` stratum (``n``, ``metrics``).
        labels: the report's class names (binary: ``labels[1]`` is the positive class).
    """
    flags = []
    reason = too_few(stratum)
    if reason is not None:
        flags.append(f"{reason}, no interval")
    auc, ci = _value(stratum, "auc"), _interval(stratum, "auc")
    if auc is not None and auc < 0.5:
        if reason is None and ci is not None and ci[1] < 0.5:
            flags.append(f"worse than chance: AUC {auc:.3f}, CI [{ci[0]:.3f}, {ci[1]:.3f}] "
                         "below 0.5 (the model is inverted here)")  # fmt: skip
        elif reason is None and ci is not None:
            flags.append(f"AUC {auc:.3f} below 0.5, but its CI [{ci[0]:.3f}, {ci[1]:.3f}] "
                         "spans chance: inconclusive")  # fmt: skip
        else:
            flags.append(f"AUC {auc:.3f} below 0.5 (no interval)")
    if len(labels) == 2:
        for rate, other in (("specificity", labels[1]), ("sensitivity", labels[0])):
            value = _value(stratum, rate)
            if value is not None and value <= DEGENERATE_RATE:
                flags.append(f"{rate} {value:.2f}: nearly every slide called {other}")
    return flags


def compare_designs(
    random_split_report: Mapping[str, Any],
    site_aware_report: Mapping[str, Any],
    *,
    training_slides: Mapping[str, int] | None = None,
) -> str:
    """Random-split (k-fold) against site-aware (leave-one-center-out) estimates, side by side.

    Args:
        random_split_report: :func:`~histoguard.mil.metrics_report` of pooled out-of-fold
            predictions from a random (or stratified) k-fold split.
        site_aware_report: :func:`~histoguard.mil.metrics_report` of predictions where each
            center was held out in turn.
        training_slides: per held-out center, the slides its site-aware model trained on
            (from the site-aware run's ``splits.json``); shown when given.

    Returns:
        A title line; a table (metric, random split [CI], site-aware [CI], difference random −
        site-aware) over all slides; a table per held-out center (slides, training slides, AUC
        and balanced accuracy of both designs, the AUC difference, flags); then one reading
        from all of it: the gap in AUC and balanced accuracy, which center it comes from,
        worse-than-chance and one-class centers, and whether the intervals overlap.
    """
    header = f"{'':<22}{'random split [CI]':<26}{'site-aware [CI]':<26}{'difference':>10}"
    lines = [
        "random split (k-fold) vs site-aware (leave-one-center-out); "
        "difference = random split − site-aware",
        header,
        "-" * len(header),
    ]
    overall_a, overall_b = random_split_report["overall"], site_aware_report["overall"]
    for name, title in TABLE_METRICS:
        if name in overall_a["metrics"] or name in overall_b["metrics"]:
            va, vb = _value(overall_a, name), _value(overall_b, name)
            diff = "—" if va is None or vb is None else f"{va - vb:+.3f}"
            lines.append(
                f"{title:<22}{with_ci(overall_a['metrics'].get(name), overall_a):<26}"
                f"{with_ci(overall_b['metrics'].get(name), overall_b):<26}{diff:>10}"
            )
    labels = list(site_aware_report["labels"])
    centers = [c for c in site_aware_report["centers"] if c in random_split_report["centers"]]
    if centers:
        lines += ["", "per held-out center (site-aware: predicted by a model trained on the other "
                  "centers only)"]  # fmt: skip
        head = (f"{'center':<14}{'slides':>7}{'trained on':>11}  {'AUC random split':<26}"
                f"{'AUC site-aware':<26}{'difference':>10}  "
                f"{'bal. acc. site-aware':<26}")  # fmt: skip
        lines += [head, "-" * len(head)]
        for center in centers:
            a, b = random_split_report["centers"][center], site_aware_report["centers"][center]
            va, vb = _value(a, "auc"), _value(b, "auc")
            diff = "—" if va is None or vb is None else f"{va - vb:+.3f}"
            trained = "—" if training_slides is None else str(training_slides.get(center, "—"))
            lines.append(
                f"{center:<14}{b['n']:>7}{trained:>11}  {with_ci(a['metrics'].get('auc'), a):<26}"
                f"{with_ci(b['metrics'].get('auc'), b):<26}{diff:>10}  "
                f"{with_ci(b['metrics'].get('balanced_accuracy'), b):<26}"
            )
            lines += [f"    {center}: {flag}" for flag in center_flags(b, labels)]
    lines += ["", _reading(random_split_report, site_aware_report, centers, labels)]
    return "\n".join(line.rstrip() for line in lines)


def _gap_text(a: Mapping[str, Any], b: Mapping[str, Any], name: str, title: str) -> str | None:
    va, vb = _value(a, name), _value(b, name)
    if va is None or vb is None:
        return None
    gap = va - vb
    if abs(gap) < 0.005:
        return f"agrees on {title} within 0.005 ({va:.3f} vs {vb:.3f})"
    verb = "overestimates" if gap > 0 else "underestimates"
    ia, ib = _interval(a, name), _interval(b, name)
    if too_few(a) or too_few(b) or ia is None or ib is None:
        support = "too few slides for intervals"
    elif ia[0] > ib[1] or ib[0] > ia[1]:
        support = "the intervals do not overlap"
    else:
        support = "the intervals overlap: the gap is not shown to be real"
    return f"{verb} {title} by {abs(gap):.2f} ({va:.3f} vs {vb:.3f}; {support})"


def _reading(
    random_split: Mapping[str, Any],
    site_aware: Mapping[str, Any],
    centers: list[str],
    labels: list[str],
) -> str:
    """One reading from every metric: overall gaps, their source, and the flagged centers."""
    parts = [
        text
        for name, title in (("auc", "AUC"), ("balanced_accuracy", "balanced accuracy"))
        if (text := _gap_text(random_split["overall"], site_aware["overall"], name, title))
    ]
    if not parts:
        return "Reading: no metric is defined in both designs; nothing to compare."
    reading = "Reading: at a new hospital the random split " + "; it ".join(parts) + "."
    gaps = {
        c: va - vb
        for c in centers
        if (va := _value(random_split["centers"][c], "auc")) is not None
        and (vb := _value(site_aware["centers"][c], "auc")) is not None
    }
    if len(gaps) > 1:
        ordered = sorted(gaps.items(), key=lambda item: -item[1])
        reading += (
            " By held-out center, AUC difference: "
            + ", ".join(f"{c} {g:+.2f}" for c, g in ordered)
            + "."
        )
    flagged = {c: center_flags(site_aware["centers"][c], labels) for c in centers}
    for center, flags in flagged.items():
        serious = [f for f in flags if not f.startswith("too few")]
        if serious:
            reading += f" Held out, {center}: " + "; ".join(serious) + "."
    return reading
