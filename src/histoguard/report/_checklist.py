"""The reporting checklist of the model card: TRIPOD+AI items and the CAP 2024 recommendations
for evaluating machine learning in pathology, each answered from the card where software can.

The items are written here in histoguard's own words. TRIPOD+AI ids follow the published
checklist (Collins et al., BMJ 2024); the CAP concept paper (Hanna et al., Arch Pathol Lab Med
2024) does not number its recommendations, so ``CAP-n`` is this module's numbering of them.

An item is ``auto`` when the card holds its answer (``evidence`` names where), ``human`` when
only a person can answer it (ethics approval, funding, the clinical context; software cannot
know these, so they are not counted against the automatic share) or when software could have
answered but the run lacks what it needs (then it counts as not filled), and ``n/a`` when the
run makes it inapplicable (no centers: no per-center heterogeneity).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from histoguard.report._model_card import ChecklistItem, ChecklistSummary, ModelCard, Status

#: A test of the card: None when the item is answered (auto), else what is missing; the
#: string ``"n/a"`` marks the item not applicable to this run.
_Check = Callable[[ModelCard], str | None]


@dataclass(frozen=True)
class _Item:
    framework: str
    item: str
    text: str
    evidence: str
    check: _Check | None  # None: only a person can answer it


def _always(card: ModelCard) -> str | None:
    return None


def _centers(card: ModelCard) -> str | None:
    return None if len(card.provenance.slides_per_center) > 1 else "n/a"


def _hashes(card: ModelCard) -> str | None:
    files = card.provenance.feature_files
    return None if files and all(f.file_sha256 for f in files) else "feature files missing"


def _trust(card: ModelCard) -> str | None:
    return None if card.trust is not None else "the run fitted no calibration slides"


def _calibration(card: ModelCard) -> str | None:
    return None if card.calibration is not None else "the run fitted no calibration slides"


def _robustness(card: ModelCard) -> str | None:
    return None if card.robustness is not None else "no robustness audit given (--audit)"


def _subgroups(card: ModelCard) -> str | None:
    return None if card.subgroups else "the cohort has no subgroup columns (sex, age, ...)"


def _gap(card: ModelCard) -> str | None:
    if len(card.provenance.slides_per_center) < 2:
        return "n/a"
    if card.performance.per_center or card.design_gap is not None:
        return None
    return "no per-center results"


def _encoder(card: ModelCard) -> str | None:
    return None if card.provenance.encoder else "the model records no encoder"


_ITEMS = (
    _Item("TRIPOD+AI", "3b", "Intended population, place in the care pathway and intended users",
          "intended_use", _always),
    _Item("TRIPOD+AI", "3a", "Clinical context and rationale for the model", "", None),
    _Item("TRIPOD+AI", "3c", "Known health inequalities between groups the model may meet", "",
          None),
    _Item("TRIPOD+AI", "5a", "Sources of the data (slides, centers, scanners)",
          "provenance.slides_per_center, provenance.vendors", _always),
    _Item("TRIPOD+AI", "5b", "Dates of data collection", "", None),
    _Item("TRIPOD+AI", "6a", "Setting: number and identity of the centers",
          "provenance.slides_per_center", _always),
    _Item("TRIPOD+AI", "6b", "Eligibility: which slides were included and excluded",
          "intended_use.exclusions", None),
    _Item("TRIPOD+AI", "7", "Data preparation: tiling, scale, feature extraction",
          "provenance.encoder, provenance.mpp, provenance.tile_size", _encoder),
    _Item("TRIPOD+AI", "8a", "Outcome (reference standard) and how it was assessed",
          "performance.labels", None),
    _Item("TRIPOD+AI", "10", "Sample size: slides and patients per class and center",
          "provenance.n_slides, provenance.slides_per_label", _always),
    _Item("TRIPOD+AI", "12a", "How the data were partitioned for development and evaluation, "
          "with no patient in two parts", "leak_check", _always),
    _Item("TRIPOD+AI", "12c", "Model type and training procedure", "model, n_models", _always),
    _Item("TRIPOD+AI", "12d", "Heterogeneity of performance across centers",
          "performance.per_center, design_gap", _gap),
    _Item("TRIPOD+AI", "12e", "Performance measures with their uncertainty",
          "performance (bootstrap intervals)", _always),
    _Item("TRIPOD+AI", "12f", "Model updating or recalibration", "calibration", _calibration),
    _Item("TRIPOD+AI", "13", "How class imbalance was handled", "provenance.slides_per_label",
          _always),
    _Item("TRIPOD+AI", "14", "Fairness: performance in subgroups", "subgroups", _subgroups),
    _Item("TRIPOD+AI", "15", "Model output and how it is turned into a decision",
          "performance.threshold, trust", _trust),
    _Item("TRIPOD+AI", "16", "Differences between development and evaluation data",
          "robustness, trust.gate_false_alarms", _robustness),
    _Item("TRIPOD+AI", "17", "Ethics approval and consent", "", None),
    _Item("TRIPOD+AI", "18a", "Funding", "", None),
    _Item("TRIPOD+AI", "18f", "Availability of the code and the model",
          "provenance.software, provenance.feature_files", _hashes),
    _Item("TRIPOD+AI", "20b", "Characteristics of the slides per partition",
          "leak_check.splits", _always),
    _Item("TRIPOD+AI", "23a", "Performance of the final model with confidence intervals",
          "performance.overall", _always),
    _Item("TRIPOD+AI", "23b", "Performance per center and subgroup", "performance.per_center",
          _centers),
    _Item("TRIPOD+AI", "26", "Limitations, including what the intervals cannot rule out", "",
          None),
    _Item("CAP 2024", "CAP-1", "An intended-use statement with exclusions", "intended_use",
          _always),
    _Item("CAP 2024", "CAP-2", "Validation cases representative of the intended use, from "
          "more than one site", "provenance.slides_per_center", _centers),
    _Item("CAP 2024", "CAP-3", "Traceable inputs: slide and feature checksums, encoder "
          "weights", "provenance.feature_files, provenance.weights_sha256", _hashes),
    _Item("CAP 2024", "CAP-4", "Performance metrics with confidence intervals, per class",
          "performance.per_class", _always),
    _Item("CAP 2024", "CAP-5", "Calibration of the output probabilities",
          "calibration", _calibration),
    _Item("CAP 2024", "CAP-6", "Abstention: when the model refers a case to a pathologist",
          "trust.review_rate, trust.coverage", _trust),
    _Item("CAP 2024", "CAP-7", "Detection of out-of-distribution input",
          "trust.gate_false_alarms, trust.gate_detection", _trust),
    _Item("CAP 2024", "CAP-8", "Robustness to pre-analytic and scanner variation",
          "robustness", _robustness),
    _Item("CAP 2024", "CAP-9", "Software versions and a locked model", "provenance.software",
          _always),
    _Item("CAP 2024", "CAP-10", "Reference standard and its agreement between pathologists", "",
          None),
    _Item("CAP 2024", "CAP-11", "A plan to monitor performance after deployment", "", None),
)  # fmt: skip


def build_checklist(card: ModelCard) -> tuple[list[ChecklistItem], ChecklistSummary]:
    """Answer every checklist item from ``card`` (whose ``checklist`` is ignored)."""
    items = []
    for spec in _ITEMS:
        knowable = spec.check is not None
        missing = "needs a person" if spec.check is None else spec.check(card)
        status: Status
        if missing == "n/a":
            status, evidence, knowable = "n/a", "not applicable to this run", False
        elif missing is None:
            status, evidence = "auto", spec.evidence
        else:
            status, evidence = "human", missing
        items.append(
            ChecklistItem(
                framework=spec.framework, item=spec.item, text=spec.text, status=status,
                software_knowable=knowable, evidence=evidence,
            )
        )  # fmt: skip
    n_knowable = sum(i.software_knowable for i in items)
    n_auto = sum(i.status == "auto" for i in items)
    summary = ChecklistSummary(
        n_items=len(items),
        n_knowable=n_knowable,
        n_auto=n_auto,
        auto_share=n_auto / n_knowable if n_knowable else 0.0,
    )
    return items, summary
