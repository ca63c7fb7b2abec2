"""The model card's parts read from beside the run: the intended use (derived, or a person's
YAML), the other split design's run, an ``evaluate --ood`` output, the robustness audit, and
the software versions."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from histoguard.errors import AuditDataError, ConfigError
from histoguard.report._model_card import (
    AuditEntry,
    DesignGap,
    Estimate,
    IntendedUse,
    Provenance,
    Robustness,
)

#: Packages whose versions the card records (those installed).
SOFTWARE = ("histoguard", "numpy", "scipy", "torch", "scikit-learn", "h5py", "openslide-python")
#: Keys an intended-use YAML may set.
INTENDED_USE_KEYS = ("statement", "users", "population", "exclusions")
#: Split designs that count as a random split, and as site-aware.
RANDOM_DESIGNS = ("kfold", "given")
SITE_DESIGNS = ("leave-one-center-out",)


#: Files a train output always holds; a folder without them is not a run.
RUN_FILES = ("config.json", "metrics.json", "splits.json", "predictions.csv")


def check_run_dir(run_dir: Path) -> None:
    """Raise a one-line :class:`ConfigError` unless ``run_dir`` is a ``histoguard train``
    output."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder; pass the --out of `histoguard train`")
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise ConfigError(
            f"{run_dir}: not a `histoguard train` output (missing {', '.join(missing)}); pass "
            "the folder `histoguard train --out` wrote"
        )


def read_json(path: Path) -> Any:
    """A JSON file's content.

    Raises:
        ConfigError: it cannot be read or parsed (one line, naming the file).
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as JSON ({exc})") from exc


def software_versions(trained_with: str | None) -> dict[str, str]:
    """Package -> version: the histoguard that trained the model, and this environment's."""
    versions = {"histoguard (training)": trained_with or "not recorded"}
    for name in SOFTWARE:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def intended_use(
    config: Mapping[str, Any],
    provenance: Provenance,
    labels: Sequence[str],
    path: str | Path | None,
) -> IntendedUse:
    """The intended use derived from the run, or the one a person wrote in ``path`` (YAML with
    :data:`INTENDED_USE_KEYS`; keys left out keep the derived text).

    Raises:
        ConfigError: the YAML is missing, unreadable or has other keys.
    """
    centers = ", ".join(c for c in provenance.slides_per_center if c) or "one unnamed center"
    scale = f"{provenance.mpp:g} µm/px" if provenance.mpp is not None else "an unrecorded scale"
    derived: dict[str, Any] = {
        "statement": (
            f"Research use: classify H&E whole-slide images as {' / '.join(labels)} from "
            f"{provenance.encoder or 'unrecorded'} features of tiles at {scale}, with a "
            "calibrated probability, a conformal prediction set and an out-of-distribution "
            "check that sends doubtful slides to review."
        ),
        "users": "Pathologists and researchers, who review every slide the model refers.",
        "population": (
            f"Slides like the {provenance.n_slides} training slides ({provenance.n_patients} "
            f"patients) from {centers}."
        ),
        "exclusions": [
            f"Classes other than {', '.join(labels)}.",
            "Features from another encoder, weights, scale or tile size (prediction refuses them).",
            "Centers, scanners or stains not in the training cohort without a local validation.",
            "Primary diagnosis without a pathologist.",
        ],
    }
    if path is None:
        return IntendedUse(**derived, source="train config", edited=False)
    import yaml

    file = Path(path)
    try:
        given = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{file}: cannot be read as an intended-use YAML ({exc})") from exc
    if not isinstance(given, Mapping):
        raise ConfigError(f"{file}: an intended-use YAML is a mapping of {INTENDED_USE_KEYS}")
    unknown = sorted(set(given) - set(INTENDED_USE_KEYS))
    if unknown:
        raise ConfigError(f"{file}: unknown keys {unknown}; allowed: {list(INTENDED_USE_KEYS)}")
    merged = {**derived, **given}
    if not isinstance(merged["exclusions"], list):
        merged["exclusions"] = [str(merged["exclusions"])]
    return IntendedUse(
        statement=str(merged["statement"]), users=str(merged["users"]),
        population=str(merged["population"]), exclusions=[str(e) for e in merged["exclusions"]],
        source=str(file), edited=True,
    )  # fmt: skip


