"""Robustness audit: does an encoder or a model see biology or the hospital?

Representation metrics on labelled embeddings (PathoROB: robustness index, average performance
drop, clustering score), stress tests under stain/scanner/geometry shifts, adversarial attacks
on tiles and slides, loaders for the multi-center layouts users bring, a simulated multi-center
cohort builder, and the audit that runs them all and writes ``audit.json`` + ``audit.html``.
"""

from histoguard.robustness._adversarial import (
    PGDConfig,
    PGDResult,
    UniversalConfig,
    UniversalResult,
    evaluate_perturbation,
    pgd_attack,
    universal_attack,
    universal_perturbation,
)
from histoguard.robustness._apd import APDConfig, APDResult, average_performance_drop
from histoguard.robustness._audit import (
    AUDIT_PARTS,
    AttackSettings,
    AuditConfig,
    AuditOutputs,
    audit_embeddings,
    audit_encoder,
    audit_metadata,
    embed_tiles,
    run_audit,
    write_audit,
)
from histoguard.robustness._clustering import (
    ClusteringConfig,
    ClusteringScoreResult,
    clustering_score,
)
from histoguard.robustness._data import LabelledEmbeddings, TileDataset, read_tile
from histoguard.robustness._datasets import (
    load_camelyon17_wilds,
    load_class_folders,
    load_feature_cohort,
    load_medmnist,
    load_tile_table,
    ood_centers_from_table,
)
from histoguard.robustness._linear_probe import LinearProbe, fit_linear_probe
from histoguard.robustness._neighbours import nearest_neighbours
from histoguard.robustness._perturbations import (
    PerturbationInfo,
    apply_perturbation,
    get_perturbation,
    list_perturbations,
    register_perturbation,
    stain_transfer_perturbation,
)
from histoguard.robustness._report import render_audit_html
from histoguard.robustness._robustness_index import (
    RobustnessIndexConfig,
    RobustnessIndexResult,
    robustness_index,
)
from histoguard.robustness._simulated_centers import (
    StainProfile,
    default_profiles,
    simulate_centers,
    stain_profile_from_image,
)
from histoguard.robustness._slide_attack import SlideAttackConfig, SlideAttackResult, slide_attack
from histoguard.robustness._stats import center_class_association
from histoguard.robustness._stress import StressConfig, StressResult, stress_test
from histoguard.robustness._synthetic import planted_embeddings

__all__ = [
    "AUDIT_PARTS",
    "APDConfig",
    "APDResult",
    "AttackSettings",
    "AuditConfig",
    "AuditOutputs",
    "ClusteringConfig",
    "ClusteringScoreResult",
    "LabelledEmbeddings",
    "LinearProbe",
    "PGDConfig",
    "PGDResult",
    "PerturbationInfo",
    "RobustnessIndexConfig",
    "RobustnessIndexResult",
    "SlideAttackConfig",
    "SlideAttackResult",
    "StainProfile",
    "StressConfig",
    "StressResult",
    "TileDataset",
    "UniversalConfig",
    "UniversalResult",
    "apply_perturbation",
    "audit_embeddings",
    "audit_encoder",
    "audit_metadata",
    "average_performance_drop",
    "center_class_association",
    "clustering_score",
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
    "load_tile_table",
    "nearest_neighbours",
    "ood_centers_from_table",
    "pgd_attack",
    "planted_embeddings",
    "read_tile",
    "register_perturbation",
    "render_audit_html",
    "robustness_index",
    "run_audit",
    "simulate_centers",
    "slide_attack",
    "stain_profile_from_image",
    "stain_transfer_perturbation",
    "stress_test",
    "universal_attack",
    "universal_perturbation",
    "write_audit",
]
