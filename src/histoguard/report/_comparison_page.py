"""The before / after comparison as one self-contained HTML page: a table of the five metrics
(value and interval before, after, and the change), each with a reading that says
"inconclusive" when an interval spans its threshold, and a plot of the intervals.

Reads only a :class:`~histoguard.robustness.ComparisonResult` or its ``comparison.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes

from histoguard.report._audit_page import _STYLE, _e, _figure, _metadata_table, _reading, _table
from histoguard.report._readings import comparison_reading
from histoguard.robustness._compare import COMPARISON_METRICS, ComparisonResult


def render_comparison_html(comparison: ComparisonResult | Mapping[str, Any] | str | Path) -> str:
    """The HTML page of a before / after comparison.

    Raises:
        AuditDataError: ``comparison`` cannot be read as a comparison.
    """
    result = (
        comparison
        if isinstance(comparison, ComparisonResult)
        else ComparisonResult.from_json(comparison)
    )
    names = dict(COMPARISON_METRICS)
    subject = str(result.metadata.get("subject", ""))
    rows, readings = [], []
    for row in result.rows:
        rows.append(
            [
                names.get(row.metric, row.metric),
                _value(row.before, row.ci_before),
                _value(row.after, row.ci_after),
                _value(row.difference, row.ci_difference, signed=True),
            ]
        )
        text = comparison_reading(
            row.metric, row.before, row.after, row.ci_before, row.ci_after, row.difference,
            row.ci_difference, row.reason,
        )  # fmt: skip
        readings.append(_reading(f"{names.get(row.metric, row.metric)}: {text}"))

    def draw(ax: Axes) -> None:
        shown = [r for r in result.rows if r.before is not None and r.after is not None]
        for i, row in enumerate(shown):
            for offset, value, ci, colour, label in (
                (-0.15, row.before, row.ci_before, "#a8554a", "before"),
                (0.15, row.after, row.ci_after, "#4a78a8", "after"),
            ):
                assert value is not None
                low, high = ci if ci is not None else (value, value)
                ax.errorbar([value], [i + offset], xerr=[[value - low], [high - value]], fmt="o",
                            color=colour, label=label if i == 0 else None)  # fmt: skip
        ax.set_yticks(range(len(shown)), [r.metric.replace("_", " ") for r in shown])
        ax.invert_yaxis()
        ax.set(xlabel="value (95 % interval)")
        ax.legend()

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>histoguard before / after: {_e(subject)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Before / after: {_e(subject)}</h1>",
        _metadata_table(result.metadata),
        "<h2>Did the cure remove the hospital and keep the biology?</h2>",
        _table(["metric", "before (95 % CI)", "after (95 % CI)", "change (95 % CI)"], rows),
        *readings,
        _figure(draw, "Each metric before and after, with its interval"),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_comparison_page(
    comparison: ComparisonResult | Mapping[str, Any] | str | Path, out: Path
) -> Path:
    """Draw the comparison page and write it (atomically) to ``out``; returns ``out``.

    Raises:
        AuditDataError: ``comparison`` cannot be read as a comparison.
        OutputError: the page could not be written as intended.
    """
    from histoguard.core._atomic import write_bytes_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, render_comparison_html(comparison).encode())
    return out


def _value(value: float | None, ci: Sequence[float] | None, *, signed: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    if ci is not None:
        text += f" ({ci[0]:.3f} to {ci[1]:.3f})"
    return text
