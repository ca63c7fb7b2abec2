"""The site probe: slide-grouped cross-validated center prediction, AUROC with a slide-bootstrap
interval, and its place in the audit."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from histoguard.errors import AuditDataError, ConfigError
from histoguard.robustness import (
    AuditConfig,
    LabelledEmbeddings,
    SiteProbeConfig,
    Skipped,
    audit_embeddings,
    biology_probe,
    planted_embeddings,
    site_probe,
)
from histoguard.robustness.metrics._site_probe import (
    cross_validated_probe,
    paired_difference,
)

FAST = SiteProbeConfig(n_bootstrap=300)


def test_a_strong_center_signal_gives_auroc_near_one() -> None:
    data = planted_embeddings(center_strength=3.0, slides_per_cell=4, tiles_per_slide=15, dim=32)
    result = site_probe(data, FAST)
    assert result.auroc > 0.98
    assert result.ci[0] > 0.9
    assert result.balanced_accuracy > 0.95
    assert result.to_dict()["chance_auroc"] == 0.5


def test_no_center_signal_gives_an_interval_covering_chance() -> None:
    for seed in range(3):
        data = planted_embeddings(
            center_strength=0.0, class_strength=1.0, slides_per_cell=4, tiles_per_slide=15,
            dim=32, seed=seed,
        )  # fmt: skip
        result = site_probe(data, SiteProbeConfig(n_bootstrap=300, seed=seed))
        assert result.ci[0] < 0.5 < result.ci[1], (seed, result.auroc, result.ci)


def test_folds_never_split_a_slide_and_every_row_is_scored_once() -> None:
    data = planted_embeddings(center_strength=1.0, slides_per_cell=3, tiles_per_slide=10, dim=16)
    probe = cross_validated_probe(data.embeddings, data.center, data.slide_id, n_folds=5)
    assert (probe.fold >= 0).all()
    for slide in np.unique(probe.slide):
        assert np.unique(probe.fold[probe.slide == slide]).size == 1
    np.testing.assert_allclose(probe.scores.sum(axis=1), 1.0)


def test_auroc_and_balanced_accuracy_match_scikit_learn() -> None:
    data = planted_embeddings(
        n_centers=3, center_strength=0.6, slides_per_cell=3, tiles_per_slide=10, dim=16
    )
    probe = cross_validated_probe(data.embeddings, data.center, data.slide_id, n_folds=3)
    expected = roc_auc_score(probe.target, probe.scores, multi_class="ovr", average="macro")
    assert probe.auroc()[0] == pytest.approx(expected, abs=1e-12)
    ba = balanced_accuracy_score(probe.target, probe.scores.argmax(axis=1))
    assert probe.balanced_accuracy()[0] == pytest.approx(ba, abs=1e-12)


def test_one_center_is_not_applicable_in_the_audit() -> None:
    data = planted_embeddings(n_centers=1, slides_per_cell=4, tiles_per_slide=5, dim=8)
    with pytest.raises(AuditDataError, match="not applicable"):
        site_probe(data, FAST)
    result = audit_embeddings(data, config=AuditConfig(parts=("site_probe",)))
    assert isinstance(result.site_probe, Skipped)
    assert "at least 2" in result.site_probe.reason


def test_too_few_slides_of_a_center_names_the_minimum() -> None:
    data = planted_embeddings(slides_per_cell=1, tiles_per_slide=5, dim=8)
    with pytest.raises(AuditDataError, match="at least 3 slides"):
        site_probe(data, FAST)


def test_the_audit_reports_the_site_probe_with_its_interval() -> None:
    data = planted_embeddings(center_strength=3.0, slides_per_cell=3, tiles_per_slide=10, dim=16)
    config = AuditConfig(parts=("site_probe",), site_probe=SiteProbeConfig(n_bootstrap=200))
    entry = audit_embeddings(data, config=config).to_dict()["site_probe"]
    assert entry["auroc"] > 0.95 and len(entry["ci"]) == 2
    assert entry["classes"] == ["center0", "center1"]
    assert entry["parameters"]["seed"] == config.seed


def test_biology_probe_and_a_paired_difference() -> None:
    data = planted_embeddings(class_strength=2.0, slides_per_cell=3, tiles_per_slide=10, dim=16)
    assert biology_probe(data, FAST).balanced_accuracy > 0.9
    noise = np.random.default_rng(0).normal(size=data.embeddings.shape).astype(np.float32)
    blurred = LabelledEmbeddings(
        embeddings=noise * 5, label=data.label, center=data.center, slide_id=data.slide_id
    )
    before = cross_validated_probe(data.embeddings, data.label, data.slide_id)
    after = cross_validated_probe(blurred.embeddings, data.label, data.slide_id)
    change, (low, high) = paired_difference(before, after, "balanced_accuracy", n_bootstrap=200)
    assert change < -0.2 and low <= change <= high < 0
    other = cross_validated_probe(data.embeddings[:-10], data.label[:-10], data.slide_id[:-10])
    with pytest.raises(AuditDataError, match="same slides"):
        paired_difference(before, other, "auroc")


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="n_folds"):
        SiteProbeConfig(n_folds=1)
    with pytest.raises(ConfigError, match="confidence"):
        SiteProbeConfig(confidence=1.0)
