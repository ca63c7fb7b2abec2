"""The model card's schema: every number the validation report shows, typed and versioned.

``model_card.json`` is a :class:`ModelCard` dumped by pydantic; ``report.html`` is drawn from
it alone (``_report_page.py``), so a reader can check every figure on the page against the
file. The layout is versioned by :data:`SCHEMA_VERSION`; a change that renames or removes a
field raises it. ``generated_at`` is the only field that differs between two reports of the
same inputs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

#: Version of the ``model_card.json`` layout.
SCHEMA_VERSION = "1"

Status = Literal["auto", "human", "n/a"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Estimate(_Model):
    """A number with its interval and what it means.

    Attributes:
        value: the point estimate (None: undefined, e.g. AUC of one class).
        low, high: its interval at the card's confidence, or None.
        reading: a verdict only when the interval lies on one side of the threshold, else
            ``"inconclusive: ..."`` or ``"too few slides: ..."``; empty where no threshold
            applies.
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    reading: str = ""


class Stratum(_Model):
    """Metrics of one group of slides (all, a center, a class, a subgroup).

    Attributes:
        name: the group (``"all"``, a center, ``"sex = F"``).
        n: slides in it.
        metrics: metric name -> estimate (bootstrap over slides).
    """

    name: str
    n: int
    metrics: dict[str, Estimate]


class IntendedUse(_Model):
    """What the model is for, and what it is not for.

    Attributes:
        statement: the intended use in one or two sentences.
        users: who is meant to act on its output.
        population: the slides it is meant for.
        exclusions: uses and inputs it is not validated for.
        source: ``"train config"`` (derived from the run) or the YAML file that overrides it.
        edited: True when a person wrote it (the YAML file), False when derived.
    """

    statement: str
    users: str
    population: str
    exclusions: list[str]
    source: str
    edited: bool


class FeatureFileRecord(_Model):
    """One slide's feature file, as it was when the report was written.

    Attributes:
        slide_id: the cohort's slide id.
        center: its center ("" when none).
        file_sha256: SHA-256 of the feature file's bytes.
        content_sha256: the file's own checksum of features + coords (histoguard files).
        slide_sha256: SHA-256 of the slide file, where extraction recorded it.
        slide_path: the slide the features came from, where recorded.
        vendor: the slide's scanner vendor, where recorded.
        mpp: µm per pixel of the tiles.
    """

    slide_id: str
    center: str
    file_sha256: str | None
    content_sha256: str | None
    slide_sha256: str | None
    slide_path: str | None
    vendor: str | None
    mpp: float | None


class Provenance(_Model):
    """Where the model's data and software came from.

    Attributes:
        cohort_table: path of the cohort table; cohort_sha256 its bytes' SHA-256.
        n_slides, n_patients: in the cohort.
        slides_per_center, slides_per_label: counts.
        vendors: scanner vendor -> slides (only where recorded).
        encoder, weights_sha256, mpp, tile_size: what the model records it was trained on.
        feature_files: one record per slide.
        n_slide_sha256: how many slides have a recorded slide SHA-256.
        software: package -> version (the training run's histoguard version, and this
            report's environment).
    """

    cohort_table: str
    cohort_sha256: str | None
    n_slides: int
    n_patients: int
    slides_per_center: dict[str, int]
    slides_per_label: dict[str, int]
    vendors: dict[str, int]
    encoder: str | None
    weights_sha256: str | None
    mpp: float | None
    tile_size: int | None
    feature_files: list[FeatureFileRecord]
    n_slide_sha256: int
    software: dict[str, str]


class SplitCheck(_Model):
    """One split, recomputed from ``splits.json`` and the cohort.

    Attributes:
        name: the split (``fold0``, ``loco-A``).
        slides: part -> slides in it.
        patients: part -> patients in it.
        shared_patients: patients found in more than one part (0 for a leak-free split).
        held_out_centers: centers kept out of train and val.
        problems: what :func:`~histoguard.mil._splits.check_no_leak` found (empty: none).
    """

    name: str
    slides: dict[str, int]
    patients: dict[str, int]
    shared_patients: int
    held_out_centers: list[str]
    problems: list[str]


class LeakCheck(_Model):
    """Proof that no patient is in two partitions of any split.

    Attributes:
        design: ``kfold``, ``leave-one-center-out`` or ``given``.
        splits: each split's check.
        test_overlap: slides in the test part of more than one split (0 for a proper
            cross-validation: each slide is tested once).
        leak_free: no split shares a patient between parts and none has a problem.
        reading: the verdict in words.
    """

    design: str
    splits: list[SplitCheck]
    test_overlap: int
    leak_free: bool
    reading: str


class Performance(_Model):
    """Discrimination on the held-out slides, with bootstrap intervals.

    Attributes:
        task: ``binary`` or ``multiclass``; labels the class names.
        threshold: the decision threshold (binary).
        n_boot: bootstrap resamples; resampled_by ``slide`` or ``group``.
        overall, per_fold, per_center: strata of the train run's ``metrics.json``.
        per_class: one-vs-rest recall (sensitivity) and precision of each class.
    """

    task: str
    labels: list[str]
    threshold: float | None
    n_boot: int
    resampled_by: str
    overall: Stratum
    per_fold: list[Stratum]
    per_center: list[Stratum]
    per_class: list[Stratum]


