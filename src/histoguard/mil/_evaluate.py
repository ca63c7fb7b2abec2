"""How far a model's predictions can be trusted, measured on labelled slides: calibration before
and after scaling, conformal coverage per class and per center, selective accuracy and the
gate's false alarms. Used by ``train`` (its test slides) and by :func:`evaluate`."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from histoguard.core._atomic import write_bytes_atomic, write_json_atomic
from histoguard.core._names import feature_file
from histoguard.errors import ModelMismatchError
from histoguard.mil._trust import (
    REVIEW,
    TRUST_NAME,
    Trust,
    TrustReading,
    batch_drift,
    load_trust,
)
from histoguard.uncertainty import (
    aurc,
    brier_score,
    clopper_pearson,
    coverage_report,
    ece_bootstrap,
    negative_log_likelihood,
    risk_coverage_curve,
    slide_embedding,
)

EVALUATION_NAME = "evaluation.json"


@dataclass(frozen=True, kw_only=True)
class TrustEvaluation:
    """Trust readings of N labelled slides, ready to be scored by :func:`trust_report`.

    Attributes:
        labels: (N,) true class indices.
        raw_probabilities, probabilities: (N, C) before and after calibration.
        sets: (N, C) bool conformal sets.
        ood_p_values: (N,) gate p-values.
        decisions, reasons: per slide, as in :class:`~histoguard.mil.TrustReading`.
        centers, slide_ids: per slide ("" for no center).
        class_names: C names.
        alpha, ood_alpha: the levels the sets and the gate were built for.
    """

    labels: npt.NDArray[np.int64]
    raw_probabilities: npt.NDArray[np.float64]
    probabilities: npt.NDArray[np.float64]
    sets: npt.NDArray[np.bool_]
    ood_p_values: npt.NDArray[np.float64]
    decisions: tuple[str, ...]
    reasons: tuple[str, ...]
    centers: tuple[str, ...]
    slide_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    alpha: float
    ood_alpha: float

    @classmethod
    def from_reading(
        cls,
        reading: TrustReading,
        trust: Trust,
        *,
        labels: Sequence[int],
        raw_probabilities: npt.ArrayLike,
        centers: Sequence[str],
        slide_ids: Sequence[str],
    ) -> TrustEvaluation:
        """From :func:`~histoguard.mil.apply_trust`'s reading of labelled slides."""
        return cls(
            labels=np.asarray(labels, dtype=np.int64),
            raw_probabilities=np.asarray(raw_probabilities, dtype=np.float64),
            probabilities=reading.probabilities,
            sets=reading.sets,
            ood_p_values=reading.ood_p_values,
            decisions=reading.decisions,
            reasons=reading.reasons,
            centers=tuple(centers),
            slide_ids=tuple(slide_ids),
            class_names=trust.labels,
            alpha=trust.settings.alpha,
            ood_alpha=trust.settings.ood_alpha,
        )

    def to_csv(self) -> str:
        """One row per slide: ``slide_id, center, label, decision, reason, ood_p_value,
        prediction_set`` (class names joined by ``|``) and ``p_<class>`` (calibrated), the
        probabilities with 6 decimals: what the validation report's reliability diagram after
        scaling is drawn from."""
        import csv
        import io

        names = self.class_names
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            ["slide_id", "center", "label", "decision", "reason", "ood_p_value",
             "prediction_set", *(f"p_{c}" for c in names)]
        )  # fmt: skip
        for i, slide_id in enumerate(self.slide_ids):
            members = "|".join(c for c, inside in zip(names, self.sets[i], strict=True) if inside)
            writer.writerow(
                [slide_id, self.centers[i], names[self.labels[i]], self.decisions[i],
                 self.reasons[i], f"{self.ood_p_values[i]:.6g}", members,
                 *(f"{v:.6f}" for v in self.probabilities[i])]
            )  # fmt: skip
        return buffer.getvalue()

    @classmethod
    def concatenate(cls, parts: Sequence[TrustEvaluation]) -> TrustEvaluation:
        """Several evaluations (e.g. the test slides of each split) as one."""
        first = parts[0]
        return cls(
            labels=np.concatenate([p.labels for p in parts]),
            raw_probabilities=np.concatenate([p.raw_probabilities for p in parts]),
            probabilities=np.concatenate([p.probabilities for p in parts]),
            sets=np.concatenate([p.sets for p in parts]),
            ood_p_values=np.concatenate([p.ood_p_values for p in parts]),
            decisions=tuple(d for p in parts for d in p.decisions),
            reasons=tuple(r for p in parts for r in p.reasons),
            centers=tuple(c for p in parts for c in p.centers),
            slide_ids=tuple(s for p in parts for s in p.slide_ids),
            class_names=first.class_names,
            alpha=first.alpha,
            ood_alpha=first.ood_alpha,
        )


