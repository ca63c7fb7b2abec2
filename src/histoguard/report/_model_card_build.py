"""Collecting a :class:`~._model_card.ModelCard` from a train run's files: nothing is trained
or predicted here; every number is read from the run (``metrics.json``, ``predictions.csv``,
``trust_readings.csv``, ``splits.json``, the cohort, the feature files' attributes) or
recomputed from them (the leak check, per-class and subgroup intervals, reliability bins).

The robustness, intended-use, design-gap and gate-detection parts are in
:mod:`._model_card_parts`.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from histoguard.core._names import feature_file
from histoguard.errors import CohortError, ConfigError
from histoguard.mil._cohort import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, Cohort, load_cohort
from histoguard.mil._metrics import bootstrap_ci, metrics_report
from histoguard.mil._splits import check_no_leak, read_splits_file
from histoguard.report._checklist import build_checklist
from histoguard.report._model_card import (
    Calibration,
    ChecklistSummary,
    CoverageRow,
    Estimate,
    FeatureFileRecord,
    LeakCheck,
    ModelCard,
    Performance,
    Provenance,
    ReliabilityBins,
    SplitCheck,
    Stratum,
    SubgroupTable,
    Trust,
)
from histoguard.report._model_card_parts import (
    check_run_dir,
    design_gap,
    gate_detection,
    intended_use,
    read_json,
    robustness,
    software_versions,
)
from histoguard.report._readings import estimate_reading

#: Extra cohort columns with more distinct values than this are not tabulated as subgroups.
MAX_SUBGROUP_VALUES = 8
CONFIDENCE = 0.95


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _estimate(entry: Mapping[str, Any] | None, *, low: str = "low", high: str = "high") -> Estimate:
    if entry is None:
        return Estimate(value=None)
    return Estimate(value=entry.get("value"), low=entry.get(low), high=entry.get(high))


def _stratum(name: str, entry: Mapping[str, Any], n_classes: int, min_slides: int) -> Stratum:
    metrics = {}
    for metric, values in entry["metrics"].items():
        if metric in ("n", "n_positive"):
            continue
        raw = _estimate(values)
        reading = estimate_reading(metric, raw.value, raw.low, raw.high, n=int(entry["n"]),
                                   n_classes=n_classes, min_slides=min_slides)  # fmt: skip
        metrics[metric] = raw.model_copy(update={"reading": reading})
    return Stratum(name=name, n=int(entry["n"]), metrics=metrics)


def _per_class(
    y: npt.NDArray[np.int64],
    probs: npt.NDArray[np.float64],
    labels: Sequence[str],
    threshold: float,
    *,
    n_boot: int,
    seed: int,
    min_slides: int,
) -> list[Stratum]:
    """One-vs-rest recall and precision of each class with percentile bootstrap intervals."""

    def predicted(p: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        call = (p[:, 1] >= threshold) if len(labels) == 2 else np.argmax(p, axis=1)
        return np.asarray(call, dtype=np.int64)

    def per_class(truth: npt.NDArray[np.int64], p: npt.NDArray[np.float64]) -> dict[str, float]:
        call = predicted(p)
        out = {}
        for c in range(len(labels)):
            actual, called = truth == c, call == c
            out[f"recall:{c}"] = (actual & called).sum() / actual.sum() if actual.any() else np.nan
            out[f"precision:{c}"] = (
                (actual & called).sum() / called.sum() if called.any() else np.nan
            )
        return {k: float(v) for k, v in out.items()}

    ci = bootstrap_ci(per_class, y, probs, n_boot=n_boot, seed=seed)
    strata = []
    for c, label in enumerate(labels):
        metrics = {}
        n_c = int((y == c).sum())
        for metric in ("recall", "precision"):
            value, low, high = (None if not np.isfinite(v) else v for v in ci[f"{metric}:{c}"])
            raw = Estimate(value=value, low=low, high=high)
            reading = estimate_reading(metric, value, low, high, n=n_c,
                                       n_classes=len(labels), min_slides=min_slides)  # fmt: skip
            metrics[metric] = raw.model_copy(update={"reading": reading})
        strata.append(Stratum(name=label, n=n_c, metrics=metrics))
    return strata


def _leak_check(cohort: Cohort, splits_path: Path, design: str) -> LeakCheck:
    """Recompute, from ``splits.json`` and the cohort, that no patient is in two parts."""
    # Read without load_splits' own leak check, which would stop at the first leaking split:
    # every split is checked below and its problems listed.
    try:
        splits, document = read_splits_file(splits_path)
    except CohortError as exc:
        return LeakCheck(design=design, splits=[], test_overlap=0, leak_free=False,
                         reading=f"not checked: {str(exc).splitlines()[0]}")  # fmt: skip
    changed = document.get("cohort_fingerprint") != cohort.fingerprint()
    rows = {r.slide_id: r for r in cohort.rows}
    checks = []
    tested: Counter[str] = Counter()
    for split in splits:
        parts = split.parts()
        patients = {p: {rows[s].patient_id for s in ids if s in rows} for p, ids in parts.items()}
        seen: Counter[str] = Counter(pid for ids in patients.values() for pid in ids)
        try:
            check_no_leak(cohort, split)
            problems: list[str] = []
        except CohortError as exc:
            problems = list(exc.args[1]) if len(exc.args) > 1 else [str(exc)]
        tested.update(split.test)
        checks.append(
            SplitCheck(
                name=split.name,
                slides={p: len(ids) for p, ids in parts.items()},
                patients={p: len(ids) for p, ids in patients.items()},
                shared_patients=sum(1 for count in seen.values() if count > 1),
                held_out_centers=list(split.held_out_centers),
                problems=problems,
            )
        )
    overlap = sum(1 for count in tested.values() if count > 1)
    leak_free = not changed and all(c.shared_patients == 0 and not c.problems for c in checks)
    n_patients = len({r.patient_id for r in cohort.rows})
    if leak_free:
        reading = (
            f"leak-free: in each of the {len(checks)} splits every one of the {n_patients} "
            "patients is in one part only (recomputed from splits.json and the cohort)"
        )
    elif changed:
        reading = "not checked: the cohort changed since splits.json was drawn"
    else:
        first = next(p for c in checks for p in c.problems)
        reading = f"not leak-free: {first}"
    return LeakCheck(design=design, splits=checks, test_overlap=overlap, leak_free=leak_free,
                     reading=reading)  # fmt: skip


def _feature_records(cohort: Cohort, features: Path) -> list[FeatureFileRecord]:
    """Each slide's feature file: its SHA-256 and what it (or its tile file) records."""
    import h5py

    from histoguard.core._hdf5 import plain
    from histoguard.core._weights import file_sha256

    def attrs_of(path: Path) -> dict[str, Any]:
        try:
            with h5py.File(path, "r") as h5:
                return {k: plain(v) for k, v in h5.attrs.items()}
        except OSError:
            return {}

    records = []
    for row in cohort.rows:
        path = feature_file(features, row.slide_id)
        attrs = attrs_of(path) if path.is_file() else {}
        tiles = Path(str(attrs["tiles_file"])) if attrs.get("tiles_file") else None
        tile_attrs = attrs_of(tiles) if tiles is not None and tiles.is_file() else {}
        slide_sha = attrs.get("slide_sha256") or tile_attrs.get("slide_sha256")
        vendor = attrs.get("vendor") or tile_attrs.get("vendor")
        mpp = attrs.get("mpp")
        records.append(
            FeatureFileRecord(
                slide_id=row.slide_id,
                center=row.center or "",
                file_sha256=file_sha256(path) if path.is_file() else None,
                content_sha256=str(attrs["content_sha256"]) if "content_sha256" in attrs else None,
                slide_sha256=str(slide_sha) if slide_sha else None,
                slide_path=str(attrs["slide_path"]) if attrs.get("slide_path") else None,
                vendor=str(vendor) if vendor else None,
                mpp=float(mpp) if mpp is not None else None,
            )
        )
    return records