def design_gap(run: Path, metrics: Mapping[str, Any], other: str | Path | None) -> DesignGap | None:
    """Random split against site-aware, when ``other`` is the run of the other design.

    Raises:
        ConfigError: ``other`` is not a train run, or both runs have the same kind of design.
    """
    if other is None:
        return None
    other_dir = Path(other)
    check_run_dir(other_dir)
    other_metrics = read_json(other_dir / "metrics.json")
    designs = (str(metrics.get("design")), str(other_metrics.get("design")))
    if designs[0] in RANDOM_DESIGNS and designs[1] in SITE_DESIGNS:
        (random_dir, random_m), (site_dir, site_m) = (run, metrics), (other_dir, other_metrics)
    elif designs[1] in RANDOM_DESIGNS and designs[0] in SITE_DESIGNS:
        (random_dir, random_m), (site_dir, site_m) = (other_dir, other_metrics), (run, metrics)
    else:
        raise ConfigError(
            f"--compare needs one random-split run and one leave-one-center-out run, got "
            f"designs {designs[0]!r} ({run}) and {designs[1]!r} ({other_dir})"
        )
    rows: dict[str, list[Estimate]] = {}
    for name in ("auc", "balanced_accuracy"):
        a = random_m["overall"]["metrics"].get(name) or {}
        b = site_m["overall"]["metrics"].get(name) or {}
        if a.get("value") is None or b.get("value") is None:
            continue
        gap = Estimate(value=a["value"] - b["value"])
        rows[name] = [
            Estimate(value=a["value"], low=a.get("low"), high=a.get("high")),
            Estimate(value=b["value"], low=b.get("low"), high=b.get("high")),
            gap,
        ]
    return DesignGap(random_run=str(random_dir), site_run=str(site_dir), rows=rows,
                     reading=_gap_reading(rows))  # fmt: skip


def _gap_reading(rows: Mapping[str, Sequence[Estimate]]) -> str:
    """The AUC gap (else balanced accuracy) in words; without a paired interval the gap is
    called real only when the two intervals do not overlap."""
    for name, (a, b, gap) in rows.items():
        assert a.value is not None and b.value is not None and gap.value is not None
        title = name.replace("_", " ")
        if None in (a.low, a.high, b.low, b.high):
            return f"{title}: gap {gap.value:+.3f}, no intervals to judge it by"
        assert a.low is not None and a.high is not None and b.low is not None
        assert b.high is not None
        if min(a.high, b.high) >= max(a.low, b.low):
            return (
                f"{title}: the random split reads {gap.value:+.3f} against site-aware, within "
                "the uncertainty (the intervals overlap): inconclusive"
            )
        verb = "overestimates" if gap.value > 0 else "underestimates"
        return (
            f"{title}: the random split {verb} performance at a new center by "
            f"{abs(gap.value):.3f} (the intervals do not overlap)"
        )
    return "no metric is defined in both designs"


def gate_detection(evaluation: Path | None) -> tuple[Estimate | None, Estimate | None]:
    """The gate's detection rate and AUROC on known out-of-distribution slides, from an
    ``evaluate --ood`` output folder (None, None without one).

    Raises:
        ConfigError: the folder holds no ``evaluation.json`` with an out-of-distribution part.
    """
    if evaluation is None:
        return None, None
    path = evaluation / "evaluation.json"
    if not path.is_file():
        raise ConfigError(f"{evaluation}: no evaluation.json; pass an `histoguard evaluate` --out")
    ood = (read_json(path).get("gate") or {}).get("out_of_distribution")
    if not isinstance(ood, Mapping):
        raise ConfigError(f"{path}: no out-of-distribution slides; run `evaluate` with --ood")
    detected, auroc = ood["detected"], ood["auroc"]
    return (
        Estimate(value=detected.get("value"), low=detected.get("lower"),
                 high=detected.get("upper")),
        Estimate(value=auroc.get("value"), low=auroc.get("lower"), high=auroc.get("upper")),
    )  # fmt: skip