class DesignGap(_Model):
    """Random-split against site-aware estimates of the same task.

    Attributes:
        random_run, site_run: the two run folders.
        rows: metric -> random split, site-aware and the difference (random - site-aware).
        reading: what the gap means, with its uncertainty.
    """

    random_run: str
    site_run: str
    rows: dict[str, list[Estimate]]
    reading: str


class ReliabilityBins(_Model):
    """The data of one reliability diagram (equal-width bins).

    Attributes:
        label: ``"before scaling"`` or ``"after scaling"``.
        ece: expected calibration error of these bins.
        edges, confidence, accuracy, count: per bin (None where a bin is empty).
    """

    label: str
    ece: float
    edges: list[float]
    confidence: list[float | None]
    accuracy: list[float | None]
    count: list[int]


class Calibration(_Model):
    """Calibration of the test slides before and after scaling.

    Attributes:
        ece_before, ece_after: ECE (equal-width bins) with bootstrap intervals.
        brier_before, brier_after, nll_before, nll_after: proper scores.
        diagrams: the reliability diagrams drawn on the page.
    """

    ece_before: Estimate
    ece_after: Estimate
    brier_before: float | None
    brier_after: float | None
    nll_before: float | None
    nll_after: float | None
    diagrams: list[ReliabilityBins]


class CoverageRow(_Model):
    """Conformal coverage and abstention of one group.

    Attributes:
        kind: ``all``, ``class`` or ``center``; name the group.
        n: slides; coverage its realised coverage (Clopper-Pearson interval).
        mean_set_size: mean prediction-set size; review_rate the share sent to review.
        verdict: covered / undercovered / inconclusive, from the interval.
    """

    kind: str
    name: str
    n: int
    coverage: Estimate
    mean_set_size: float | None
    review_rate: float | None
    verdict: str


class Trust(_Model):
    """Conformal coverage, abstention and the out-of-distribution gate on the test slides.

    Attributes:
        alpha: the conformal miscoverage level (target coverage ``1 - alpha``).
        coverage: overall, per class and per center.
        review_rate: share of slides sent to review (Clopper-Pearson interval).
        accuracy_decided, accuracy_all: accuracy of decided slides and of all slides.
        reasons: slides per decision reason.
        ood_alpha: the gate's level; gate_false_alarms the share of in-distribution test
            slides it flagged.
        gate_detection: share of known out-of-distribution slides flagged, and the gate
            score's AUROC, when an ``evaluate`` with ``--ood`` output was given; else None.
    """

    alpha: float
    coverage: list[CoverageRow]
    review_rate: Estimate
    accuracy_decided: Estimate
    accuracy_all: Estimate
    reasons: dict[str, int]
    ood_alpha: float
    gate_false_alarms: Estimate
    gate_detection: Estimate | None
    gate_auroc: Estimate | None


class AuditEntry(_Model):
    """One measurement of the robustness audit.

    Attributes:
        name: what was measured.
        value: the estimate (None when skipped).
        reading: its reading (from :mod:`._readings`), or why it was skipped.
    """

    name: str
    value: Estimate | None
    reading: str


class Robustness(_Model):
    """The robustness audit (``audit.json``) in brief.

    Attributes:
        subject: what was audited; audit_file the JSON read.
        entries: robustness index, site probe, APD, clustering score.
        stress: per perturbation, the worst accuracy drop and the highest graceful severity.
        attacks: per attack, the accuracy drop.
    """

    subject: str
    audit_file: str
    entries: list[AuditEntry]
    stress: dict[str, list[float | None]]
    attacks: dict[str, float | None]


class SubgroupTable(_Model):
    """Metrics per value of one extra cohort column (sex, age group, scanner, ...)."""

    column: str
    strata: list[Stratum]


class ChecklistItem(_Model):
    """One reporting-checklist item.

    Attributes:
        framework: ``TRIPOD+AI`` or ``CAP 2024``; item its id there.
        text: what the item asks, in histoguard's words.
        status: ``auto`` (filled from data), ``human`` (needs a person) or ``n/a``.
        software_knowable: whether software could fill it from the run at all.
        evidence: where on the card it is answered, or what a person must add.
    """

    framework: str
    item: str
    text: str
    status: Status
    software_knowable: bool
    evidence: str


class ChecklistSummary(_Model):
    """How much of the checklist software filled.

    Attributes:
        n_items: all items; n_knowable those software can know; n_auto those it filled.
        auto_share: ``n_auto / n_knowable``.
    """

    n_items: int
    n_knowable: int
    n_auto: int
    auto_share: float


class ModelCard(_Model):
    """The validation report's content.

    Attributes:
        schema_version: :data:`SCHEMA_VERSION`.
        generated_at: when the card was written (ISO 8601, UTC): the only field that differs
            between two reports of the same inputs.
        run_dir: the train output read.
        model: the model's registered name; n_models the fold (and seed) models.
        confidence: coverage of every interval on the card (0.95).
        min_slides: fewest slides a bootstrap interval may rest on before its reading says
            "too few slides".
        sections: the sections below; None where the run holds nothing for them.
    """

    schema_version: str = SCHEMA_VERSION
    generated_at: str
    run_dir: str
    model: str
    n_models: int
    confidence: float
    min_slides: int
    intended_use: IntendedUse
    provenance: Provenance
    leak_check: LeakCheck
    performance: Performance
    design_gap: DesignGap | None
    calibration: Calibration | None
    trust: Trust | None
    robustness: Robustness | None
    subgroups: list[SubgroupTable]
    checklist: list[ChecklistItem]
    checklist_summary: ChecklistSummary