def _provenance(run_dir: Path, config: Mapping[str, Any], cohort: Cohort) -> Provenance:
    from histoguard.core._weights import file_sha256

    model = read_json(run_dir / "fold_0" / "model.json") if (run_dir / "fold_0").is_dir() else {}
    recorded = model.get("provenance") or {}
    table = Path(config["cohort"])
    records = _feature_records(cohort, Path(config["features"]))
    return Provenance(
        cohort_table=str(table),
        cohort_sha256=file_sha256(table) if table.is_file() else None,
        n_slides=len(cohort.rows),
        n_patients=len({r.patient_id for r in cohort.rows}),
        slides_per_center=dict(sorted(Counter(r.center or "" for r in cohort.rows).items())),
        slides_per_label=dict(sorted(Counter(r.label for r in cohort.rows).items())),
        vendors=dict(sorted(Counter(r.vendor for r in records if r.vendor).items())),
        encoder=recorded.get("encoder"),
        weights_sha256=recorded.get("weights_sha256"),
        mpp=recorded.get("mpp"),
        tile_size=recorded.get("tile_size"),
        feature_files=records,
        n_slide_sha256=sum(1 for r in records if r.slide_sha256),
        software=software_versions(model.get("histoguard_version")),
    )


def _predictions(
    run_dir: Path, labels: Sequence[str]
) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    rows = _rows(run_dir / "predictions.csv")
    y = np.array([labels.index(r["label"]) for r in rows], dtype=np.int64)
    p = np.array([[float(r[f"p_{label}"]) for label in labels] for r in rows], dtype=np.float64)
    return [r["slide_id"] for r in rows], y, p


