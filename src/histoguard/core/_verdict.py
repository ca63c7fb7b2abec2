"""Verdicts that state their uncertainty: a value, its confidence interval and thresholds ->
words, with a verdict only when the whole interval lies on one side of every threshold.

Pure functions of numbers, shared by every room that prints a reading (``mil``'s design
comparison, ``report``'s pages and model card)::

    inconclusive: the 95 % CI [0.41, 0.62] spans the threshold 0.50
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Format = Callable[[float], str]

#: Fewest slides a bootstrap interval may rest on: below it the percentile bootstrap covers far
#: less than its nominal 95 % (a handful of distinct resamples), so a reading says "too few
#: slides" instead of giving an interval or a verdict.
MIN_CI_SLIDES = 10
#: Fewest slides of each class a binary AUC / sensitivity / specificity interval may rest on.
MIN_CI_PER_CLASS = 3
#: AUC's threshold (chance) and the verdicts either side of it.
AUC_THRESHOLDS = (0.5,)
CHANCE_VERDICTS = ("no better than chance", "better than chance")


def verdict(
    value: float,
    ci: Sequence[float] | None,
    thresholds: Sequence[float],
    verdicts: Sequence[str],
    *,
    fmt: Format = "{:.2f}".format,
    confidence: float = 0.95,
) -> str:
    """The verdict for ``value``, or why there is none.

    Args:
        value: the measurement.
        ci: its confidence interval ``(low, high)``, or None when there is none (the verdict
            then rests on the value alone).
        thresholds: ascending; band ``i`` is ``thresholds[i-1] < value <= thresholds[i]``.
        verdicts: one per band, ``len(thresholds) + 1``, lowest band first.
        fmt: how numbers are written.
        confidence: coverage of ``ci``, for the text.

    Returns:
        ``verdicts[band]``, or ``"inconclusive: the 95 % CI [a, b] spans the threshold t"``
        when the interval reaches across a threshold (the one nearest the value is named).

    Raises:
        ValueError: ``verdicts`` does not have one entry per band.
    """
    if len(verdicts) != len(thresholds) + 1:
        raise ValueError(f"need {len(thresholds) + 1} verdicts, got {len(verdicts)}")
    if ci is not None and None not in ci:
        low, high = sorted(float(c) for c in ci)
        spanned = [t for t in thresholds if low < t < high]
        if spanned:
            nearest = min(spanned, key=lambda t: abs(t - value))
            return (
                f"inconclusive: the {level_text(confidence)} CI [{fmt(low)}, {fmt(high)}] spans "
                f"the threshold {fmt(nearest)}"
            )
    band = sum(value > t for t in thresholds)
    return verdicts[band]


def level_text(confidence: float) -> str:
    """``0.95`` as ``"95 %"``."""
    return f"{confidence * 100:g} %"
