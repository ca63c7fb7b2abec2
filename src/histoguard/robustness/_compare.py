"""Before and after: the audit's representation metrics on two embedding sets of the same
tiles (for example feature files before and after ``histoguard harmonize``), side by side.

Five rows, each with its interval: the robustness index (slide bootstrap), the site-probe AUROC
and the biological task's balanced accuracy (slide-grouped cross-validated linear probes, slide
bootstrap), APD in distribution (over seeds) and the clustering score (over subsets x repeats).
For the two probes the change ``after - before`` gets a paired interval (the same slide
resamples on both sides); for the others the two intervals are shown and the page says whether
they overlap. Written as ``comparison.json``; ``histoguard.report.write_comparison_page`` draws
``comparison.html``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from histoguard.core._atomic import write_bytes_atomic
from histoguard.errors import AuditDataError, ConfigError
from histoguard.robustness._audit import AuditConfig, audit_embeddings, audit_metadata
from histoguard.robustness._result import (
    APDSection,
    ClusteringSection,
    RobustnessIndexSection,
    Skipped,
    jsonable,
)
from histoguard.robustness.data._containers import LabelledEmbeddings
from histoguard.robustness.metrics._site_probe import Target, evaluate_probe, paired_difference

COMPARISON_JSON = "comparison.json"

#: The rows of a comparison, in page order: key, and what the metric is.
COMPARISON_METRICS = (
    ("robustness_index", "robustness index (higher: neighbours share biology, not center)"),
    ("site_probe_auroc", "site-probe AUROC (0.5: the center cannot be predicted)"),
    ("apd_in_distribution", "APD in distribution (0: no drop under confounding)"),
    ("clustering_score", "clustering score (+1: clusters are the classes)"),
    ("task_balanced_accuracy", "biological task: balanced accuracy (linear probe)"),
)


@dataclass(frozen=True, kw_only=True)
class ComparisonRow:
    """One metric before and after.

    Attributes:
        metric: a key of :data:`COMPARISON_METRICS`.
        before, after: the values, or None when the metric could not run (see ``reason``).
        ci_before, ci_after: their intervals, or None.
        difference: ``after - before``, or None.
        ci_difference: paired slide-bootstrap interval of the difference (the two probes), or
            None.
        reason: why the metric did not run, or None.
    """

    metric: str
    before: float | None
    after: float | None
    ci_before: tuple[float, float] | None = None
    ci_after: tuple[float, float] | None = None
    difference: float | None = None
    ci_difference: tuple[float, float] | None = None
    reason: str | None = None

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> ComparisonRow:
        """The row of a ``comparison.json`` entry."""

        def interval(key: str) -> tuple[float, float] | None:
            value = entry.get(key)
            return None if value is None or None in value else (float(value[0]), float(value[1]))

        def number(key: str) -> float | None:
            value = entry.get(key)
            return None if value is None else float(value)

        return cls(
            metric=str(entry["metric"]), before=number("before"), after=number("after"),
            ci_before=interval("ci_before"), ci_after=interval("ci_after"),
            difference=number("difference"), ci_difference=interval("ci_difference"),
            reason=entry.get("reason"),
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ComparisonResult:
    """A before / after comparison.

    Attributes:
        rows: one per metric of :data:`COMPARISON_METRICS`.
        metadata: subject, inputs, software version, the resolved audit ``config``.
        details: each side's full metric entries (``before`` / ``after``).
    """

    rows: tuple[ComparisonRow, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def row(self, metric: str) -> ComparisonRow:
        """The row of ``metric``.

        Raises:
            KeyError: no such row.
        """
        return next(r for r in self.rows if r.metric == metric)

    def with_metadata(self, metadata: Mapping[str, Any]) -> ComparisonResult:
        """The same comparison with ``metadata`` (JSON-compatible) as its provenance."""
        return replace(self, metadata=jsonable(metadata))

    def to_dict(self) -> dict[str, Any]:
        """The content of ``comparison.json`` (JSON types only)."""
        rows = [
            {k: v for k, v in vars(r).items()} | {"description": dict(COMPARISON_METRICS)[r.metric]}
            for r in self.rows
        ]
        content: dict[str, Any] = jsonable(
            {"metadata": dict(self.metadata), "rows": rows, "details": dict(self.details)}
        )
        return content

    def to_json(self) -> str:
        """``comparison.json``'s text."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, source: str | Path | Mapping[str, Any]) -> ComparisonResult:
        """Read a comparison: a path to ``comparison.json`` or its parsed content.

        Raises:
            AuditDataError: the file cannot be read or is not a comparison.
        """
        try:
            content = (
                source if isinstance(source, Mapping) else json.loads(Path(source).read_text())
            )
            return cls(
                rows=tuple(ComparisonRow.from_dict(r) for r in content["rows"]),
                metadata=dict(content.get("metadata") or {}),
                details=dict(content.get("details") or {}),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise AuditDataError(
                f"{source if not isinstance(source, Mapping) else 'the content'}: not a "
                f"comparison ({error}); pass the comparison.json `histoguard audit --compare` wrote"
            ) from None


def compare_embeddings(
    before: LabelledEmbeddings,
    after: LabelledEmbeddings,
    config: AuditConfig | None = None,
) -> ComparisonResult:
    """The representation metrics of two embedding sets of the same rows, side by side.

    Args:
        before, after: ``(N, D)`` and ``(N, D')`` embeddings of the same tiles, with the same
            label, center and slide per row (in the same order).
        config: audit settings (its ``site_probe`` settings serve both probes).

    Returns:
        A :class:`ComparisonResult` (no metadata; :func:`run_comparison` adds it).

    Raises:
        AuditDataError: the two sets do not describe the same rows.
    """
    config = config or AuditConfig()
    for name in ("label", "center", "slide_id"):
        if not np.array_equal(getattr(before, name), getattr(after, name)):
            raise AuditDataError(
                f"before and after differ in {name}: a comparison needs the same tiles, in the "
                "same order, on both sides (same cohort table, seed and max_tiles_per_slide)"
            )
    parts = ("robustness_index", "apd", "clustering_score")
    sub = replace(config, parts=tuple(p for p in parts if p in config.parts))
    audits = [audit_embeddings(data, config=sub) for data in (before, after)]
    rows = [
        _section_row("robustness_index", [a.robustness_index for a in audits]),
        _probe_row("site_probe_auroc", "center", before, after, config),
        _section_row("apd_in_distribution", [a.apd for a in audits]),
        _section_row("clustering_score", [a.clustering_score for a in audits]),
        _probe_row("task_balanced_accuracy", "class", before, after, config),
    ]
    details = {
        side: {p: getattr(a, p).to_dict() for p in parts}
        for side, a in zip(("before", "after"), audits, strict=True)
    }
    return ComparisonResult(rows=tuple(rows), details=details)


_Section = RobustnessIndexSection | APDSection | ClusteringSection | Skipped


def _section_row(metric: str, sections: Sequence[_Section]) -> ComparisonRow:
    values: list[tuple[float, tuple[float, float] | None]] = []
    for section in sections:
        if isinstance(section, Skipped):
            return ComparisonRow(metric=metric, before=None, after=None, reason=section.reason)
        if isinstance(section, APDSection):
            values.append((section.in_distribution, section.ci_in_distribution))
        else:
            values.append((section.value, section.ci))
    (b, ci_b), (a, ci_a) = values
    return ComparisonRow(
        metric=metric, before=b, after=a, ci_before=ci_b, ci_after=ci_a, difference=a - b
    )


def _probe_row(
    metric: str,
    target: Target,
    before: LabelledEmbeddings,
    after: LabelledEmbeddings,
    config: AuditConfig,
) -> ComparisonRow:
    settings = config.site_probe
    try:
        (sb, pb), (sa, pa) = (evaluate_probe(d, target, settings) for d in (before, after))
    except AuditDataError as error:
        return ComparisonRow(metric=metric, before=None, after=None, reason=str(error))
    kind: Literal["auroc", "balanced_accuracy"] = (
        "auroc" if target == "center" else "balanced_accuracy"
    )
    diff, ci = paired_difference(
        pb, pa, kind, n_bootstrap=settings.n_bootstrap, confidence=settings.confidence,
        seed=settings.seed,
    )  # fmt: skip
    if kind == "auroc":
        values = (sb.auroc, sb.ci, sa.auroc, sa.ci)
    else:
        values = (sb.balanced_accuracy, sb.ci_balanced_accuracy, sa.balanced_accuracy,
                  sa.ci_balanced_accuracy)  # fmt: skip
    return ComparisonRow(
        metric=metric, before=values[0], ci_before=values[1], after=values[2],
        ci_after=values[3], difference=diff, ci_difference=ci,
    )  # fmt: skip


def run_comparison(
    before: Path,
    after: Path,
    cohort: Path,
    out: Path,
    *,
    config: AuditConfig | None = None,
) -> ComparisonResult:
    """Compare two folders of feature files of the same slides; write ``out/comparison.json``.

    Both folders are read with the same cohort table, seed and ``max_tiles_per_slide``, so the
    same tiles are compared. Draw the page with
    :func:`histoguard.report.write_comparison_page`.

    Raises:
        AuditDataError: a folder, the table or a feature file is unusable, or the two folders
            do not hold the same tiles.
        ConfigError: ``before`` and ``after`` are the same folder.
    """
    from histoguard.robustness.data._layouts import load_feature_cohort

    config = config or AuditConfig()
    if Path(before).resolve() == Path(after).resolve():
        raise ConfigError(f"--compare {before} {after}: the same folder twice; give before, after")
    sides = [
        load_feature_cohort(
            folder, cohort, max_tiles_per_slide=config.max_tiles_per_slide, seed=config.seed
        )
        for folder in (before, after)
    ]
    result = compare_embeddings(sides[0], sides[1], config)
    meta = audit_metadata(f"{before} vs {after}", config, before=str(before), after=str(after),
                          cohort=str(cohort), n_embeddings=len(sides[0]))  # fmt: skip
    result = result.with_metadata(meta)
    write_comparison(result, out)
    return result


def write_comparison(result: ComparisonResult, out: Path) -> Path:
    """Write ``out/comparison.json`` (atomically, verified) and return its path; the page is
    drawn by :func:`histoguard.report.write_comparison_page`.

    Raises:
        OutputError: the file could not be written as intended.
    """
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / COMPARISON_JSON
    write_bytes_atomic(json_path, result.to_json().encode())
    return json_path