def _subgroups(
    cohort_table: Path,
    slide_ids: Sequence[str],
    y: npt.NDArray[np.int64],
    probs: npt.NDArray[np.float64],
    labels: Sequence[str],
    metrics: Mapping[str, Any],
    min_slides: int,
) -> list[SubgroupTable]:
    """Metrics per value of every extra cohort column with a few distinct values."""
    from histoguard.core._tables import read_delimited

    if cohort_table.suffix.lower() not in (".csv", ".tsv"):
        return []
    header, rows = read_delimited(cohort_table, error=ConfigError, rows_are="slide")
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    by_slide = {cells[header.index("slide_id")]: cells for _, cells in rows}
    tables = []
    for column in (c for c in header if c and c not in known):
        index = header.index(column)
        values = [by_slide[s][index] if index < len(by_slide[s]) else "" for s in slide_ids]
        distinct = sorted(set(values))
        if not 2 <= len(distinct) <= MAX_SUBGROUP_VALUES:
            continue
        report = metrics_report(
            y, probs, labels=labels, threshold=metrics.get("threshold") or 0.5,
            centers=[v or "(blank)" for v in values], n_boot=int(metrics["n_boot"]),
            seed=int(metrics["seed"]),
        )  # fmt: skip
        strata = [
            _stratum(f"{column} = {value}", entry, len(labels), min_slides)
            for value, entry in report["centers"].items()
        ]
        tables.append(SubgroupTable(column=column, strata=strata))
    return tables


def _reliability(
    label: str, probs: npt.NDArray[np.float64], y: npt.NDArray[np.int64]
) -> ReliabilityBins:
    from histoguard.uncertainty import reliability_diagram

    d = reliability_diagram(probs, y).to_dict()
    return ReliabilityBins(label=label, ece=reliability_diagram(probs, y).ece, edges=d["edges"],
                           confidence=d["confidence"], accuracy=d["accuracy"],
                           count=[int(c) for c in d["count"]])  # fmt: skip


def _calibration(
    run_dir: Path,
    trust: Mapping[str, Any],
    labels: Sequence[str],
    raw: tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]],
) -> Calibration:
    from histoguard.report._readings import ece_reading

    before, after = trust["calibration"]["before"], trust["calibration"]["after"]
    diagrams = [_reliability("before scaling", raw[1], raw[0])]
    readings = run_dir / "trust_readings.csv"
    if readings.is_file():
        rows = _rows(readings)
        y = np.array([labels.index(r["label"]) for r in rows], dtype=np.int64)
        p = np.array([[float(r[f"p_{c}"]) for c in labels] for r in rows], dtype=np.float64)
        diagrams.append(_reliability("after scaling", p, y))

    def ece(entry: Mapping[str, Any]) -> Estimate:
        raw_estimate = _estimate(entry["ece_width"], low="lower", high="upper")
        return raw_estimate.model_copy(
            update={"reading": ece_reading(raw_estimate.value, raw_estimate.low, raw_estimate.high)}
        )

    return Calibration(
        ece_before=ece(before), ece_after=ece(after), brier_before=before.get("brier"),
        brier_after=after.get("brier"), nll_before=before.get("nll"), nll_after=after.get("nll"),
        diagrams=diagrams,
    )  # fmt: skip


def _coverage_row(kind: str, entry: Mapping[str, Any]) -> CoverageRow:
    return CoverageRow(
        kind=kind, name=str(entry["name"]), n=int(entry["n"]),
        coverage=Estimate(value=entry.get("coverage"), low=entry.get("lower"),
                          high=entry.get("upper"), reading=str(entry.get("verdict", ""))),
        mean_set_size=entry.get("mean_set_size"), review_rate=entry.get("review_rate"),
        verdict=str(entry.get("verdict", "")),
    )  # fmt: skip


