"""Robustness audit: does an encoder or a model see biology or the hospital?

Representation metrics on labelled embeddings (PathoROB: robustness index, average performance
drop, clustering score; and a site probe: can a linear probe predict the hospital?), stress
tests under stain/scanner/geometry shifts, adversarial attacks on tiles and slides, loaders for
the multi-center layouts users bring, a simulated multi-center cohort builder, and the audit
that runs them all and returns a typed :class:`AuditResult` (written as ``audit.json``;
``histoguard.report.write_audit_page`` draws ``audit.html`` from it).
"""

from histoguard.mil._ensemble import FoldEnsemble
from histoguard.robustness._audit import (
    AUDIT_JSON,
    AUDIT_PARTS,
    AttackSettings,
    AuditConfig,
    AuditOutputs,
    audit_embeddings,
    audit_encoder,
    audit_metadata,
    run_audit,
    write_audit,
)
from histoguard.robustness._compare import (
    COMPARISON_JSON,
    COMPARISON_METRICS,
    ComparisonResult,
    ComparisonRow,
    compare_embeddings,
    run_comparison,
    write_comparison,
)
from histoguard.robustness._result import (
    SCHEMA_VERSION,
    AdversarialSection,
    APDSection,
    AuditResult,
    ClusteringSection,
    RobustnessIndexSection,
    SiteProbeSection,
    Skipped,
    StressSection,
)
from histoguard.robustness._slide_models import SlideModel, load_slide_model
from histoguard.robustness.attacks._pgd import (
    PGDConfig,
    PGDResult,
    UniversalConfig,
    pgd_attack,
)
from histoguard.robustness.attacks._slide_attack import (
    SlideAttackConfig,
    SlideAttackResult,
    slide_attack,
)
from histoguard.robustness.attacks._universal import (
    UniversalResult,
    evaluate_perturbation,
    universal_attack,
    universal_perturbation,
)
from histoguard.robustness.data._containers import LabelledEmbeddings, TileDataset, read_tile
from histoguard.robustness.data._embed import embed_tiles
from histoguard.robustness.data._layouts import (
    load_camelyon17_wilds,
    load_class_folders,
    load_feature_cohort,
    load_medmnist,
    load_unlabelled_tiles,
)
from histoguard.robustness.data._synthetic import planted_embeddings
from histoguard.robustness.data._tile_tables import (
    load_tile_table,
    ood_centers_from_table,
)
from histoguard.robustness.metrics._apd import APDConfig, APDResult, average_performance_drop
from histoguard.robustness.metrics._clustering import (
    ClusteringConfig,
    ClusteringScoreResult,
    clustering_score,
)
from histoguard.robustness.metrics._linear_probe import LinearProbe, fit_linear_probe
from histoguard.robustness.metrics._neighbours import nearest_neighbours
from histoguard.robustness.metrics._robustness_index import (
    RobustnessIndexConfig,
    RobustnessIndexResult,
    robustness_index,
)
from histoguard.robustness.metrics._site_probe import (
    ProbeCVResult,
    SiteProbeConfig,
    biology_probe,
    site_probe,
)
from histoguard.robustness.metrics._stats import center_class_association
from histoguard.robustness.shifts._perturbations import (
    PerturbationInfo,
    apply_perturbation,
    get_perturbation,
    list_perturbations,
    register_perturbation,
    stain_transfer_perturbation,
)
from histoguard.robustness.shifts._simulated_centers import (
    StainProfile,
    default_profiles,
    simulate_centers,
    stain_profile_from_image,
)
from histoguard.robustness.shifts._stress import StressConfig, StressResult, stress_test

__all__ = [
    "AUDIT_JSON",
    "AUDIT_PARTS",
    "COMPARISON_JSON",
    "COMPARISON_METRICS",
    "SCHEMA_VERSION",
    "APDConfig",
    "APDResult",
    "APDSection",
    "AdversarialSection",
    "AttackSettings",
    "AuditConfig",
    "AuditOutputs",
    "AuditResult",
    "ClusteringConfig",
    "ClusteringScoreResult",
    "ClusteringSection",
    "ComparisonResult",
    "ComparisonRow",
    "FoldEnsemble",
    "LabelledEmbeddings",
    "LinearProbe",
    "PGDConfig",
    "PGDResult",
    "PerturbationInfo",
    "ProbeCVResult",
    "RobustnessIndexConfig",
    "RobustnessIndexResult",
    "RobustnessIndexSection",
    "SiteProbeConfig",
    "SiteProbeSection",
    "Skipped",
    "SlideAttackConfig",
    "SlideAttackResult",
    "SlideModel",
    "StainProfile",
    "StressConfig",
    "StressResult",
    "StressSection",
    "TileDataset",
    "UniversalConfig",
    "UniversalResult",
    "apply_perturbation",
    "audit_embeddings",
    "audit_encoder",
    "audit_metadata",
    "average_performance_drop",
    "biology_probe",
    "center_class_association",
    "clustering_score",
    "compare_embeddings",
    "default_profiles",
    "embed_tiles",
    "evaluate_perturbation",
    "fit_linear_probe",
    "get_perturbation",
    "list_perturbations",
    "load_camelyon17_wilds",
    "load_class_folders",
    "load_feature_cohort",
    "load_medmnist",
    "load_slide_model",
    "load_tile_table",
    "load_unlabelled_tiles",
    "nearest_neighbours",
    "ood_centers_from_table",
    "pgd_attack",
    "planted_embeddings",
    "read_tile",
    "register_perturbation",
    "robustness_index",
    "run_audit",
    "run_comparison",
    "simulate_centers",
    "site_probe",
    "slide_attack",
    "stain_profile_from_image",
    "stain_transfer_perturbation",
    "stress_test",
    "universal_attack",
    "universal_perturbation",
    "write_audit",
    "write_comparison",
]
