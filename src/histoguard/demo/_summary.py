"""The demo's account of itself: what it ran on, what it trained, and how to read its numbers.

The demo exists to show the mechanics, so its printed summary must never suggest more: it names
the data of every stage (real LC25000 lung tiles or generated ones), the task and its classes,
the pseudo-slides trained on, held out and calibrated on, every metric with its confidence
interval and how that interval was computed, the trust readings, what each prediction's
decision means (a refusal is reported as one only when the model made it), and, for generated
data, that the classes are separable by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from histoguard.demo._pseudo_slides import (
    COPIES_PER_GROUP,
    LABELS,
    N_SLIDES,
    TILES_PER_SLIDE,
    TUMOUR_TILES,
)

if TYPE_CHECKING:
    from histoguard.demo._audit import ComparisonOutputs
    from histoguard.demo._run import DemoResult

#: Said whenever the training tiles were generated: the point of the numbers is the plumbing.
SEPARABLE_NOTE = (
    "generated classes are separable by construction: these numbers show the mechanics, "
    "not a finding"
)

_METRICS = (
    ("auc", "AUC"),
    ("balanced_accuracy", "balanced accuracy"),
    ("f1", "F1"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
)

_SLIDE_SOURCES = {
    "given": "the slides you gave",
    "real": "the real CMU-1 sample slide (skin, OpenSlide) from the data folder",
    "generated": "a generated pyramidal TIFF (no real slide: pass --data DIR for one)",
}


def training_description(source: str) -> str:
    """What the training pseudo-slides are made of, for ``"real"`` or ``"generated"`` tiles."""
    if source == "real":
        return (
            f"real LC25000 lung tiles (a 'normal' pseudo-slide: {TILES_PER_SLIDE} normal lung "
            f"tiles; a 'tumour' one: {TUMOUR_TILES} adenocarcinoma + "
            f"{TILES_PER_SLIDE - TUMOUR_TILES} normal; up to {COPIES_PER_GROUP} augmented "
            "copies of one original image in a pseudo-slide, and no original in two)"
        )
    return (
        f"generated H&E-like tiles ({TILES_PER_SLIDE} per pseudo-slide; a 'tumour' one has "
        f"{TUMOUR_TILES} tiles with about 5x more nuclei per pixel), not real tissue"
    )


def _ci(metric: Mapping[str, Any] | None) -> str | None:
    if metric is None or metric.get("value") is None:
        return None
    low, high = metric.get("low"), metric.get("high")
    interval = "undefined" if low is None or high is None else f"{low:.3f}, {high:.3f}"
    return f"{metric['value']:.3f} [{interval}]"


def metric_line(stratum: Mapping[str, Any]) -> str:
    """``AUC 0.917 [0.800, 1.000]; balanced accuracy ...`` for one stratum of a report."""
    parts = []
    for key, name in _METRICS:
        text = _ci(stratum["metrics"].get(key))
        if text is not None:
            parts.append(f"{name} {text}")
    return "; ".join(parts) if parts else "no metric defined"


def is_perfect(stratum: Mapping[str, Any]) -> bool:
    """Every defined metric of the stratum is exactly 1."""
    values = [
        m["value"]
        for key, _ in _METRICS
        if (m := stratum["metrics"].get(key)) is not None and m.get("value") is not None
    ]
    return bool(values) and all(v == 1.0 for v in values)


def ci_method(report: Mapping[str, Any]) -> str:
    """How the report's intervals were computed, e.g. ``95% percentile bootstrap CI, ...``."""
    level = round(100 * (1 - report["alpha"]))
    return (
        f"{level}% percentile bootstrap CI, {report['n_boot']} resamples "
        f"of {report['resampled_by']}s"
    )