def _trust(trust: Mapping[str, Any], evaluation: Path | None) -> Trust:
    coverage = trust["coverage"]
    rows = [_coverage_row("all", coverage["overall"])]
    rows += [_coverage_row("class", e) for e in coverage.get("per_class", [])]
    rows += [_coverage_row("center", e) for e in coverage.get("per_group", [])]
    selective = trust["selective"]
    gate = trust["gate"]
    detected, auroc = gate_detection(evaluation)

    def proportion(entry: Mapping[str, Any], reading: str = "") -> Estimate:
        return Estimate(value=entry.get("value"), low=entry.get("lower"),
                        high=entry.get("upper"), reading=reading)  # fmt: skip

    return Trust(
        alpha=float(trust["alpha"]), coverage=rows,
        review_rate=proportion(selective["review_rate"]),
        accuracy_decided=proportion(selective["accuracy_decided"]),
        accuracy_all=proportion(selective["accuracy_all"]),
        reasons={str(k): int(v) for k, v in sorted(trust.get("reasons", {}).items())},
        ood_alpha=float(gate["ood_alpha"]),
        gate_false_alarms=proportion(gate["false_alarms"], str(gate.get("reading", ""))),
        gate_detection=detected, gate_auroc=auroc,
    )  # fmt: skip


def build_model_card(
    run_dir: str | Path,
    *,
    audit_dir: str | Path | None = None,
    intended_use_file: str | Path | None = None,
    compare_run: str | Path | None = None,
    evaluation_dir: str | Path | None = None,
    min_slides: int | None = None,
    now: dt.datetime | None = None,
) -> ModelCard:
    """Read a train run (and optionally its audit, an intended-use YAML, the run of the other
    split design and an ``evaluate --ood`` output) into a :class:`ModelCard`.

    Raises:
        ConfigError: ``run_dir`` is not a train output, or an optional input is unusable.
    """
    from histoguard.core._verdict import MIN_CI_SLIDES

    run = Path(run_dir)
    check_run_dir(run)
    minimum = MIN_CI_SLIDES if min_slides is None else int(min_slides)
    config = read_json(run / "config.json")
    metrics = read_json(run / "metrics.json")
    try:
        cohort = load_cohort(Path(config["cohort"]), require_files=False)
    except CohortError as exc:
        raise ConfigError(
            f"{run}: the run's cohort cannot be read: {str(exc).splitlines()[0]}"
        ) from exc
    labels = list(metrics["labels"])
    slide_ids, y, probs = _predictions(run, labels)
    n_classes = len(labels)
    performance = Performance(
        task=metrics["task"], labels=labels, threshold=metrics.get("threshold"),
        n_boot=int(metrics["n_boot"]), resampled_by=str(metrics["resampled_by"]),
        overall=_stratum("all", metrics["overall"], n_classes, minimum),
        per_fold=[_stratum(k, v, n_classes, minimum) for k, v in metrics["folds"].items()],
        per_center=[_stratum(k, v, n_classes, minimum) for k, v in metrics["centers"].items()],
        per_class=_per_class(y, probs, labels, metrics.get("threshold") or 0.5,
                             n_boot=int(metrics["n_boot"]), seed=int(metrics["seed"]),
                             min_slides=minimum),
    )  # fmt: skip
    trust = metrics.get("trust")
    provenance = _provenance(run, config, cohort)
    models = sorted(p.name for p in run.glob("fold_*") if (p / "model.json").is_file())
    card = ModelCard(
        generated_at=(now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
        run_dir=str(run),
        model=str(config.get("model", "")),
        n_models=len(models),
        confidence=CONFIDENCE,
        min_slides=minimum,
        intended_use=intended_use(config, provenance, labels, intended_use_file),
        provenance=provenance,
        leak_check=_leak_check(cohort, run / "splits.json", str(metrics.get("design", ""))),
        performance=performance,
        design_gap=design_gap(run, metrics, compare_run),
        calibration=None if trust is None else _calibration(run, trust, labels, (y, probs)),
        trust=None
        if trust is None
        else _trust(trust, None if evaluation_dir is None else Path(evaluation_dir)),
        robustness=robustness(audit_dir),
        subgroups=_subgroups(Path(config["cohort"]), slide_ids, y, probs, labels, metrics, minimum),
        checklist=[],
        checklist_summary=ChecklistSummary(n_items=0, n_knowable=0, n_auto=0, auto_share=0.0),
    )
    items, summary = build_checklist(card)
    return card.model_copy(update={"checklist": items, "checklist_summary": summary})