def _proportion(k: int, n: int) -> dict[str, float | int | None]:
    lower, upper = clopper_pearson(k, n)
    return {"k": k, "n": n, "value": k / n if n else None, "lower": lower, "upper": upper}


def _calibration(
    p: npt.NDArray[np.float64], y: npt.NDArray[np.int64], n_boot: int, seed: int
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for strategy in ("width", "mass"):
        e = ece_bootstrap(p, y, strategy=strategy, n_bootstrap=n_boot, seed=seed)
        result[f"ece_{strategy}"] = {"value": e.ece, "lower": e.low, "upper": e.high}
    result["brier"] = brier_score(p, y)
    result["nll"] = negative_log_likelihood(p, y)
    return result


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _below(rate: Mapping[str, Any], level: float) -> str:
    """A verdict only when the interval is on one side of ``level``."""
    if rate["n"] == 0:
        return "inconclusive: no slides"
    if rate["upper"] <= level:
        return f"at most {level:g}"
    if rate["lower"] > level:
        return f"above {level:g}"
    return f"inconclusive: the 95 % interval contains {level:g}"


def trust_report(
    evaluation: TrustEvaluation, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Calibration, coverage, selective accuracy and gate false alarms, each with its 95 % CI.

    Every slide is taken to be in distribution (labelled slides of the model's task), so every
    gate flag counts as a false alarm.

    Returns:
        A JSON-ready dictionary: ``n``, ``alpha``, ``calibration`` (``before`` / ``after``:
        ECE with equal-width and equal-mass bins and bootstrap CIs, Brier, NLL), ``coverage``
        (overall, per class, per center: Clopper-Pearson CIs and verdicts, set sizes),
        ``selective`` (review rate, accuracy of decided slides and of all, AURC), ``gate``
        (false alarms at ``ood_alpha``) and ``reasons`` (slides per review reason).
    """
    ev = evaluation
    y = ev.labels
    n = int(y.size)
    names = np.asarray(ev.class_names)
    predicted = names[np.argmax(ev.probabilities, axis=1)]
    truth = names[y]
    decided = np.array([d != REVIEW for d in ev.decisions], dtype=bool)
    right_decided = decided & (np.asarray(ev.decisions) == truth)
    coverage = coverage_report(
        ev.sets, y, alpha=ev.alpha,
        groups=list(ev.centers) if any(ev.centers) else None, class_names=ev.class_names,
    )  # fmt: skip
    flagged = int((ev.ood_p_values <= ev.ood_alpha).sum())
    alarms = _proportion(flagged, n)
    gate = {
        "ood_alpha": ev.ood_alpha,
        "false_alarms": alarms,
        "reading": _below(alarms, ev.ood_alpha),
    }
    report: dict[str, Any] = _finite(
        {
            "n": n,
            "alpha": ev.alpha,
            "calibration": {
                "before": _calibration(ev.raw_probabilities, y, n_boot, seed),
                "after": _calibration(ev.probabilities, y, n_boot, seed),
            },
            "coverage": asdict(coverage),
            "selective": {
                "review_rate": _proportion(int((~decided).sum()), n),
                "accuracy_decided": _proportion(int(right_decided.sum()), int(decided.sum())),
                "accuracy_all": _proportion(int((predicted == truth).sum()), n),
                "aurc": aurc(ev.probabilities.max(axis=1), predicted == truth),
                "risk_coverage": _curve(ev.probabilities.max(axis=1), predicted == truth),
            },
            "gate": gate,
            "reasons": dict(Counter(r or "decided" for r in ev.reasons)),
        }
    )
    return report


def _curve(
    confidence: npt.NDArray[np.float64], correct: npt.NDArray[np.bool_]
) -> dict[str, list[float]]:
    """The risk-coverage curve at (at most) 101 evenly spaced points of the fraction kept."""
    kept, accuracy = risk_coverage_curve(confidence, correct)
    index = np.unique(np.linspace(0, kept.size - 1, min(kept.size, 101)).round().astype(int))
    return {"kept": kept[index].tolist(), "accuracy": accuracy[index].tolist()}


def gate_performance(
    trust: Trust,
    in_distribution: npt.ArrayLike,
    out_of_distribution: npt.ArrayLike,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """How well the gate tells slides known to come from elsewhere from in-distribution ones.

    Args:
        trust: the model's trust (its gate and ``ood_alpha``).
        in_distribution: (N, D) slide embeddings of in-distribution slides the gate never saw.
        out_of_distribution: (M, D) those of slides from elsewhere.

    Returns:
        ``auroc`` of the gate score (out-of-distribution = positive) with a percentile
        bootstrap CI, ``detected`` (share of the M flagged at ``ood_alpha``, Clopper-Pearson
        CI) and ``batch_p_value`` (the MMD test of the M slides as one batch; None under 5).
    """
    from histoguard.mil._metrics import binary_metrics, bootstrap_ci

    inside = np.asarray(in_distribution, dtype=np.float64)
    outside = np.asarray(out_of_distribution, dtype=np.float64)
    scores = np.concatenate([trust.gate.scores(inside), trust.gate.scores(outside)])
    truth = np.r_[np.zeros(len(inside)), np.ones(len(outside))].astype(int)
    value, low, high = bootstrap_ci(binary_metrics, truth, scores, n_boot=n_boot, seed=seed)["auc"]
    flagged = int((trust.gate.p_values(outside) <= trust.settings.ood_alpha).sum())
    drift = batch_drift(trust, outside, seed=seed)
    return {
        "n_in": len(inside),
        "n_out": len(outside),
        "auroc": {"value": value, "lower": low, "upper": high},
        "detected": _proportion(flagged, len(outside)),
        "batch_p_value": None if drift is None else drift.p_value,
    }


def _ci(entry: Mapping[str, Any]) -> str:
    if entry.get("value") is None:
        return "n/a"
    return f"{entry['value']:.3f} [{entry['lower']:.3f}, {entry['upper']:.3f}]"


def format_trust_report(report: Mapping[str, Any]) -> str:
    """:func:`trust_report` as a plain-text table (95 % intervals in brackets)."""
    cal = report["calibration"]
    lines = [
        f"trust on {report['n']} labelled slides (alpha = {report['alpha']:g}; 95 % intervals)",
        f"{'calibration':<24}{'before scaling':<28}after scaling",
    ]
    for key, name in (("ece_width", "ECE, 15 equal-width bins"), ("ece_mass", "ECE, equal-mass")):
        lines.append(f"  {name:<22}{_ci(cal['before'][key]):<28}{_ci(cal['after'][key])}")
    for key in ("brier", "nll"):
        lines.append(f"  {key.upper():<22}{cal['before'][key]:<28.4f}{cal['after'][key]:.4f}")
    cov = report["coverage"]
    lines.append(
        f"{'coverage (target ' + format(1 - report['alpha'], '.2f') + ')':<24}"
        f"{'n':>5}  {'coverage [95% CI]':<26}{'set size':>9}{'review':>8}  verdict"
    )
    rows = [("all", cov["overall"])]
    rows += [(f"class {r['name']}", r) for r in cov["per_class"]]
    rows += [(f"center {r['name']}", r) for r in cov["per_group"]]
    for name, row in rows:
        value = {"value": row["coverage"], "lower": row["lower"], "upper": row["upper"]}
        size = "n/a" if row["mean_set_size"] is None else f"{row['mean_set_size']:.2f}"
        review = "n/a" if row["review_rate"] is None else f"{row['review_rate']:.2f}"
        lines.append(
            f"  {name:<22}{row['n']:>5}  {_ci(value):<26}{size:>9}{review:>8}  {row['verdict']}"
        )
    sel = report["selective"]
    lines.append(
        f"selective: review {_ci(sel['review_rate'])}; accuracy of decided slides "
        f"{_ci(sel['accuracy_decided'])}; of all {_ci(sel['accuracy_all'])}; "
        f"AURC {sel['aurc']:.4f}"
    )
    gate = report["gate"]
    alarms = gate["false_alarms"]
    lines.append(
        f"gate: {alarms['k']}/{alarms['n']} in-distribution slides flagged at ood_alpha = "
        f"{gate['ood_alpha']:g}, rate {_ci(alarms)}: {gate['reading']}"
    )
    ood = gate.get("out_of_distribution")
    if ood:
        batch = (
            "n/a (< 5 slides)" if ood["batch_p_value"] is None else f"{ood['batch_p_value']:.4f}"
        )
        lines.append(
            f"gate on {ood['n_out']} slides from elsewhere vs {ood['n_in']}: AUROC "
            f"{_ci(ood['auroc'])}; flagged {_ci(ood['detected'])}; batch test p = {batch}"
        )
    lines.append("reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(report["reasons"].items())))
    return "\n".join(lines)


def _embeddings(files: Sequence[str | Path]) -> npt.NDArray[np.float64]:
    from histoguard.features import read_feature_file

    return np.stack([slide_embedding(read_feature_file(Path(f)).features) for f in files])


@dataclass(frozen=True)
class EvaluationResult:
    """:func:`evaluate`'s outputs: the report, the readings it scored, and the files."""

    report: dict[str, Any]
    evaluation: TrustEvaluation
    out: Path


def evaluate(
    model: str | Path,
    cohort: str | Path,
    features: str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    ood_features: Sequence[str | Path] = (),
    n_boot: int = 1000,
    seed: int = 0,
) -> EvaluationResult:
    """Score a trained model's calibration, coverage, selective accuracy and gate on labelled
    slides it never saw (for example another center's).

    Runs :func:`~histoguard.mil.predict` on every slide of ``cohort`` (its feature file is
    ``features/<slide_id>.h5``), then writes ``out_dir/predictions.csv`` + ``.json``,
    ``evaluation.json`` (:func:`trust_report`) and ``evaluation.txt``. With ``ood_features``
    (feature files of slides known to come from elsewhere: another organ, scanner or stain) the
    report's ``gate`` also gives :func:`gate_performance` against the cohort's slides.

    Raises:
        FileNotFoundError: ``model`` holds no model.
        CohortError: an invalid cohort table or missing feature files.
        ModelMismatchError: the cohort's labels are not the model's classes, or the model has
            no calibration (trained with ``calibration_fraction=0``).
    """
    from histoguard.mil._cohort import load_cohort
    from histoguard.mil._ensemble import model_dirs
    from histoguard.mil._predict import predict

    table = load_cohort(Path(cohort), features_dir=Path(features))
    files = [feature_file(Path(features), row.slide_id) for row in table.rows]
    centers = {row.slide_id: row.center or "" for row in table.rows}
    out = Path(out_dir)
    model_dirs(Path(model))  # no model at all is said as such, not as "no calibration"
    trust = load_trust(Path(model))
    if trust is None:
        raise ModelMismatchError(
            f"{model}: the model has no calibration ({TRUST_NAME}); retrain with "
            "calibration_fraction > 0 to evaluate how far it can be trusted"
        )
    predictions = predict(model, files, out, force=force, centers=centers)
    classes = list(predictions[0].probabilities)
    unknown = sorted(set(table.labels) - set(classes))
    if unknown:
        raise ModelMismatchError(
            f"{cohort}: labels {unknown} are not among the model's classes {classes}"
        )
    evaluation = TrustEvaluation(
        labels=np.array([classes.index(table.row(p.slide).label) for p in predictions]),
        raw_probabilities=np.array(
            [[p.raw_probabilities[c] for c in classes] for p in predictions]
        ),
        probabilities=np.array([[p.probabilities[c] for c in classes] for p in predictions]),
        sets=np.array([[c in p.prediction_set for c in classes] for p in predictions]),
        ood_p_values=np.array([p.ood_p_value for p in predictions], dtype=np.float64),
        decisions=tuple(p.decision for p in predictions),
        reasons=tuple(p.reason for p in predictions),
        centers=tuple(centers[p.slide] for p in predictions),
        slide_ids=tuple(p.slide for p in predictions),
        class_names=tuple(classes),
        alpha=trust.settings.alpha,
        ood_alpha=trust.settings.ood_alpha,
    )
    report = trust_report(evaluation, n_boot=n_boot, seed=seed)
    if ood_features:
        report["gate"]["out_of_distribution"] = _finite(
            gate_performance(
                trust, _embeddings(files), _embeddings(ood_features), n_boot=n_boot, seed=seed
            )
        )
    write_json_atomic(out / EVALUATION_NAME, report)
    write_bytes_atomic(out / "evaluation.txt", (format_trust_report(report) + "\n").encode())
    return EvaluationResult(report=report, evaluation=evaluation, out=out)