def summary_lines(result: DemoResult) -> list[str]:
    """The demo's printed summary (see :meth:`DemoResult.summary`)."""
    lines = [
        f"Data: {result.data} (real data)"
        if result.data is not None
        else "Data: none given, so every stage ran on generated data "
        "(histoguard demo --data DIR uses real tiles and a real slide)",
        f"Demo slide: {_SLIDE_SOURCES[result.source]}: " + ", ".join(str(s) for s in result.slides),
    ]
    report = result.training_report
    n_total = report["overall"]["n"]
    lines.append(
        f"Model: ABMIL trained from slide labels, task {' vs '.join(report['labels'])}, on "
        f"{N_SLIDES} pseudo-slides ({N_SLIDES // 2} per class) of "
        f"{training_description(result.training_source)}"
    )
    folds = "; ".join(
        f"{name}: fitted on {n_train}, early-stopped on {n_val}, held out {n_test}"
        for name, n_train, n_val, n_test in result.fold_sizes
    )
    n_cal = sum(result.calibration.values())
    calibration = ""
    if n_cal:
        per_class = ", ".join(f"{n} {label}" for label, n in result.calibration.items())
        calibration = (
            f"{n_cal} pseudo-slides (whole patients: {per_class}) held out of every fold as "
            f"calibration slides; the other {n_total} in "
        )
    lines.append(
        f"Validation: {calibration}{len(result.fold_sizes)}-fold patient-grouped "
        f"cross-validation ({folds}); the metrics pool the {n_total} held-out predictions"
    )
    lines.append(f"Held-out metrics ({ci_method(report)}):")
    lines.append(f"  all {n_total} pseudo-slides: {metric_line(report['overall'])}")
    for name, stratum in report.get("centers", {}).items():
        lines.append(f"  center {name} ({stratum['n']}): {metric_line(stratum)}")
    perfect = is_perfect(report["overall"])
    if result.training_source == "generated":
        lines.append(f"Note: {SEPARABLE_NOTE}.")
    else:
        lines.append(
            f"Note: LC25000 {LABELS[0]} vs adenocarcinoma tiles come from one institution and "
            "pseudo-slides are not patients: these numbers show the mechanics, not a finding."
        )
    if perfect:
        lines.append(
            f"Note: a perfect score has the bootstrap interval [1.000, 1.000] because every "
            f"resample is perfect too; with {n_total} held-out slides and no error, an error "
            f"rate up to 3/{n_total} = {3 / n_total:.0%} is still plausible (rule of three)."
        )
    lines += trust_lines(report.get("trust"), n_cal)
    lines += prediction_lines(result)
    lines.append(_audit_line(result))
    if result.harmonization is not None:
        lines.append(_harmonization_line(result.harmonization))
    if result.report_page is not None:
        lines.append(
            f"Validation report of the model (intended use, provenance, leak check, metrics, "
            f"calibration, coverage, audit, checklist): {result.report_page}"
        )
    return lines


def _interval(entry: Mapping[str, Any]) -> str:
    """``0.123 [0.045, 0.201]`` from a ``value``/``lower``/``upper`` entry of a trust report."""
    if entry.get("value") is None:
        return "undefined"
    low, high = entry.get("lower"), entry.get("upper")
    interval = "undefined" if low is None or high is None else f"{low:.3f}, {high:.3f}"
    return f"{entry['value']:.3f} [{interval}]"


def trust_lines(trust: Mapping[str, Any] | None, n_calibration: int) -> list[str]:
    """The train report's trust section in brief: calibration error before and after scaling,
    coverage of the prediction sets per class, the gate's false alarms (all with 95% CIs)."""
    if trust is None:
        return ["Trust: none fitted (no calibration slides): predictions are unchecked"]
    before = trust["calibration"]["before"]["ece_width"]
    after = trust["calibration"]["after"]["ece_width"]
    coverage = trust["coverage"]
    classes = "; ".join(
        f"{row['name']} {row['covered']}/{row['n']} = "
        f"{_interval({'value': row['coverage'], 'lower': row['lower'], 'upper': row['upper']})}"
        f" ({row['verdict']})"
        for row in coverage["per_class"]
    )
    review = trust["selective"]["review_rate"]
    gate = trust["gate"]
    alarms = gate["false_alarms"]
    smallest = ""
    if n_calibration:
        smallest = (
            f"; with {n_calibration} calibration slides the smallest p-value is "
            f"1/{n_calibration + 1} = {1 / (n_calibration + 1):.3f}"
        )
    return [
        f"Trust, fitted on the {n_calibration} calibration slides, read on the {trust['n']} "
        "cross-validation test slides (each by its fold's model; 95% intervals: bootstrap for "
        "ECE, Clopper-Pearson for rates):",
        f"  calibration error (ECE, 15 equal-width bins): {_interval(before)} before "
        f"temperature scaling, {_interval(after)} after",
        f"  prediction sets, target coverage {1 - trust['alpha']:.2f} per class: {classes}; "
        f"sent to review {review['k']}/{review['n']}",
        f"  out-of-distribution gate at p <= {gate['ood_alpha']:g}: {alarms['k']}/{alarms['n']} "
        f"in-distribution test slides flagged, false-alarm rate {_interval(alarms)} "
        f"({gate['reading']}{smallest})",
    ]