def robustness(audit_dir: str | Path | None) -> Robustness | None:
    """The audit in brief: each measurement with its reading, stress and attack summaries.

    Raises:
        ConfigError: ``audit_dir`` holds no readable ``audit.json``.
    """
    if audit_dir is None:
        return None
    from histoguard.report._readings import (
        apd_reading,
        clustering_reading,
        ri_reading,
        site_probe_reading,
    )
    from histoguard.robustness._result import AuditResult, Skipped

    path = Path(audit_dir) / "audit.json"
    if not path.is_file():
        raise ConfigError(f"{audit_dir}: no audit.json; pass the --out of `histoguard audit`")
    try:
        audit = AuditResult.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (AuditDataError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not an audit ({str(exc).splitlines()[0]})") from exc

    def interval(ci: Sequence[float] | None) -> tuple[float | None, float | None]:
        return (None, None) if ci is None else (float(ci[0]), float(ci[1]))

    def measured(name: str, value: float, ci: Sequence[float] | None, reading: str) -> AuditEntry:
        low, high = interval(ci)
        return AuditEntry(name=name, value=Estimate(value=value, low=low, high=high),
                          reading=reading)  # fmt: skip

    def skipped(name: str, part: Skipped | None) -> AuditEntry:
        why = part.reason if part is not None else "not run"
        return AuditEntry(name=name, value=None, reading=f"skipped: {why}")

    entries = []
    ri = audit.robustness_index
    if isinstance(ri, Skipped):
        entries.append(skipped("robustness index", ri))
    else:
        text = ri_reading(ri.value, ri.ci, ri.k, k_selection=ri.k_selection,
                          confidence=ri.confidence)  # fmt: skip
        entries.append(measured("robustness index", ri.value, ri.ci, text))
    probe = audit.site_probe
    if isinstance(probe, Skipped) or probe is None:
        entries.append(skipped("site probe AUROC", probe))
    else:
        text = site_probe_reading(probe.auroc, probe.ci, probe.balanced_accuracy,
                                  probe.ci_balanced_accuracy, max(len(probe.centers), 2),
                                  confidence=probe.confidence)  # fmt: skip
        entries.append(measured("site probe AUROC", probe.auroc, probe.ci, text))
    apd = audit.apd
    if isinstance(apd, Skipped):
        entries.append(skipped("APD (in distribution)", apd))
    else:
        text = apd_reading(apd.in_distribution, apd.out_of_distribution, apd.ci_in_distribution,
                           apd.ci_out_of_distribution)  # fmt: skip
        entries.append(measured("APD (in distribution)", apd.in_distribution,
                             apd.ci_in_distribution, text))  # fmt: skip
    clustering = audit.clustering_score
    if isinstance(clustering, Skipped):
        entries.append(skipped("clustering score", clustering))
    else:
        text = clustering_reading(clustering.value, clustering.ci)
        entries.append(measured("clustering score", clustering.value, clustering.ci, text))
    stress: dict[str, list[float | None]] = {}
    if not isinstance(audit.stress, Skipped):
        for name, entry in sorted(audit.stress.perturbations.items()):
            drops = [d for d in entry.get("accuracy_drop", []) if d is not None]
            graceful = entry.get("graceful_severity")
            stress[name] = [max(drops) if drops else None,
                            None if graceful is None else float(graceful)]  # fmt: skip
    attacks: dict[str, float | None] = {}
    if not isinstance(audit.adversarial, Skipped):
        for entry in audit.adversarial.pgd:
            attacks[f"PGD {entry.get('norm')} eps {float(entry.get('eps', 0)) * 255:.0f}/255"] = (
                entry.get("accuracy_drop")
            )
        if audit.adversarial.universal:
            unseen = audit.adversarial.universal.get("unseen") or {}
            attacks["universal perturbation (unseen tiles)"] = unseen.get("accuracy_drop")
        if audit.adversarial.slide:
            attacks["slide attack"] = audit.adversarial.slide.get("accuracy_drop")
    return Robustness(subject=str(audit.metadata.get("subject", "")), audit_file=str(path),
                      entries=entries, stress=stress, attacks=attacks)  # fmt: skip