def prediction_lines(result: DemoResult) -> list[str]:
    """One line per predicted slide: its decision (:meth:`SlidePrediction.summary`) and what
    it means. A held-out pseudo-slide is in distribution with a known label, so the line says
    whether it was decided and rightly; the real CMU-1 sample is skin under a lung model, so
    the line says whether the model refused it, and says plainly when it did not."""
    trained_on = (
        "real LC25000 lung tiles" if result.training_source == "real" else "generated tiles"
    )
    lines = []
    for prediction in result.predictions:
        said = prediction.summary()
        label = result.held_out.get(prediction.slide)
        if label is not None:
            if prediction.decision == "review":
                verdict = "not decided: sent to review"
            else:
                right = prediction.decision == label
                verdict = f"decided {'rightly' if right else 'WRONGLY'} (truly {label})"
            lines.append(
                f"Prediction for {prediction.slide}: in distribution, held out: {said}; {verdict}"
            )
            continue
        refused = prediction.decision == "review" and prediction.reason == "out-of-distribution"
        if result.source == "real":
            if refused:
                meaning = (
                    "refused: skin tissue under a model trained on lung tiles, and the gate "
                    "found it unlike the training slides"
                )
            else:
                meaning = (
                    "NOT refused as out of distribution: the gate did not find this skin "
                    "slide unlike the lung training slides, so the model's answer stands "
                    "though it knows nothing of skin"
                )
            lines.append(f"Prediction for {prediction.slide}: {meaning}: {said}; not a diagnosis")
            continue
        lines.append(
            f"Prediction for {prediction.slide}: {'refused: ' * refused}{said}; a model "
            f"trained on {trained_on} shows the mechanics here, not a diagnosis"
        )
    return lines


def _harmonization_line(outputs: ComparisonOutputs) -> str:
    """The before / after reading of the site probe and the task, each with its interval."""

    def reading(metric: str, name: str) -> str:
        row = outputs.comparison.row(metric)
        if row.before is None or row.after is None:
            return f"{name} not measured ({row.reason})"

        def value(v: float, ci: tuple[float, float] | None) -> str:
            return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

        return f"{name} {value(row.before, row.ci_before)} -> {value(row.after, row.ci_after)}"

    return (
        "Harmonisation (CovBat fitted on half of the audit cohort, measured on the other "
        f"half): {reading('site_probe_auroc', 'site-probe AUROC (0.5 = center unreadable)')}; "
        f"{reading('task_balanced_accuracy', 'task balanced accuracy')} (95% slide-bootstrap "
        f"CIs); report: {outputs.html_path}"
    )


def _audit_line(result: DemoResult) -> str:
    audit = result.audit.audit
    ri = audit["robustness_index"]
    if ri.get("value") is None:
        reading = f"robustness index skipped ({ri.get('reason', 'no reason given')})"
    else:
        low, high = ri["ci"]
        level = round(100 * ri.get("confidence", 0.95))
        reading = (
            f"robustness index {ri['value']:.3f} [{low:.3f}, {high:.3f}] ({level}% percentile "
            "slide-bootstrap CI; 1 = neighbours share the biology, 0 = they share the center)"
        )
    line = f"Audit of {audit['metadata']['subject']}: {reading}; report: {result.audit.html_path}"
    if audit["metadata"].get("tile_source") == "generated":
        line += f" ({SEPARABLE_NOTE})"
    return line
